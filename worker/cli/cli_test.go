package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
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

func TestMain(m *testing.M) { redistest.Main(m) }

type Args struct {
	N int `msgpack:"n"`
}

// demoApp is a worker program whose demo kicks ten tasks.
func demoApp(ran chan<- int) cli.App {
	var tk *task.Task[Args]
	return cli.App{
		Setup: func(ctx context.Context, b *broker.ListQueue) error {
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
		{"locks"},
		{"locks", "drop"},
		{"locks", "release"},
	} {
		var errOut bytes.Buffer
		require.Equal(t, 2, app.Run(ctx, args, &bytes.Buffer{}, &errOut), "%v", args)
		require.NotEmpty(t, errOut.String(), "%v", args)
	}
	var errOut bytes.Buffer
	require.Equal(t, 1, app.Run(ctx, []string{"--redis-url", "http://nope"}, &bytes.Buffer{}, &errOut))
	require.Contains(t, errOut.String(), "bad Redis URL")
}
