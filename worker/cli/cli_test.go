package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker/cli"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	if os.Getenv("KIQ_CLI_TEST_MAIN") != "" {
		mainProcess()
		return
	}
	redistest.Main(m)
}

// mainProcess is the test binary run as a worker program by
// TestASecondSignalKillsTheDrainingWorker: on the embedded Redis, its demo
// kicks one task that never returns, and it says when the task started.
func mainProcess() {
	os.Args = []string{"worker", "--progress", "0", "--shutdown-timeout", "1m", "--log-level", "error"}
	var tk *task.Task[Args]
	cli.Main(cli.App{
		Setup: func(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
			tk = task.Define(b, "stuck", func(context.Context, Args) error {
				fmt.Fprintln(os.Stderr, "task started")
				time.Sleep(time.Hour)
				return nil
			})
			return nil
		},
		Demo: func(ctx context.Context, b *broker.ListQueue) error {
			_, err := tk.Kiq(ctx, Args{})
			return err
		},
	})
}

func TestASecondSignalKillsTheDrainingWorker(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KIQ_CLI_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if sc.Text() == "task started" {
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the worker did not start its task")
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// The first signal starts the drain, which would wait a minute for the
	// stuck task; a later one ends the process at once. Signal until then:
	// one sent before the first was handled is swallowed.
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-exited:
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit)
			ws := exit.Sys().(syscall.WaitStatus)
			require.True(t, ws.Signaled(), "killed by the signal, not exited: %v", err)
			require.Equal(t, syscall.SIGINT, ws.Signal())
			return
		case <-tick.C:
			_ = cmd.Process.Signal(os.Interrupt)
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			t.Fatal("a second SIGINT did not end the draining worker")
		}
	}
}

type Args struct {
	N int `msgpack:"n"`
}

// demoApp is a worker program whose demo kicks ten tasks.
func demoApp(ran chan<- int) cli.App {
	var tk *task.Task[Args]
	return cli.App{
		Setup: func(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
			tk = task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- a.N; return nil })
			return nil
		},
		Demo: func(ctx context.Context, b *broker.ListQueue) error {
			for i := range 10 {
				if _, err := tk.Kiq(ctx, Args{N: i}); err != nil {
					return err
				}
			}
			<-ctx.Done()
			return nil
		},
	}
}

func TestRunOnTheEmbeddedRedisWithDemo(t *testing.T) {
	ran := make(chan int, 10)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testlog.Buffer
	code := make(chan int, 1)
	go func() { code <- demoApp(ran).Run(ctx, []string{"--progress", "20ms"}, &stdout, &stderr) }()
	for range 10 {
		select {
		case <-ran:
		case <-time.After(5 * time.Second):
			t.Fatalf("the demo's tasks did not run; stderr:\n%s", stderr.String())
		}
	}
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "done=10 ") }, 2*time.Second, 10*time.Millisecond,
		"the progress line counts the tasks")
	cancel()
	require.Equal(t, 0, <-code)
	require.Contains(t, stderr.String(), "embedded in-process Redis")
}

func TestRunOnARealRedis(t *testing.T) {
	srv := redistest.Shared(t)
	ran := make(chan int, 10)
	app := demoApp(ran)
	prefix := redistest.Prefix(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testlog.Buffer
	code := make(chan int, 1)
	go func() {
		code <- app.Run(ctx, []string{"--redis-url", srv.URL(), "--key-prefix", prefix, "--concurrency", "2", "--log-format", "json"}, &bytes.Buffer{}, &stderr)
	}()
	// The demo stays off on a real Redis: kick from outside.
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	tk := task.Define(b, "t", func(context.Context, Args) error { return nil })
	_, err = tk.Kiq(ctx, Args{N: 42})
	require.NoError(t, err)
	select {
	case n := <-ran:
		require.Equal(t, 42, n)
	case <-time.After(5 * time.Second):
		t.Fatalf("the task did not run; stderr:\n%s", stderr.String())
	}
	cancel()
	require.Equal(t, 0, <-code)
	require.Contains(t, stderr.String(), `"msg":"kiq: worker started"`)
}

func TestLocksCommands(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t) + ":locks"
	client := srv.Client(t)
	ctx := context.Background()
	require.NoError(t, client.Set(ctx, prefix+":abc", "task-1", time.Minute).Err())
	app := cli.App{}
	url := []string{"--redis-url", srv.URL(), "--dedup-prefix", prefix}

	var out, errOut bytes.Buffer
	require.Equal(t, 0, app.Run(ctx, append([]string{"locks", "list"}, url...), &out, &errOut), errOut.String())
	require.Regexp(t, `KEY\s+HOLDER\s+TTL\n`+prefix+`:abc\s+task-1\s+1m0s\n`, out.String())

	out.Reset()
	require.Equal(t, 0, app.Run(ctx, append(append([]string{"locks", "list"}, url...), "--json"), &out, &errOut))
	var locks []dedup.LockInfo
	require.NoError(t, json.Unmarshal(out.Bytes(), &locks))
	require.Len(t, locks, 1)
	require.Equal(t, "task-1", locks[0].HolderTaskID)

	out.Reset()
	require.Equal(t, 0, app.Run(ctx, append(append([]string{"locks", "release"}, url...), prefix+":abc"), &out, &errOut))
	require.Equal(t, "released  "+prefix+":abc\n", out.String())
	require.Zero(t, client.Exists(ctx, prefix+":abc").Val())

	errOut.Reset()
	require.Equal(t, 1, app.Run(ctx, append(append([]string{"locks", "release"}, url...), prefix+":abc"), &out, &errOut))
	require.Contains(t, errOut.String(), "no lock at")
}

func TestUsageErrors(t *testing.T) {
	app := cli.App{}
	ctx := context.Background()
	for _, args := range [][]string{
		{"frobnicate"},
		{"--concurrency", "many"},
		{"--log-level", "loud"},
		{"--log-format", "xml"},
		{"--queues", ","},
		// The command must come first: this is no worker run.
		{"--redis-url", "redis://127.0.0.1:1", "locks", "list"},
		{"--progress", "0", "stray"},
	} {
		var errOut bytes.Buffer
		require.Equal(t, 2, app.Run(ctx, args, &bytes.Buffer{}, &errOut), "%v", args)
		require.NotEmpty(t, errOut.String(), "%v", args)
	}
	// Operator commands with a Redis URL, wrong all the same: each says its
	// own usage error, caught before any connection (nothing listens there).
	for _, args := range [][]string{
		{"locks"},
		{"locks", "drop"},
		{"locks", "release"},
		{"queues", "--queues", " , "},
	} {
		var errOut bytes.Buffer
		args = append(args[:1:1], append([]string{"--redis-url", "redis://127.0.0.1:1"}, args[1:]...)...)
		require.Equal(t, 2, app.Run(ctx, args, &bytes.Buffer{}, &errOut), "%v", args)
		require.NotEmpty(t, errOut.String(), "%v", args)
		require.NotContains(t, errOut.String(), "needs --redis-url", "%v", args)
	}
	var errOut bytes.Buffer
	require.Equal(t, 1, app.Run(ctx, []string{"--redis-url", "http://nope"}, &bytes.Buffer{}, &errOut))
	require.Contains(t, errOut.String(), "bad Redis URL")
}

func TestSetupGetsTheSettings(t *testing.T) {
	var got cli.Settings
	app := cli.App{Setup: func(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
		got = s
		return nil
	}}
	var errOut bytes.Buffer
	code := app.Run(context.Background(), []string{"queues", "--redis-url", redistest.Shared(t).URL(), "--dedup-prefix", "my:locks",
		"--key-prefix", "mine", "--queues", "a, b"}, &bytes.Buffer{}, &errOut)
	require.Equal(t, 0, code, errOut.String())
	require.Equal(t, cli.Settings{KeyPrefix: "mine", DedupPrefix: "my:locks", Queues: []string{"a", "b"}}, got)

	// The worker without --redis-url: embedded (an ended context stops it
	// at once).
	t.Setenv("KIQ_REDIS_URL", "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.Equal(t, 0, app.Run(ctx, []string{"--progress", "0"}, &bytes.Buffer{}, &errOut), errOut.String())
	require.Equal(t, cli.Settings{KeyPrefix: "kiq", DedupPrefix: "taskiq:deduplication", Queues: []string{"taskiq"}, Embedded: true}, got)
}

// An operator command inspects the Redis of the workers: without
// --redis-url it is a usage error, not a look at an empty embedded Redis
// with the demo producer started for it.
func TestOperatorCommandsNeedARedisURL(t *testing.T) {
	t.Setenv("KIQ_REDIS_URL", "")
	var setups, demos atomic.Int32
	app := cli.App{
		Setup: func(context.Context, *broker.ListQueue, cli.Settings) error { setups.Add(1); return nil },
		Demo:  func(ctx context.Context, b *broker.ListQueue) error { demos.Add(1); return nil },
	}
	for _, args := range [][]string{
		{"queues"},
		{"dead", "list"},
		{"dead", "show", "x"},
		{"dead", "requeue", "--all"},
		{"dead", "purge", "--json"},
		{"tasks", "show", "x"},
		{"locks", "list"},
		{"locks", "release", "taskiq:deduplication:k"},
	} {
		var out, errOut bytes.Buffer
		require.Equal(t, 2, app.Run(context.Background(), args, &out, &errOut), "%v: %s", args, errOut.String())
		require.Contains(t, errOut.String(), "needs --redis-url", "%v", args)
		require.Empty(t, out.String(), "%v", args)
	}
	require.Zero(t, setups.Load(), "no broker was built")
	require.Zero(t, demos.Load(), "no demo producer was started")
}

// -h prints the usage with the commands and the flags, and succeeds;
// a bad flag is still a usage error.
func TestHelp(t *testing.T) {
	app := cli.App{Name: "tw"}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"queues", "-h"}, {"dead", "-h"}, {"dead", "show", "--help"}} {
		var out, errOut bytes.Buffer
		require.Equal(t, 0, app.Run(context.Background(), args, &out, &errOut), "%v: %s", args, errOut.String())
		for _, want := range []string{"Usage: tw", "queues ", "dead requeue ID|--all", "tasks show ID", "locks release KEY",
			"-redis-url", "-shutdown-timeout"} {
			require.Contains(t, out.String(), want, "%v", args)
		}
		require.Empty(t, errOut.String(), "%v", args)
	}
	var out, errOut bytes.Buffer
	require.Equal(t, 2, app.Run(context.Background(), []string{"--nope"}, &out, &errOut))
	require.Contains(t, errOut.String(), "flag provided but not defined: -nope")
	require.Contains(t, errOut.String(), "Usage: tw")
	require.Empty(t, out.String())
}

// A negative number in a numeric flag is a usage error; 0 means the
// default, and the worker logs the values it uses.
func TestNegativeNumericFlags(t *testing.T) {
	t.Setenv("KIQ_REDIS_URL", "")
	app := cli.App{}
	// An ended context: were a flag accepted, the worker would stop at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, args := range [][]string{
		{"--concurrency", "-3"},
		{"--prefetch", "-1"},
		{"--shutdown-timeout", "-1s"},
		{"--result-ttl", "-1h"},
		{"--progress", "-1s"},
	} {
		var errOut bytes.Buffer
		require.Equal(t, 2, app.Run(ctx, args, &bytes.Buffer{}, &errOut), "%v: %s", args, errOut.String())
		require.Contains(t, errOut.String(), "must not be negative", "%v", args)
	}
	var errOut bytes.Buffer
	require.Equal(t, 0, app.Run(ctx, []string{"--concurrency", "0", "--progress", "0"}, &bytes.Buffer{}, &errOut), errOut.String())
	require.Contains(t, errOut.String(), "concurrency=16 prefetch=32")
	errOut.Reset()
	require.Equal(t, 0, app.Run(ctx, []string{"--concurrency", "4", "--prefetch", "2", "--progress", "0"}, &bytes.Buffer{}, &errOut), errOut.String())
	require.Contains(t, errOut.String(), "concurrency=4 prefetch=4")
}
