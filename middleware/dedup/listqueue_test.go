package dedup_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// commandCounter counts the round trips a client makes.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() != "hello" && cmds[0].Name() != "client" { // not a new connection's set-up
			c.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// listQueue returns a Redis list broker and a deduplication middleware that
// share one client, so locks are taken in the enqueue script.
func listQueue(t *testing.T, opts ...dedup.Option) (*broker.ListQueue, *dedup.Middleware, *redis.Client, string) {
	b, mw, e := listQueueEnv(t, opts...)
	return b, mw, e.client, e.prefix
}

// listQueueEnv is listQueue, returning the test's env (its logs).
func listQueueEnv(t *testing.T, opts ...dedup.Option) (*broker.ListQueue, *dedup.Middleware, *env) {
	e := newEnv(t)
	b, err := broker.NewListQueue("", broker.WithClient(e.client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	mw := e.middleware(t, append([]dedup.Option{dedup.WithClient(e.client)}, opts...)...)
	b.WithMiddlewares(mw)
	require.True(t, b.LocksAtomically(mw.Client()))
	return b, mw, e
}

func TestAtomicPathIsOneRoundTripAndExactlyOneWins(t *testing.T) {
	b, _, client, prefix := listQueue(t)
	require.True(t, b.LocksAtomically(client))
	tk := welcome(t, b)
	ctx := context.Background()

	counter := &commandCounter{}
	client.AddHook(counter)
	// Warm the script cache so EVALSHA does not fall back to EVAL.
	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 1})
	require.NoError(t, err)
	before := counter.n.Load()
	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	require.Equal(t, int64(1), counter.n.Load()-before, "lock and enqueue in one round trip")
	require.Equal(t, h.TaskID(), client.Get(ctx, prefix+":"+welcomeFingerprint).Val())

	var wg sync.WaitGroup
	var wins, dups atomic.Int64
	for range 200 {
		wg.Go(func() {
			_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 7, Locale: "en"})
			if err == nil {
				wins.Add(1)
			} else if errors.Is(err, dedup.ErrDuplicateTask) {
				dups.Add(1)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(1), wins.Load())
	require.Equal(t, int64(199), dups.Load())
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(3), stats.Pending, "user 1, user 42 and one user 7")
}

func TestDuplicateOnTheAtomicPathCarriesTheHolder(t *testing.T) {
	b, mw, _, prefix := listQueue(t)
	tk := welcome(t, b)
	ctx := context.Background()
	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	var dup *dedup.DuplicateTaskError
	require.ErrorAs(t, err, &dup)
	require.Equal(t, h.TaskID(), dup.HolderTaskID)
	require.Equal(t, prefix+":"+welcomeFingerprint, dup.Key)
	require.Equal(t, dedup.Stats{LocksTaken: 1, Duplicates: 1}, mw.Stats())
}

func TestLockOfAVanishedHolderIsTakenOver(t *testing.T) {
	b, mw, e := listQueueEnv(t)
	client, prefix := e.client, e.prefix
	tk := welcome(t, b)
	ctx := context.Background()
	key := prefix + ":" + welcomeFingerprint
	// A lock left under a caller's id (WithTaskID) is respected: Kiq cannot
	// tell where such a task is.
	require.NoError(t, client.Set(ctx, key, "order-42", time.Hour).Err())
	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	// A lock left by a Kiq task that exists nowhere (its queue was purged,
	// say).
	ghost := broker.NewTaskID()
	require.NoError(t, client.Set(ctx, key, ghost, time.Hour).Err())
	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err, "the stale lock does not block the fingerprint until its TTL")
	require.Equal(t, h.TaskID(), client.Get(ctx, key).Val())
	// The takeover on the atomic path is reported by the kick script, and
	// counted and logged like one on the grace path.
	require.Equal(t, dedup.Stats{LocksTaken: 1, LocksTakenOver: 1, Duplicates: 1}, mw.Stats())
	require.Contains(t, e.logs.String(), "took over a deduplication lock")
	require.Contains(t, e.logs.String(), "stale_holder_task_id="+ghost)

	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask, "a holder that is queued is not taken over")
	require.Equal(t, int64(1), mw.Stats().LocksTakenOver)
}

func TestLockIsReleasedWhenTheTaskRan(t *testing.T) {
	b, mw, client, prefix := listQueue(t)
	ran := make(chan WelcomeArgs, 10)
	tk := task.Define(b, "send_welcome_email", func(ctx context.Context, a WelcomeArgs) error { ran <- a; return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask)

	w := worker.New(b, worker.Options{Concurrency: 2})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-ran
	key := prefix + ":" + welcomeFingerprint
	require.Eventually(t, func() bool { return client.Exists(ctx, key).Val() == 0 }, 2*time.Second, 5*time.Millisecond)
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err, "free again once the task ran")
	<-ran
	cancel()
	require.NoError(t, <-done)
	require.Equal(t, int64(2), mw.Stats().LocksReleased)
}

func TestFailingTaskWithRetriesKeepsItsLock(t *testing.T) {
	b, _, client, prefix := listQueue(t)
	var attempts atomic.Int64
	release := make(chan struct{})
	tk := task.Define(b, "send_welcome_email", func(ctx context.Context, a WelcomeArgs) error {
		if attempts.Add(1) < 3 {
			return errors.New("flaky")
		}
		<-release
		return nil
	}, task.WithLabels(task.Labels{"retry_on_error": true, "max_retries": 3}))
	b.WithMiddlewares(fixedRetrier{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	w := worker.New(b, worker.Options{Concurrency: 2})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	require.Eventually(t, func() bool { return attempts.Load() == 3 }, 5*time.Second, 5*time.Millisecond)
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask, "between and during retries the fingerprint stays locked")
	close(release)
	key := prefix + ":" + welcomeFingerprint
	require.Eventually(t, func() bool { return client.Exists(ctx, key).Val() == 0 }, 2*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
}

// fixedRetrier retries a task with retry_on_error after 10 ms, up to its
// max_retries.
type fixedRetrier struct{ middleware.Base }

func (fixedRetrier) RetryDelay(msg *broker.Message, err error) (time.Duration, bool) {
	on, _ := msg.Labels.Bool(broker.LabelRetryOnError)
	limit, _ := msg.Labels.Int(broker.LabelMaxRetries)
	return 10 * time.Millisecond, on && int64(msg.Attempt) < limit
}

// welcomes returns n welcome arguments for users 0 to distinct-1 over and
// over: the ones past distinct repeat the first ones' lock keys.
func welcomes(n, distinct int) []WelcomeArgs {
	args := make([]WelcomeArgs, n)
	for i := range args {
		args[i] = WelcomeArgs{UserID: i % distinct, Locale: "en"}
	}
	return args
}

func TestKiqManyDeduplicatesWithinAndAcrossBatches(t *testing.T) {
	b, _, client, _ := listQueue(t)
	tk := welcome(t, b)
	ctx := context.Background()
	args := welcomes(2500, 2000)                   // 500 repeats
	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: -1}) // loads the kick script
	require.NoError(t, err)
	counter := &commandCounter{}
	client.AddHook(counter)
	handles, errs := tk.KiqMany(ctx, args)
	require.LessOrEqual(t, counter.n.Load(), int64(8), "a round trip per thousand kicks, not per kick")
	sent, dups := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			sent++
			require.NotEmpty(t, handles[i].TaskID())
		case errors.Is(err, dedup.ErrDuplicateTask):
			dups++
			require.Nil(t, handles[i])
		default:
			t.Fatalf("kick %d: %v", i, err)
		}
	}
	require.Equal(t, 2000, sent)
	require.Equal(t, 500, dups)
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(2001), stats.Pending)

	_, errs = tk.KiqMany(ctx, args[:10])
	for _, err := range errs {
		require.ErrorIs(t, err, dedup.ErrDuplicateTask, "locked by the first batch")
	}
}

// A KiqMany of several chunks (the kicker's, of 10 000) keeps the first of
// two same-fingerprint tasks, whichever chunks they are in.
func TestKiqManyDeduplicatesAcrossChunks(t *testing.T) {
	b, _, _, _ := listQueue(t)
	tk := welcome(t, b)
	ctx := context.Background()
	args := welcomes(25000, 12000) // 13 000 repeats
	handles, errs := tk.KiqMany(ctx, args)
	for i, err := range errs {
		if i < 12000 {
			require.NoError(t, err, i)
			require.NotNil(t, handles[i], i)
			continue
		}
		require.ErrorIs(t, err, dedup.ErrDuplicateTask, i)
	}
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(12000), stats.Pending)
}

// A fresh first attempt starts without a round trip for its lock, and the
// lock is released by the ack script; an old or retried one is checked.
func TestWorkerSideLockCallsRideOnTheBrokersScripts(t *testing.T) {
	b, mw, client, prefix := listQueue(t)
	ctx := context.Background()
	tk := welcome(t, b)
	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	msg := ds[0].Message

	counter := &commandCounter{}
	client.AddHook(counter)
	_, err = mw.PreExecute(ctx, msg)
	require.NoError(t, err)
	mw.PostExecute(ctx, msg, &middleware.Result{})
	require.Zero(t, counter.n.Load(), "no round trip of the middleware's own")
	key := prefix + ":" + welcomeFingerprint
	require.Equal(t, msg.TaskID, client.Get(ctx, key).Val(), "held until the delivery is settled")
	require.NoError(t, c.Ack(ctx, ds...))
	require.Less(t, counter.n.Load(), int64(5), "the ack (and the consumer's heartbeat), nothing per lock")
	require.Zero(t, client.Exists(ctx, key).Val(), "and it released the lock")

	// A task kicked long ago whose lock expired is checked, and re-takes it.
	old := &broker.Message{TaskID: "old", TaskName: "t", EnqueuedAt: time.Now().Add(-time.Hour).UnixMilli(),
		Labels: broker.Labels{dedup.LabelLock: key}}
	_, err = mw.PreExecute(ctx, old)
	require.NoError(t, err)
	require.Equal(t, "old", client.Get(ctx, key).Val())
}
