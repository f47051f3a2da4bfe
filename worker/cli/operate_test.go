package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/internal/testlog"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker/cli"
	"github.com/stretchr/testify/require"
)

// opsFixture fills a private prefix with a pending task, a scheduled one, a
// dead letter and a task on a second queue, and returns a runner of
// operator commands against it.
func opsFixture(t *testing.T) (run func(args ...string) (int, string, string), dead *broker.Message, pending *broker.Message) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix))
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	ctx := context.Background()
	args, err := b.Formatter().EncodeArgs(map[string]any{"user_id": 42})
	require.NoError(t, err)
	kick := func(name string, labels broker.Labels) *broker.Message {
		m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: name, Labels: labels, Args: args}
		require.NoError(t, b.Kick(ctx, m))
		return m
	}
	dead = kick("doomed", nil)
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, c.DeadLetter(ctx, ds[0], "exploded\nbadly"))
	require.NoError(t, c.Close(ctx))
	pending = kick("waiting", broker.Labels{"team": "growth"})
	kick("later", broker.Labels{broker.LabelDelay: 3600})
	kick("mail", broker.Labels{broker.LabelQueue: "emails"})

	app := cli.App{}
	run = func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		full := append(args[:len(args):len(args)], "--redis-url", srv.URL(), "--key-prefix", prefix)
		// Flags go before positional arguments: move a trailing id after them.
		if n := len(args); n > 0 && !strings.HasPrefix(args[n-1], "-") && (args[0] == "dead" || args[0] == "tasks") && n >= 3 {
			full = append(append(args[:n-1:n-1], "--redis-url", srv.URL(), "--key-prefix", prefix), args[n-1])
		}
		code := app.Run(context.Background(), full, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	return run, dead, pending
}

func TestQueuesCommand(t *testing.T) {
	run, _, _ := opsFixture(t)
	code, out, errOut := run("queues")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `QUEUE\s+PENDING\s+IN FLIGHT\s+SCHEDULED\s+DEAD\s+CONSUMERS\n`+
		`emails\s+1\s+0\s+0\s+0\s+0\n`+
		`taskiq\s+1\s+0\s+1\s+1\s+0\n`, out)

	code, out, _ = run("queues", "--json")
	require.Equal(t, 0, code)
	var stats []broker.QueueStats
	require.NoError(t, json.Unmarshal([]byte(out), &stats))
	require.Len(t, stats, 2)
}

func TestDeadCommands(t *testing.T) {
	run, dead, _ := opsFixture(t)
	code, out, errOut := run("dead", "list")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `TASK ID\s+TASK\s+ATTEMPT\s+AT\s+REASON\n`+dead.TaskID+`\s+doomed\s+0\s+\S+\s+exploded badly\n`, out)

	code, out, _ = run("dead", "show", dead.TaskID)
	require.Equal(t, 0, code)
	require.Contains(t, out, `{"user_id":42}`)
	require.Contains(t, out, "exploded\nbadly")

	code, out, _ = run("dead", "show", "--json", dead.TaskID)
	require.Equal(t, 0, code)
	var shown map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &shown))
	require.Equal(t, "doomed", shown["task_name"])

	code, _, errOut = run("dead", "show", "nope")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "not found")

	code, out, _ = run("dead", "requeue", dead.TaskID)
	require.Equal(t, 0, code)
	require.Regexp(t, `requeued\s+1`, out)
	code, out, _ = run("tasks", "show", dead.TaskID)
	require.Equal(t, 0, code)
	require.Regexp(t, `STATE\s+pending`, out)

	code, out, _ = run("dead", "purge")
	require.Equal(t, 0, code)
	require.Regexp(t, `purged\s+0`, out)
	code, _, errOut = run("dead", "requeue")
	require.Equal(t, 2, code, errOut)
}

func TestTasksShow(t *testing.T) {
	run, dead, pending := opsFixture(t)
	code, out, errOut := run("tasks", "show", pending.TaskID)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `STATE\s+pending\n`, out)
	require.Regexp(t, `LABELS\s+\{"team":"growth"\}`, out)

	code, out, _ = run("tasks", "show", "--json", dead.TaskID)
	require.Equal(t, 0, code)
	var v map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	require.Equal(t, "dead", v["state"])
	require.Equal(t, "exploded\nbadly", v["reason"])

	code, _, errOut = run("tasks", "show", "nope")
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "not found")
	_ = time.Second
}

// The worker the command line runs stores results in Redis by default, so
// tasks show finds a finished task.
func TestTasksShowADoneTask(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	conn := []string{"--redis-url", srv.URL(), "--key-prefix", prefix}
	app := cli.App{Setup: func(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
		task.DefineResult(b, "double", func(ctx context.Context, a map[string]int) (int, error) { return 2 * a["n"], nil })
		return nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testlog.Buffer
	code := make(chan int, 1)
	go func() { code <- app.Run(ctx, append([]string{"--progress", "0"}, conn...), &bytes.Buffer{}, &stderr) }()
	defer func() {
		cancel()
		require.Equal(t, 0, <-code, stderr.String())
	}()

	// A producer of its own, without a result backend.
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	h, err := task.Define(b, "double", func(context.Context, map[string]int) error { return nil }).Kiq(ctx, map[string]int{"n": 21})
	require.NoError(t, err)

	show := func(extra ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		args := append(append(append([]string{"tasks", "show"}, conn...), extra...), h.TaskID())
		return app.Run(context.Background(), args, &out, &errOut), out.String(), errOut.String()
	}
	done := regexp.MustCompile(`STATE\s+done\n`)
	var out string
	require.Eventually(t, func() bool {
		var c int
		c, out, _ = show()
		return c == 0 && done.MatchString(out)
	}, 5*time.Second, 10*time.Millisecond, "the task's result is stored")
	require.Regexp(t, `TASK ID\s+`+h.TaskID()+`\n`, out)
	require.Regexp(t, `TASK\s+double\n`, out)
	require.Regexp(t, `RESULT\s+42\n`, out)

	c, out, _ := show("--json")
	require.Equal(t, 0, c)
	var v struct {
		State  string `json:"state"`
		Result struct {
			Value    any    `json:"value"`
			Duration string `json:"duration"`
		} `json:"result"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &v), out)
	require.Equal(t, "done", v.State)
	require.EqualValues(t, 42, v.Result.Value)
	require.NotEmpty(t, v.Result.Duration)
}

// deadFixture dead-letters n tasks under a private prefix and returns the
// broker, their messages (oldest first) and a runner of operator commands
// whose flags (Redis URL, key prefix) come right after the subcommand.
func deadFixture(t *testing.T, n int) (*broker.ListQueue, []*broker.Message, func(cmd []string, rest ...string) (int, string, string)) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix))
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	ctx := context.Background()
	args, err := b.Formatter().EncodeArgs(map[string]any{"user_id": 7})
	require.NoError(t, err)
	var msgs []*broker.Message
	for i := range n {
		m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "doomed", Args: args, Attempt: i}
		require.NoError(t, b.Kick(ctx, m))
		msgs = append(msgs, m)
	}
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	for dead := 0; dead < n; {
		ds, err := c.Fetch(ctx, n-dead)
		require.NoError(t, err)
		for _, d := range ds {
			require.NoError(t, c.DeadLetter(ctx, d, "failed: "+d.ID))
		}
		dead += len(ds)
	}
	require.NoError(t, c.Close(ctx))
	app := cli.App{}
	run := func(cmd []string, rest ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		full := append(append(cmd[:len(cmd):len(cmd)], "--redis-url", srv.URL(), "--key-prefix", prefix), rest...)
		code := app.Run(context.Background(), full, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	return b, msgs, run
}

func TestDeadListJSON(t *testing.T) {
	_, msgs, run := deadFixture(t, 2)
	code, out, errOut := run([]string{"dead", "list"}, "--json")
	require.Equal(t, 0, code, errOut)
	var dls []struct {
		TaskID   string         `json:"task_id"`
		TaskName string         `json:"task_name"`
		Queue    string         `json:"queue"`
		Attempt  int            `json:"attempt"`
		At       time.Time      `json:"at"`
		Reason   string         `json:"reason"`
		Args     map[string]any `json:"args"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &dls), out)
	require.Len(t, dls, 2)
	for i, dl := range dls { // newest first
		m := msgs[len(msgs)-1-i]
		require.Equal(t, m.TaskID, dl.TaskID)
		require.Equal(t, "doomed", dl.TaskName)
		require.Equal(t, broker.DefaultQueue, dl.Queue)
		require.Equal(t, m.Attempt, dl.Attempt)
		require.Equal(t, "failed: "+m.TaskID, dl.Reason)
		require.EqualValues(t, 7, dl.Args["user_id"])
		require.WithinDuration(t, time.Now(), dl.At, time.Minute)
	}

	// An empty list is an empty JSON array, not null.
	_, _, run = deadFixture(t, 0)
	code, out, _ = run([]string{"dead", "list"}, "--json")
	require.Equal(t, 0, code)
	require.JSONEq(t, "[]", out)
}

func TestDeadRequeueJSONAndAll(t *testing.T) {
	b, msgs, run := deadFixture(t, 3)
	ctx := context.Background()
	code, out, errOut := run([]string{"dead", "requeue"}, "--json", msgs[0].TaskID)
	require.Equal(t, 0, code, errOut)
	require.JSONEq(t, `{"requeued": 1}`, out)

	code, out, errOut = run([]string{"dead", "requeue"}, "--", "--all")
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `^requeued\s+2\n$`, out)
	s, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.Dead)
	require.Equal(t, int64(3), s.Pending, "all three are back on the queue")
	for _, m := range msgs {
		info, err := b.Task(ctx, broker.DefaultQueue, m.TaskID)
		require.NoError(t, err)
		require.Equal(t, "pending", info.State)
		require.Zero(t, info.Message.Attempt, "attempts reset")
	}

	code, out, errOut = run([]string{"dead", "requeue"}, "--json", "--", "--all")
	require.Equal(t, 0, code, errOut)
	require.JSONEq(t, `{"requeued": 0}`, out, "nothing left to requeue")
}

// The documented form `dead requeue --all` (flags before it).
func TestDeadRequeueAllAsDocumented(t *testing.T) {
	b, _, run := deadFixture(t, 2)
	code, out, errOut := run([]string{"dead", "requeue", "--all"})
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `requeued\s+2`, out)
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.Dead)
}

func TestDeadPurgeCountsAndJSON(t *testing.T) {
	b, _, run := deadFixture(t, 3)
	code, out, errOut := run([]string{"dead", "purge"})
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `^purged\s+3\n$`, out)
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.Dead)

	_, _, run = deadFixture(t, 2)
	code, out, errOut = run([]string{"dead", "purge"}, "--json")
	require.Equal(t, 0, code, errOut)
	require.JSONEq(t, `{"purged": 2}`, out)
}

func TestLocksReleaseJSON(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t) + ":locks"
	client := srv.Client(t)
	ctx := context.Background()
	require.NoError(t, client.Set(ctx, prefix+":k", "task-9", time.Minute).Err())
	var out, errOut bytes.Buffer
	code := cli.App{}.Run(ctx, []string{"locks", "release", "--redis-url", srv.URL(), "--dedup-prefix", prefix, "--json", prefix + ":k"}, &out, &errOut)
	require.Equal(t, 0, code, errOut.String())
	require.JSONEq(t, `{"released": "`+prefix+`:k"}`, out.String())
	require.Zero(t, client.Exists(ctx, prefix+":k").Val())
}

// Every operator command fails with exit status 1 and a message on stderr,
// nothing on stdout, when Redis cannot be reached.
func TestCommandsFailWhenRedisIsUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now
	for _, args := range [][]string{
		{"queues"},
		{"dead", "list"},
		{"dead", "show", "x"},
		{"dead", "requeue", "x"},
		{"dead", "purge"},
		{"tasks", "show", "x"},
		{"locks", "list"},
		{"locks", "release", "taskiq:deduplication:k"},
	} {
		full := append([]string{}, args...)
		var pos []string
		if len(full) == 3 {
			full, pos = full[:2], full[2:]
		}
		full = append(append(full, "--redis-url", "redis://"+addr, "--json"), pos...)
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		code := cli.App{}.Run(ctx, full, &out, &errOut)
		cancel()
		require.Equal(t, 1, code, "%v: %s", args, errOut.String())
		require.Contains(t, errOut.String(), "connection refused", "%v", args)
		require.Empty(t, out.String(), "%v", args)
	}
}

// Flags go before arguments: one after an argument is a usage error that
// says so, not "want a task id" (and not a missing --redis-url).
func TestFlagsAfterArguments(t *testing.T) {
	app := cli.App{}
	url := []string{"--redis-url", "redis://127.0.0.1:1"} // never reached
	for _, args := range [][]string{
		append(append([]string{"tasks", "show"}, url...), "abc", "--json"),
		append(append([]string{"dead", "show"}, url...), "abc", "--queue", "emails"),
		append(append([]string{"dead", "requeue"}, url...), "abc", "--all"),
		append(append([]string{"locks", "release"}, url...), "k", "-json"),
		{"tasks", "show", "abc", "--redis-url", "redis://127.0.0.1:1"},
		append(append([]string{"queues"}, url...), "x", "--json"),
	} {
		var out, errOut bytes.Buffer
		code := app.Run(context.Background(), args, &out, &errOut)
		require.Equal(t, 2, code, "%v: %s", args, errOut.String())
		require.Contains(t, errOut.String(), "flags go before arguments", "%v", args)
		require.Empty(t, out.String(), "%v", args)
	}
}
