package dedup_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
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

// bothPaths runs f on a ListQueue whose locks are taken in the enqueue
// script ("atomic") and on one whose locks live in another Redis ("grace").
func bothPaths(t *testing.T, f func(t *testing.T, b *broker.ListQueue, mw *dedup.Middleware, locks *redis.Client, prefix string), opts ...dedup.Option) {
	t.Run("atomic", func(t *testing.T) {
		b, mw, client, prefix := listQueue(t, opts...)
		f(t, b, mw, client, prefix)
	})
	t.Run("grace", func(t *testing.T) {
		s := splitQueue(t, opts...)
		f(t, s.b, s.mw, s.locks, s.prefix)
	})
}

// A delayed task's lock lives its TTL counted from when the task may run,
// so it does not expire while the task waits.
func TestDelayedTaskKeepsItsLockThroughItsDelay(t *testing.T) {
	bothPaths(t, func(t *testing.T, b *broker.ListQueue, _ *dedup.Middleware, locks *redis.Client, prefix string) {
		ctx := context.Background()
		tk := welcome(t, b, task.WithLabels(task.Labels{"deduplication_ttl": 1}))
		h, err := tk.Kicker().WithDelay(3*time.Second).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		key := prefix + ":" + welcomeFingerprint
		require.Equal(t, h.TaskID(), locks.Get(ctx, key).Val())
		ttl := locks.PTTL(ctx, key).Val()
		require.Greater(t, ttl, 3*time.Second, "TTL + delay, not the bare 1 s TTL")
		require.LessOrEqual(t, ttl, 4*time.Second)
		time.Sleep(1200 * time.Millisecond) // past the bare TTL
		_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	})
}

// A delay past what a time.Duration holds (the label saturates) keeps the
// lock for as long: the sum with the TTL does not wrap to a lock of a
// millisecond, on either path.
func TestADelayOfCenturiesKeepsItsLock(t *testing.T) {
	bothPaths(t, func(t *testing.T, b *broker.ListQueue, _ *dedup.Middleware, locks *redis.Client, prefix string) {
		ctx := context.Background()
		tk := welcome(t, b)
		far := tk.Kicker().WithLabels(task.Labels{"delay": int64(1e10)})
		h, err := far.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		key := prefix + ":" + welcomeFingerprint
		require.Equal(t, h.TaskID(), locks.Get(ctx, key).Val())
		require.Greater(t, locks.PTTL(ctx, key).Val(), 100*365*24*time.Hour)
		_, err = far.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	})
}

// A scheduled holder exists on its queue: self-healing does not take its
// lock over, on either path.
func TestScheduledHolderIsNotTakenOver(t *testing.T) {
	bothPaths(t, func(t *testing.T, b *broker.ListQueue, mw *dedup.Middleware, locks *redis.Client, prefix string) {
		ctx := context.Background()
		tk := welcome(t, b)
		h, err := tk.Kicker().WithDelay(time.Minute).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		var dup *dedup.DuplicateTaskError
		require.ErrorAs(t, err, &dup)
		require.Equal(t, h.TaskID(), dup.HolderTaskID)
		require.Equal(t, h.TaskID(), locks.Get(ctx, prefix+":"+welcomeFingerprint).Val())
		require.Zero(t, mw.Stats().LocksTakenOver)
	})
}

// Self-healing never takes over a lock without a TTL (someone set it by
// hand, or another tool), nor one within its grace, on either path.
func TestSelfHealingSparesLocksWithoutTTLOrWithinTheGrace(t *testing.T) {
	bothPaths(t, func(t *testing.T, b *broker.ListQueue, mw *dedup.Middleware, locks *redis.Client, prefix string) {
		ctx := context.Background()
		tk := welcome(t, b)
		key := prefix + ":" + welcomeFingerprint
		for holder, ttl := range map[string]time.Duration{"forever": 0, "sending": 10 * time.Second} {
			require.NoError(t, locks.Set(ctx, key, holder, ttl).Err())
			_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			var dup *dedup.DuplicateTaskError
			require.ErrorAs(t, err, &dup, holder)
			require.Equal(t, holder, dup.HolderTaskID)
		}
		require.Zero(t, mw.Stats().LocksTakenOver)
	})
}

// LocksReleased counts releases that happened: by the ack or dead-letter
// script on the atomic path, only when the lock was still the task's.
func TestLocksReleasedCountsOnlyRealReleases(t *testing.T) {
	b, mw, client, prefix := listQueue(t)
	ctx := context.Background()
	tk := welcome(t, b)
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	run := func(user int, res *middleware.Result) (*broker.Delivery, string) {
		t.Helper()
		_, err := tk.Kiq(ctx, WelcomeArgs{UserID: user})
		require.NoError(t, err)
		ds, err := c.Fetch(ctx, 1)
		require.NoError(t, err)
		_, err = mw.PreExecute(ctx, ds[0].Message)
		require.NoError(t, err)
		mw.PostExecute(ctx, ds[0].Message, res)
		key, ok := ds[0].Message.Labels.String(dedup.LabelLock)
		require.True(t, ok)
		return ds[0], key
	}

	d, _ := run(1, &middleware.Result{})
	require.Zero(t, mw.Stats().LocksReleased, "not before the ack")
	require.NoError(t, c.Ack(ctx, d))
	require.Equal(t, int64(1), mw.Stats().LocksReleased)

	d, key := run(2, &middleware.Result{})
	require.NoError(t, client.Set(ctx, key, "another-task", time.Minute).Err())
	require.NoError(t, c.Ack(ctx, d))
	require.Equal(t, int64(1), mw.Stats().LocksReleased, "the compare-and-delete found another holder")
	require.Equal(t, "another-task", client.Get(ctx, key).Val())

	d, key = run(3, &middleware.Result{Err: errors.New("boom")})
	require.NoError(t, c.DeadLetter(ctx, d, "boom"))
	require.Equal(t, int64(2), mw.Stats().LocksReleased, "released by the dead-letter script")
	require.Zero(t, client.Exists(ctx, key).Val())
	require.NoError(t, c.Ack(ctx, d))
	require.Equal(t, int64(2), mw.Stats().LocksReleased, "settling twice releases nothing")
	require.Equal(t, prefix+":", key[:len(prefix)+1])
}

// The holder of a duplicate on the grace path is read in the script that
// failed to take the lock, so it is never empty, even with locks expiring
// all the time.
func TestGracePathDuplicateAlwaysNamesItsHolder(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t, dedup.WithGraceTTL(time.Millisecond), dedup.WithDefaultTTL(5*time.Millisecond))
	b := broker.NewInMemory().WithMiddlewares(mw)
	tk := welcome(t, b)
	var wg sync.WaitGroup
	for i := range 400 {
		wg.Go(func() {
			_, err := tk.Kiq(context.Background(), WelcomeArgs{UserID: i % 4})
			var dup *dedup.DuplicateTaskError
			if errors.As(err, &dup) && dup.HolderTaskID == "" {
				t.Errorf("duplicate with an empty holder: %v", err)
			} else if err != nil && dup == nil {
				t.Errorf("kick: %v", err)
			}
		})
	}
	wg.Wait()
}

func TestScopes(t *testing.T) {
	ctx := context.Background()
	other := task.Labels{"queue": "other"}
	t.Run("ScopeQueue: one lock per queue", func(t *testing.T) {
		b, _, client, prefix := listQueue(t, dedup.WithScope(dedup.ScopeQueue))
		tk := welcome(t, b)
		h1, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		h2, err := tk.Kicker().WithLabels(other).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err, "the same task on another queue is no duplicate")
		require.Equal(t, h1.TaskID(), client.Get(ctx, prefix+":taskiq:"+welcomeFingerprint).Val())
		require.Equal(t, h2.TaskID(), client.Get(ctx, prefix+":other:"+welcomeFingerprint).Val())
		_, err = tk.Kicker().WithLabels(other).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		var dup *dedup.DuplicateTaskError
		require.ErrorAs(t, err, &dup)
		require.Equal(t, h2.TaskID(), dup.HolderTaskID)
	})
	t.Run("ScopeGlobal: one lock across queues", func(t *testing.T) {
		b, _, client, prefix := listQueue(t, dedup.WithSelfHealing(false))
		tk := welcome(t, b)
		h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		_, err = tk.Kicker().WithLabels(other).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		var dup *dedup.DuplicateTaskError
		require.ErrorAs(t, err, &dup, "a duplicate whatever the queue")
		require.Equal(t, h.TaskID(), dup.HolderTaskID)
		require.Equal(t, prefix+":"+welcomeFingerprint, dup.Key)
		require.Equal(t, h.TaskID(), client.Get(ctx, dup.Key).Val())
	})
	t.Run("ScopeGlobal with self-healing: a holder on another queue is not seen", func(t *testing.T) {
		// The documented limit: self-healing looks in the new task's queue.
		b, mw, _, _ := listQueue(t)
		tk := welcome(t, b)
		_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		_, err = tk.Kicker().WithLabels(other).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err, "taken over: the holder is on another queue")
		require.Equal(t, int64(1), mw.Stats().LocksTakenOver)
	})
}

// With the heartbeat off, a task that runs longer than its TTL loses its
// lock while it runs: a duplicate can be queued.
func TestWithoutHeartbeatALongTaskLosesItsLock(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t, dedup.WithHeartbeat(false, 0), dedup.WithDefaultTTL(time.Second))
	b := broker.NewInMemory().WithMiddlewares(mw)
	started, release := make(chan struct{}, 1), make(chan struct{})
	tk := task.Define(b, "send_welcome_email", func(ctx context.Context, a WelcomeArgs) error {
		started <- struct{}{}
		<-release
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	w := worker.New(b, worker.Options{Concurrency: 2, Logger: slog.New(slog.DiscardHandler)})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-started
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask, "held while within its TTL")
	var second string
	require.Eventually(t, func() bool {
		h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		if err == nil {
			second = h.TaskID()
		}
		return err == nil
	}, 3*time.Second, 50*time.Millisecond, "the first task still runs, its lock is gone")
	require.NotEqual(t, first.TaskID(), second)
	require.Zero(t, mw.Stats().HeartbeatsLost, "nothing renews it, nothing notices")
	close(release)
	cancel()
	require.NoError(t, <-done)
}

// A worker that crashes mid-task leaves its lock alive until the broker has
// delivered the task again: a duplicate kicked at any moment of that window
// is rejected, and the redelivered task finds its lock still held.
func TestDuplicateDuringACrashedWorkersRedeliveryIsRejected(t *testing.T) {
	e := newEnv(t)
	qprefix := redistest.Prefix(t)
	newBroker := func() *broker.ListQueue {
		b, err := broker.NewListQueue("", broker.WithClient(e.client), broker.WithKeyPrefix(qprefix),
			broker.WithHeartbeat(100*time.Millisecond, 600*time.Millisecond),
			broker.WithLogger(slog.New(slog.DiscardHandler)))
		require.NoError(t, err)
		return b
	}
	opts := []dedup.Option{dedup.WithClient(e.client), dedup.WithDefaultTTL(200 * time.Millisecond),
		dedup.WithHeartbeat(true, 300*time.Millisecond)}
	b := newBroker()
	mw := e.middleware(t, opts...)
	b.WithMiddlewares(mw)
	tk := welcome(t, b)
	ctx := context.Background()
	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	key := e.prefix + ":" + welcomeFingerprint

	// The worker that will crash: a process of its own.
	crashed := newBroker()
	crashedMW := e.middleware(t, opts...)
	crashed.WithMiddlewares(crashedMW)
	require.NoError(t, crashedMW.Startup(ctx))
	life, crash := context.WithCancel(ctx)
	c1, err := crashed.Consume(life, broker.ConsumeOptions{})
	require.NoError(t, err)
	ds, err := c1.Fetch(ctx, 1)
	require.NoError(t, err)
	_, err = crashedMW.PreExecute(ctx, ds[0].Message)
	require.NoError(t, err)
	time.Sleep(400 * time.Millisecond) // the task runs past its 200 ms TTL
	require.Equal(t, h.TaskID(), e.client.Get(ctx, key).Val())
	crash() // its consumer's heartbeat stops, nothing is settled
	require.NoError(t, crashedMW.Shutdown(ctx))

	c2, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c2.Close(ctx)
	got := make(chan []*broker.Delivery, 1)
	go func() {
		ds, err := c2.Fetch(ctx, 1)
		if err != nil {
			t.Errorf("fetch: %v", err)
		}
		got <- ds
	}()
	var redelivered []*broker.Delivery
	kicks := 0
	for redelivered == nil {
		select {
		case redelivered = <-got:
		case <-time.After(20 * time.Millisecond):
			_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			require.ErrorIs(t, err, dedup.ErrDuplicateTask, "kick %d during the redelivery window", kicks)
			kicks++
		}
	}
	require.Greater(t, kicks, 10)
	require.Len(t, redelivered, 1)
	require.Equal(t, h.TaskID(), redelivered[0].ID)
	taken := mw.Stats().LocksTaken
	_, err = mw.PreExecute(ctx, redelivered[0].Message)
	require.NoError(t, err)
	require.Equal(t, taken, mw.Stats().LocksTaken, "its lock was still held, not taken again")
	require.Equal(t, h.TaskID(), e.client.Get(ctx, key).Val())
	mw.PostExecute(ctx, redelivered[0].Message, &middleware.Result{})
	require.NoError(t, c2.Ack(ctx, redelivered...))
	require.Zero(t, e.client.Exists(ctx, key).Val())
	require.NoError(t, c1.Close(ctx))
}
