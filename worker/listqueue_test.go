package worker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/stretchr/testify/require"
)

// These tests run the worker against the Redis list broker on a private
// redis-server (see package redistest).

func newListQueue(t *testing.T, url string, opts ...broker.ListQueueOption) *broker.ListQueue {
	t.Helper()
	b, err := broker.NewListQueue(url, append([]broker.ListQueueOption{broker.WithLogger(quiet)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	return b
}

func TestThousandTasksRunExactlyOnceOnRedis(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	var mu sync.Mutex
	seen := map[int]int{}
	tk := task.Define(b, "count", func(ctx context.Context, a Args) error {
		mu.Lock()
		seen[a.N]++
		mu.Unlock()
		return nil
	})
	for i := range 1000 {
		kick(t, tk, i)
	}
	w := worker.New(b, worker.Options{Concurrency: 8, Logger: quiet})
	stop := start(t, w)
	require.Eventually(t, func() bool { return w.Stats().Done == 1000 }, 30*time.Second, 5*time.Millisecond)
	require.NoError(t, stop())
	mu.Lock()
	require.Len(t, seen, 1000)
	for n, k := range seen {
		require.Equal(t, 1, k, "task %d", n)
	}
	mu.Unlock()
	require.Equal(t, worker.Stats{Done: 1000}, w.Stats())
	stats, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue}, stats, "nothing left queued, in flight or registered")
}

func TestWorkerCarriesOnAfterARedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	b := newListQueue(t, srv.URL())
	ran := make(chan int, 100)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- a.N; return nil })
	log, logs := newLogRecorder()
	w := worker.New(b, worker.Options{ErrorBackoff: 100 * time.Millisecond, Logger: log})
	start(t, w)
	kick(t, tk, 1)
	require.Equal(t, 1, recv(t, ran))
	require.Eventually(t, func() bool {
		s, err := b.Stats(context.Background(), broker.DefaultQueue)
		return err == nil && s.InFlight == 0
	}, 10*time.Second, 5*time.Millisecond, "acknowledged before the outage")

	srv.Kill(t)
	require.Eventually(t, func() bool { return logs.count("broker call failed") > 0 }, 10*time.Second, 5*time.Millisecond,
		"the worker logs the outage")
	time.Sleep(500 * time.Millisecond) // several retries with backoff
	srv.Revive(t)
	ctx := context.Background()
	require.Eventually(t, func() bool {
		_, err := tk.Kiq(ctx, Args{N: 2})
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 2, recv(t, ran), "the worker carries on after Redis came back")
	require.Equal(t, 1, logs.count("broker call failed"), "one line for the outage, not one per retry")
	require.Equal(t, 1, logs.count("broker call failed; retrying with backoff call=fetch"))
	require.Eventually(t, func() bool { return logs.count("broker call recovered call=fetch") == 1 },
		5*time.Second, 5*time.Millisecond)
}

func TestUndecodableMessageOnRedisIsDeadLettered(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	ran := make(chan struct{}, 1)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- struct{}{}; return nil })
	ctx := context.Background()
	// What a kick writes, with bytes that are not a message.
	pending, msgs := b.KeyPrefix()+":{taskiq}:pending", b.KeyPrefix()+":{taskiq}:msg"
	require.NoError(t, b.Client().HSet(ctx, msgs, "garbage", []byte{0xc1, 0xff}).Err())
	require.NoError(t, b.Client().LPush(ctx, pending, "garbage").Err())
	kick(t, tk, 0)
	w := newQuietWorker(b)
	start(t, w)
	recv(t, ran)
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 5*time.Second, 5*time.Millisecond)
	dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, "garbage", dls[0].TaskID)
	require.Equal(t, "\xc1\xff", string(dls[0].Raw))
	require.Contains(t, dls[0].Reason, "kiq: malformed message")
}

// A message whose attempt counter is negative is malformed: dead-lettered
// with its reason before any middleware sees it.
func TestNegativeAttemptOnRedisIsDeadLettered(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	b.WithMiddlewares(middleware.NewRetry(middleware.RetryOptions{Always: true}))
	ran := make(chan struct{}, 1)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- struct{}{}; return errors.New("fails") })
	ctx := context.Background()
	msg, err := tk.Kicker().Message(Args{})
	require.NoError(t, err)
	msg.Attempt = -1
	raw, err := b.Formatter().EncodeMessage(msg)
	require.NoError(t, err)
	pending, msgs := b.KeyPrefix()+":{taskiq}:pending", b.KeyPrefix()+":{taskiq}:msg"
	require.NoError(t, b.Client().HSet(ctx, msgs, msg.TaskID, raw).Err())
	require.NoError(t, b.Client().LPush(ctx, pending, msg.TaskID).Err())
	w := newQuietWorker(b)
	start(t, w)
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 5*time.Second, 5*time.Millisecond)
	dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, 10)
	require.NoError(t, err)
	require.Len(t, dls, 1)
	require.Equal(t, msg.TaskID, dls[0].TaskID)
	require.Contains(t, dls[0].Reason, "negative attempt")
	require.Empty(t, ran, "the task did not run")
}

// The retry middleware on Redis: max_retries retries with backoff, then the
// dead-letter list with the last error and the attempt count.
func TestRetryMiddlewareOnRedis(t *testing.T) {
	b, err := broker.NewListQueue(redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	b.WithMiddlewares(middleware.NewRetry(middleware.RetryOptions{Base: 20 * time.Millisecond, Cap: 50 * time.Millisecond}))
	var runs atomic.Int64
	tk := task.Define(b, "flaky", func(ctx context.Context, a Args) error {
		return fmt.Errorf("failure %d", runs.Add(1))
	}, task.WithLabels(task.Labels{"retry_on_error": true, "max_retries": 2}))
	ctx := context.Background()
	h, err := tk.Kiq(ctx, Args{})
	require.NoError(t, err)
	w := newQuietWorker(b)
	start(t, w)
	require.Eventually(t, func() bool {
		dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, 10)
		return err == nil && len(dls) == 1
	}, 5*time.Second, 10*time.Millisecond)
	dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, 10)
	require.NoError(t, err)
	require.Equal(t, h.TaskID(), dls[0].TaskID)
	require.Equal(t, 2, dls[0].Attempt)
	require.Equal(t, "failure 3", dls[0].Reason, "the last error")
	require.Equal(t, int64(3), runs.Load(), "the first run and two retries")
	require.Equal(t, int64(2), w.Stats().Retried)
}

// Graceful shutdown on Redis: a task that finishes within the shutdown
// timeout is acknowledged; one cut by the timeout is handed back to the
// head of the queue, not failed: no attempt is counted, nothing is dead.
func TestShutdownOnRedisFinishesOrHandsBack(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	started := make(chan int, 2)
	tk := task.Define(b, "slow", func(ctx context.Context, a Args) error {
		started <- a.N
		if a.N == 1 {
			time.Sleep(50 * time.Millisecond) // finishes within the timeout
			return nil
		}
		<-ctx.Done() // cut by the timeout
		return ctx.Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	h1, err := tk.Kiq(ctx, Args{N: 1})
	require.NoError(t, err)
	h2, err := tk.Kiq(ctx, Args{N: 2})
	require.NoError(t, err)
	w := worker.New(b, worker.Options{Concurrency: 2, ShutdownTimeout: 300 * time.Millisecond, Logger: quiet})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-started
	<-started
	cancel()
	<-done
	bg := context.Background()
	st, err := b.Stats(bg, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Pending, "the cut task is queued again")
	require.Zero(t, st.InFlight)
	require.Zero(t, st.Dead, "a hand-back is not a failure")
	exists, err := b.TaskExists(bg, broker.DefaultQueue, h1.TaskID())
	require.NoError(t, err)
	require.False(t, exists, "the finished task was acknowledged")
	c, err := b.Consume(bg, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(bg)
	ds, err := c.Fetch(bg, 1)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, h2.TaskID(), ds[0].ID)
	require.Zero(t, ds[0].Message.Attempt, "no attempt was counted")
}

// On Redis, a retry is not delivered before its backoff has passed (counted
// from the failure, by Redis's clock), and comes soon after it.
func TestRetryIsNotDeliveredBeforeItsBackoff(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	const backoff = 300 * time.Millisecond
	// Full jitter drawn at the top of its range: the backoff is the base.
	b.WithMiddlewares(middleware.NewRetry(middleware.RetryOptions{Base: backoff, Cap: time.Minute,
		Rand: func() float64 { return 0.9999 }}))
	var mu sync.Mutex
	var starts, ends []time.Time
	ran := make(chan struct{}, 2)
	tk := task.Define(b, "flaky", func(ctx context.Context, a Args) error {
		mu.Lock()
		starts = append(starts, time.Now())
		first := len(starts) == 1
		mu.Unlock()
		defer func() {
			mu.Lock()
			ends = append(ends, time.Now())
			mu.Unlock()
			ran <- struct{}{}
		}()
		if first {
			return errors.New("first attempt fails")
		}
		return nil
	}, task.WithLabels(task.Labels{"retry_on_error": true, "max_retries": 1}))
	kick(t, tk, 0)
	start(t, newQuietWorker(b))
	recv(t, ran)
	recv(t, ran)
	mu.Lock()
	defer mu.Unlock()
	gap := starts[1].Sub(ends[0])
	want := time.Duration(0.9999 * float64(backoff))
	require.GreaterOrEqual(t, gap, want-2*time.Millisecond, "the retry came %v after the failure, before its %v backoff", gap, want)
	require.Less(t, gap, want+time.Second, "and not much later")
	t.Logf("retry delivered %v after the failure (backoff %v)", gap, want)
}

// Shutdown on Redis: the running tasks finish within the timeout and are
// acknowledged; those fetched but not started go back to the queue at once,
// their attempt unchanged.
func TestShutdownOnRedisWaitsForTheRunningAndHandsBackTheUnstarted(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	ctx := context.Background()
	started := make(chan int, 6)
	release := make(chan struct{})
	var finished atomic.Int64
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error {
		started <- a.N
		<-release
		finished.Add(1)
		return nil
	})
	ids := make([]string, 6)
	for i := range ids {
		ids[i] = kick(t, tk, i)
	}
	w := worker.New(b, worker.Options{Concurrency: 2, Prefetch: 6, ShutdownTimeout: 5 * time.Second, Logger: quiet})
	stop := start(t, w)
	ran := map[int]bool{recv(t, started): true, recv(t, started): true}
	stats := func() broker.QueueStats {
		s, err := b.Stats(ctx, broker.DefaultQueue)
		require.NoError(t, err)
		return s
	}
	require.Eventually(t, func() bool { return stats().InFlight == 6 }, 5*time.Second, time.Millisecond, "all six fetched")
	stopped := make(chan error, 1)
	begun := time.Now()
	go func() { stopped <- stop() }()
	require.Eventually(t, func() bool { return stats().Pending == 4 }, 5*time.Second, time.Millisecond,
		"the four not started are handed back at once")
	select {
	case <-stopped:
		t.Fatal("Run returned while tasks were running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	require.NoError(t, recv(t, stopped))
	require.Less(t, time.Since(begun), 5*time.Second, "within the shutdown timeout")
	require.Equal(t, int64(2), finished.Load(), "the running tasks finished")
	require.Equal(t, worker.Stats{Done: 2, HandedBack: 4}, w.Stats())
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Pending: 4}, stats(), "acknowledged, handed back, nothing in flight")
	for i, id := range ids {
		if ran[i] {
			continue
		}
		info, err := b.Task(ctx, broker.DefaultQueue, id)
		require.NoError(t, err)
		require.Equal(t, "pending", info.State)
		require.Equal(t, 0, info.Message.Attempt, "a hand-back is not a failed attempt")
	}
}

// Shutdown on Redis: a task cut by the shutdown timeout is handed back, not
// failed: no retry is scheduled, nothing is dead-lettered, its attempt is
// unchanged, and the next worker runs it.
func TestShutdownTimeoutOnRedisHandsBackTheCutTask(t *testing.T) {
	b := newListQueue(t, redistest.Shared(t).URL(), broker.WithKeyPrefix(redistest.Prefix(t)))
	b.WithMiddlewares(middleware.NewRetry(middleware.RetryOptions{Always: true, Base: time.Millisecond}))
	ctx := context.Background()
	var runs atomic.Int64
	done := make(chan struct{}, 1)
	tk := task.Define(b, "slow", func(ctx context.Context, a Args) error {
		if runs.Add(1) == 1 {
			<-ctx.Done() // the first run is cut by the shutdown
			return ctx.Err()
		}
		done <- struct{}{}
		return nil
	})
	id := kick(t, tk, 0)
	w := worker.New(b, worker.Options{ShutdownTimeout: 100 * time.Millisecond, Logger: quiet})
	stop := start(t, w)
	require.Eventually(t, func() bool { return w.Stats().Running == 1 }, 5*time.Second, time.Millisecond)
	begun := time.Now()
	require.NoError(t, stop())
	require.Less(t, time.Since(begun), time.Second, "cut at the timeout")
	require.Equal(t, worker.Stats{HandedBack: 1}, w.Stats(), "not a failure, not a retry")
	s, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Pending: 1}, s, "back on the queue, not scheduled, not dead")
	info, err := b.Task(ctx, broker.DefaultQueue, id)
	require.NoError(t, err)
	require.Equal(t, "pending", info.State)
	require.Equal(t, 0, info.Message.Attempt, "a hand-back is not a failed attempt")

	next := newQuietWorker(b)
	start(t, next)
	recv(t, done)
	require.Eventually(t, func() bool { return next.Stats().Done == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, int64(2), runs.Load())
}
