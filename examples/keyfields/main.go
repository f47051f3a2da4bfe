// Command keyfields shows the two ways to choose what makes tasks
// duplicates: key fields (only some arguments count) and an explicit key
// (all calls share one lock).
//
//	go run ./examples/keyfields
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"

	"github.com/alicebob/miniredis/v2"
	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
)

// WelcomeArgs deduplicate on user_id only: another locale for the same user
// is a duplicate.
type WelcomeArgs struct {
	task.Meta `deduplication_key_fields:"user_id"`
	// UserID is the user to welcome, and the fingerprint.
	UserID int `msgpack:"user_id"`
	// Locale is the welcome's language, not in the fingerprint.
	Locale string `msgpack:"locale"`
}

// ReportArgs are the arguments of a nightly report.
type ReportArgs struct {
	// Day is the report's day, as YYYY-MM-DD.
	Day string `msgpack:"day"`
}

func main() {
	url := os.Getenv("KIQ_REDIS_URL")
	if url == "" {
		mr, err := miniredis.Run()
		if err != nil {
			log.Fatal(err)
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
	}
	if err := run(context.Background(), url, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url string, out io.Writer) error {
	quiet := slog.New(slog.DiscardHandler)
	b, err := broker.NewListQueue(url, broker.WithKeyPrefix("example-keyfields"), broker.WithLogger(quiet))
	if err != nil {
		return err
	}
	defer b.Shutdown(ctx)
	mw, err := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix("example:keyfields"), dedup.WithLogger(quiet))
	if err != nil {
		return err
	}
	b.WithMiddlewares(mw)

	sendWelcome := task.Define(b, "send_welcome_email", func(context.Context, WelcomeArgs) error { return nil })
	report := task.Define(b, "nightly_report", func(context.Context, ReportArgs) error { return nil },
		task.WithLabels(task.Labels{"deduplication_key": "nightly-report"}))

	show := func(what string, err error) {
		var dup *dedup.DuplicateTaskError
		switch {
		case errors.As(err, &dup):
			fmt.Fprintf(out, "%-32s duplicate of the lock %s\n", what, dup.Key)
		case err != nil:
			fmt.Fprintf(out, "%-32s error: %v\n", what, err)
		default:
			fmt.Fprintf(out, "%-32s queued\n", what)
		}
	}
	_, err = sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	show("welcome user 42, en", err)
	_, err = sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "fr"})
	show("welcome user 42, fr", err)
	_, err = sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 7, Locale: "fr"})
	show("welcome user 7, fr", err)
	_, err = report.Kiq(ctx, ReportArgs{Day: "2026-11-23"})
	show("report for 2026-11-23", err)
	_, err = report.Kiq(ctx, ReportArgs{Day: "2026-11-24"})
	show("report for 2026-11-24", err)
	_, err = report.Kicker().WithLabels(task.Labels{"deduplication": false}).Kiq(ctx, ReportArgs{Day: "2026-11-24"})
	show("report, deduplication off", err)
	return nil
}
