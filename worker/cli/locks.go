package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
)

// locksCommand runs "locks list" and "locks release KEY".
func locksCommand(ctx context.Context, b *broker.ListQueue, f *flags, sub string, args []string, out io.Writer) error {
	mw, err := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix(f.dedupPrefix))
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		if len(args) != 0 {
			return usageError{errors.New("list takes no arguments")}
		}
		locks, err := mw.Locks(ctx, 10000)
		if err != nil {
			return err
		}
		if f.jsonOut {
			if locks == nil {
				locks = []dedup.LockInfo{}
			}
			return json.NewEncoder(out).Encode(locks)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tHOLDER\tTTL")
		for _, l := range locks {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Key, l.HolderTaskID, l.TTL.Round(time.Second))
		}
		return tw.Flush()
	case "release":
		if len(args) != 1 {
			return usageError{errors.New("release takes one lock key")}
		}
		released, err := mw.ForceRelease(ctx, args[0])
		if err != nil {
			return err
		}
		if !released {
			return fmt.Errorf("no lock at %s", args[0])
		}
		if f.jsonOut {
			return json.NewEncoder(out).Encode(map[string]any{"released": args[0]})
		}
		fmt.Fprintf(out, "released %s\n", args[0])
		return nil
	}
	return usageError{fmt.Errorf("unknown locks subcommand %q (want list or release)", sub)}
}
