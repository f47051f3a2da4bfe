package dedup_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// On a Redis Cluster of three masters, Kiq runs end to end: the queue's
// scripts find all their keys in the queue's slot; the locks, which carry
// no hash tag (their keys are Python's), spread over the masters and are
// taken on the grace path; a duplicate is rejected; Locks lists the locks
// of every master; the worker runs each task once and releases its lock.
func TestOnARedisCluster(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.Addr())
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = cc.Close() })
	b, err := broker.NewListQueue("", broker.WithClient(cc))
	require.NoError(t, err)
	mw, err := dedup.New("", dedup.WithClient(cc))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, mw.Shutdown(context.Background())) })
	b.WithMiddlewares(mw)
	require.False(t, b.LocksAtomically(cc), "locks on a cluster: the grace path")

	var mu sync.Mutex
	ran := map[int]int{}
	tk := task.Define(b, "send_welcome_email", func(_ context.Context, a WelcomeArgs) error {
		mu.Lock()
		ran[a.UserID]++
		mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const tasks = 30
	for i := range tasks {
		_, err := tk.Kiq(ctx, WelcomeArgs{UserID: i, Locale: "en"})
		require.NoError(t, err)
	}
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 0, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask)

	locks, err := mw.Locks(ctx, 100)
	require.NoError(t, err)
	require.Len(t, locks, tasks, "the locks of every master")
	holding := 0
	for _, n := range nodes {
		if keys := n.Client(t).DBSize(ctx).Val(); keys > 0 {
			holding++
		}
	}
	require.Equal(t, len(nodes), holding, "locks and queue spread over every master")

	w := worker.New(b, worker.Options{Concurrency: 4})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ran) == tasks
	}, 10*time.Second, 10*time.Millisecond, "every task ran")
	require.Eventually(t, func() bool {
		locks, err := mw.Locks(ctx, 100)
		return err == nil && len(locks) == 0
	}, 5*time.Second, 10*time.Millisecond, "every lock released")
	cancel()
	require.NoError(t, <-done)
	for i := range tasks {
		require.Equal(t, 1, ran[i], fmt.Sprintf("task %d ran once", i))
	}
	_, err = tk.Kiq(context.Background(), WelcomeArgs{UserID: 0, Locale: "en"})
	require.NoError(t, err, "free again once its task ran")
}
