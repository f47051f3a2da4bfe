package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/stretchr/testify/require"
)

func TestThousandTasksRunOnceOnRedis(t *testing.T) {
	b, err := broker.NewListQueue(redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	var mu sync.Mutex
	seen := map[int]int{}
	tk := task.Define(b, "count", func(ctx context.Context, a Args) error {
		mu.Lock()
		seen[a.N]++
		mu.Unlock()
		return nil
	})
	ctx := context.Background()
	for i := range 1000 {
		_, err := tk.Kiq(ctx, Args{N: i})
		require.NoError(t, err)
	}
	w := worker.New(b, worker.Options{Concurrency: 8, Logger: quiet})
	stop := start(t, w)
	require.Eventually(t, func() bool { return w.Stats().Done == 1000 }, 20*time.Second, 10*time.Millisecond)
	require.NoError(t, stop())
	require.Len(t, seen, 1000)
	for n, k := range seen {
		require.Equal(t, 1, k, "task %d", n)
	}
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue}, stats, "nothing left queued, in flight or registered")
}

func TestWorkerSurvivesARedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	b, err := broker.NewListQueue(srv.URL(), broker.WithLogger(quiet))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ran := make(chan int, 100)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- a.N; return nil })
	w := worker.New(b, worker.Options{ErrorBackoff: 100 * time.Millisecond, Logger: quiet})
	start(t, w)
	ctx := context.Background()
	_, err = tk.Kiq(ctx, Args{N: 1})
	require.NoError(t, err)
	require.Equal(t, 1, <-ran)

	srv.Kill(t)
	time.Sleep(300 * time.Millisecond) // the worker meets the outage
	srv.Revive(t)
	require.Eventually(t, func() bool {
		_, err := tk.Kiq(ctx, Args{N: 2})
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	select {
	case n := <-ran:
		require.Equal(t, 2, n)
	case <-time.After(5 * time.Second):
		t.Fatal("the worker did not carry on after Redis came back")
	}
}

func TestUndecodableMessageOnRedisIsDeadLettered(t *testing.T) {
	b, err := broker.NewListQueue(redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ran := make(chan struct{})
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { close(ran); return nil })
	ctx := context.Background()
	pending, msgs := b.KeyPrefix()+":{taskiq}:pending", b.KeyPrefix()+":{taskiq}:msg"
	require.NoError(t, b.Client().HSet(ctx, msgs, "garbage", []byte{0xc1, 0xff}).Err())
	require.NoError(t, b.Client().LPush(ctx, pending, "garbage").Err())
	_, err = tk.Kiq(ctx, Args{})
	require.NoError(t, err)
	start(t, worker.New(b, worker.Options{Logger: quiet}))
	<-ran
	require.Eventually(t, func() bool {
		dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, 10)
		return err == nil && len(dls) == 1 && dls[0].TaskID == "garbage" &&
			string(dls[0].Raw) == "\xc1\xff" && len(dls[0].Reason) > 0
	}, 2*time.Second, 10*time.Millisecond)
}
