package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/worker/cli"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// The no-flag quick start: tasks kicked, run and acknowledged within
// seconds, failures dead-lettered, with a progress line.
func TestQuickStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testlog.Buffer
	code := make(chan int, 1)
	app := cli.App{Name: "taskworker", Setup: setup, Demo: demo}
	go func() { code <- app.Run(ctx, []string{"--progress", "100ms"}, &bytes.Buffer{}, &stderr) }()
	done := regexp.MustCompile(`done=([1-9][0-9]{2,}) failed=[1-9]`)
	require.Eventually(t, func() bool { return done.MatchString(stderr.String()) }, 10*time.Second, 50*time.Millisecond,
		"hundreds of tasks done and some failed within seconds")
	cancel()
	require.Equal(t, 0, <-code)
}

// The worker's deduplication middleware takes its locks under
// --dedup-prefix, where the locks commands look.
func TestTheWorkersLocksFollowDedupPrefix(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	locks := prefix + ":locks"
	ctx := context.Background()
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix))
	require.NoError(t, err)
	defer b.Shutdown(ctx)
	require.NoError(t, setup(ctx, b, cli.Settings{KeyPrefix: prefix, DedupPrefix: locks, Queues: []string{"taskiq"}}))
	_, err = sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 7})
	require.NoError(t, err)
	keys, err := srv.Client(t).Keys(ctx, locks+":*").Result()
	require.NoError(t, err)
	require.Len(t, keys, 1, "the lock is under --dedup-prefix")

	var out, errOut bytes.Buffer
	app := cli.App{Name: "taskworker", Setup: setup}
	require.Equal(t, 0, app.Run(ctx, []string{"locks", "list", "--redis-url", srv.URL(), "--key-prefix", prefix, "--dedup-prefix", locks},
		&out, &errOut), errOut.String())
	require.Contains(t, out.String(), keys[0])
}
