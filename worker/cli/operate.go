package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
)

// commands maps each command to its subcommands (none: it has none).
var commands = map[string][]string{
	"run":    nil,
	"queues": nil,
	"dead":   {"list", "show", "requeue", "purge"},
	"tasks":  {"show"},
	"locks":  {"list", "release"},
}

func commandNames() string {
	return "run, queues, dead, tasks or locks"
}

// usageError is an error in how a command was called (exit status 2).
type usageError struct{ error }

func wantArgs(args []string, n int, what string) error {
	if len(args) != n {
		return usageError{fmt.Errorf("want %s", what)}
	}
	return nil
}

// operate runs an operator command.
func operate(ctx context.Context, b *broker.ListQueue, f *flags, cmd, sub string, args []string, out io.Writer) error {
	p := printer{out: out, json: f.jsonOut}
	switch cmd + " " + sub {
	case "queues ":
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		queues, err := b.Queues(ctx)
		if err != nil {
			return err
		}
		stats := make([]broker.QueueStats, 0, len(queues))
		rows := [][]any{{"QUEUE", "PENDING", "IN FLIGHT", "SCHEDULED", "DEAD", "CONSUMERS"}}
		for _, q := range queues {
			s, err := b.Stats(ctx, q)
			if err != nil {
				return err
			}
			stats = append(stats, s)
			rows = append(rows, []any{s.Queue, s.Pending, s.InFlight, s.Scheduled, s.Dead, s.Consumers})
		}
		return p.print(stats, rows)
	case "dead list":
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		dls, err := b.DeadLetters(ctx, f.queue, 0, 10000)
		if err != nil {
			return err
		}
		rows := [][]any{{"TASK ID", "TASK", "ATTEMPT", "AT", "REASON"}}
		for _, dl := range dls {
			rows = append(rows, []any{dl.TaskID, dl.TaskName, dl.Attempt, dl.At.UTC().Format(time.RFC3339), oneLine(dl.Reason)})
		}
		return p.print(deadViews(b, dls), rows)
	case "dead show":
		if err := wantArgs(args, 1, "a task id"); err != nil {
			return err
		}
		dl, err := b.DeadLetter(ctx, f.queue, args[0])
		if err != nil {
			return err
		}
		v := deadViews(b, []broker.DeadLetter{dl})[0]
		return p.print(v, [][]any{{"TASK ID", v.TaskID}, {"TASK", v.TaskName}, {"QUEUE", v.Queue}, {"ATTEMPT", v.Attempt},
			{"AT", v.At.UTC().Format(time.RFC3339)}, {"REASON", v.Reason}, {"LABELS", jsonText(v.Labels)}, {"ARGS", jsonText(v.Args)}})
	case "dead requeue":
		id := ""
		switch {
		case f.all && len(args) == 0, !f.all && len(args) == 1 && args[0] == "--all": // --all, or after "--"
		case !f.all && len(args) == 1:
			id = args[0]
		default:
			return usageError{errors.New("want a task id, or --all")}
		}
		n, err := b.RequeueDead(ctx, f.queue, id)
		if err != nil {
			return err
		}
		return p.print(map[string]int{"requeued": n}, [][]any{{"requeued", n}})
	case "dead purge":
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		n, err := b.PurgeDead(ctx, f.queue)
		if err != nil {
			return err
		}
		return p.print(map[string]int64{"purged": n}, [][]any{{"purged", n}})
	case "tasks show":
		if err := wantArgs(args, 1, "a task id"); err != nil {
			return err
		}
		info, err := b.Task(ctx, f.queue, args[0])
		if err != nil {
			return err
		}
		v := taskView{TaskID: info.TaskID, Queue: info.Queue, State: info.State, Reason: info.Reason}
		rows := [][]any{{"TASK ID", v.TaskID}, {"QUEUE", v.Queue}, {"STATE", v.State}}
		if info.Message != nil {
			v.TaskName, v.Attempt, v.Labels, v.Args = info.Message.TaskName, info.Message.Attempt, info.Message.Labels, decodeArgs(b, info.Message.Args)
			rows = append(rows, []any{"TASK", v.TaskName}, []any{"ATTEMPT", v.Attempt}, []any{"LABELS", jsonText(v.Labels)}, []any{"ARGS", jsonText(v.Args)})
		}
		if v.Reason != "" {
			rows = append(rows, []any{"REASON", v.Reason})
		}
		if r := info.Result; r != nil {
			v.Result = &resultView{Error: r.Error, ErrorKind: r.ErrorKind, Value: decodeArgs(b, r.Value), FinishedAt: r.FinishedAt, Duration: r.Duration.String()}
			rows = append(rows, []any{"TASK", r.TaskName}, []any{"FINISHED", r.FinishedAt.UTC().Format(time.RFC3339)}, []any{"DURATION", v.Result.Duration})
			if r.Error != "" {
				rows = append(rows, []any{"ERROR", r.ErrorKind + ": " + r.Error})
			} else {
				rows = append(rows, []any{"RESULT", jsonText(v.Result.Value)})
			}
		}
		return p.print(v, rows)
	case "locks list":
		if err := wantArgs(args, 0, "no arguments"); err != nil {
			return err
		}
		locks, err := lockAdmin(b, f).Locks(ctx, 10000)
		if err != nil {
			return err
		}
		if locks == nil {
			locks = []dedup.LockInfo{}
		}
		rows := [][]any{{"KEY", "HOLDER", "TTL"}}
		for _, l := range locks {
			rows = append(rows, []any{l.Key, l.HolderTaskID, l.TTL.Round(time.Second)})
		}
		return p.print(locks, rows)
	case "locks release":
		if err := wantArgs(args, 1, "one lock key"); err != nil {
			return err
		}
		released, err := lockAdmin(b, f).ForceRelease(ctx, args[0])
		if err != nil {
			return err
		}
		if !released {
			return fmt.Errorf("no lock at %s", args[0])
		}
		return p.print(map[string]string{"released": args[0]}, [][]any{{"released", args[0]}})
	}
	return usageError{fmt.Errorf("unknown command %s %s", cmd, sub)}
}

// lockAdmin returns a deduplication middleware used only to inspect locks.
func lockAdmin(b *broker.ListQueue, f *flags) *dedup.Middleware {
	mw, _ := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix(f.dedupPrefix)) // cannot fail with a client
	return mw
}

type deadView struct {
	TaskID   string        `json:"task_id"`
	TaskName string        `json:"task_name"`
	Queue    string        `json:"queue"`
	Attempt  int           `json:"attempt"`
	At       time.Time     `json:"at"`
	Reason   string        `json:"reason"`
	Labels   broker.Labels `json:"labels,omitempty"`
	Args     any           `json:"args,omitempty"`
	Raw      []byte        `json:"raw,omitempty"`
}

func deadViews(b *broker.ListQueue, dls []broker.DeadLetter) []deadView {
	out := make([]deadView, 0, len(dls))
	for _, dl := range dls {
		v := deadView{TaskID: dl.TaskID, TaskName: dl.TaskName, Queue: dl.Queue, Attempt: dl.Attempt, At: dl.At, Reason: dl.Reason}
		if m, err := b.Formatter().DecodeMessage(dl.Raw); err == nil {
			v.Labels, v.Args = m.Labels, decodeArgs(b, m.Args)
		} else {
			v.Raw = dl.Raw
		}
		out = append(out, v)
	}
	return out
}

type taskView struct {
	TaskID   string        `json:"task_id"`
	Queue    string        `json:"queue"`
	State    string        `json:"state"`
	TaskName string        `json:"task_name,omitempty"`
	Attempt  int           `json:"attempt"`
	Labels   broker.Labels `json:"labels,omitempty"`
	Args     any           `json:"args,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	Result   *resultView   `json:"result,omitempty"`
}

type resultView struct {
	Value      any       `json:"value,omitempty"`
	Error      string    `json:"error,omitempty"`
	ErrorKind  string    `json:"error_kind,omitempty"`
	FinishedAt time.Time `json:"finished_at"`
	Duration   string    `json:"duration"`
}

// decodeArgs decodes encoded arguments or a result for display.
func decodeArgs(b *broker.ListQueue, raw []byte) any {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := b.Formatter().DecodeArgs(raw, &v); err != nil {
		return fmt.Sprintf("undecodable: %v", err)
	}
	return v
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// printer prints either v as JSON or rows as an aligned table.
type printer struct {
	out  io.Writer
	json bool
}

func (p printer) print(v any, rows [][]any) error {
	if p.json {
		enc := json.NewEncoder(p.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(p.out, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		for i, c := range r {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, c)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
