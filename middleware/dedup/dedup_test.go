package dedup_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

type env struct {
	srv    *redistest.Server
	client *redis.Client
	prefix string
	logs   *testlog.Buffer
}

func newEnv(t *testing.T) *env {
	srv := redistest.Shared(t)
	return &env{srv: srv, client: srv.Client(t), prefix: redistest.Prefix(t) + ":dedup", logs: &testlog.Buffer{}}
}

// middleware returns a deduplication middleware on the test's Redis, with
// the test's key prefix, shut down when the test ends.
func (e *env) middleware(t *testing.T, opts ...dedup.Option) *dedup.Middleware {
	t.Helper()
	opts = append([]dedup.Option{
		dedup.WithKeyPrefix(e.prefix),
		dedup.WithLogger(slog.New(slog.NewTextHandler(e.logs, nil))),
	}, opts...)
	mw, err := dedup.New(e.srv.URL(), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, mw.Shutdown(context.Background())) })
	return mw
}

type WelcomeArgs struct {
	UserID int    `msgpack:"user_id"`
	Locale string `msgpack:"locale"`
}

func welcome(t *testing.T, b broker.Broker, opts ...task.Option) *task.Task[WelcomeArgs] {
	return task.Define(b, "send_welcome_email", func(context.Context, WelcomeArgs) error { return nil }, opts...)
}

// The fingerprint of send_welcome_email(user_id=42, locale="en") as computed
// by Python.
const welcomeFingerprint = "cee093b143e6665f"

func TestDuplicateIsRejectedWithItsHolder(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	b := broker.NewInMemory().WithMiddlewares(mw)
	tk := welcome(t, b)
	ctx := context.Background()

	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	key := e.prefix + ":" + welcomeFingerprint
	require.Equal(t, h.TaskID(), e.client.Get(ctx, key).Val(), "the lock holds the task id under the Python-compatible key")
	ttl := e.client.PTTL(ctx, key).Val()
	require.InDelta(t, 300*time.Second, ttl, float64(2*time.Second), "after the send the lock has the full default TTL")

	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	var dup *dedup.DuplicateTaskError
	require.ErrorAs(t, err, &dup)
	require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	require.Equal(t, "send_welcome_email", dup.TaskName)
	require.Equal(t, key, dup.Key)
	require.Equal(t, h.TaskID(), dup.HolderTaskID)
	require.Equal(t, 1, queued(t, b), "the duplicate is not sent")
	require.Contains(t, e.logs.String(), "duplicate task not sent")
	require.Contains(t, e.logs.String(), "holder_task_id="+h.TaskID())
	require.Equal(t, int64(1), mw.Stats().Duplicates)

	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "fr"})
	require.NoError(t, err, "other arguments are another fingerprint")
}

func TestLabelsAtEveryLevel(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	t.Run("call-level opt-out beats the default", func(t *testing.T) {
		b := broker.NewInMemory().WithMiddlewares(e.middleware(t))
		tk := task.Define(b, "opt_out", func(context.Context, WelcomeArgs) error { return nil })
		for range 2 {
			_, err := tk.Kicker().WithLabels(task.Labels{"deduplication": false}).Kiq(ctx, WelcomeArgs{UserID: 1})
			require.NoError(t, err)
		}
		require.Equal(t, 2, queued(t, b))
	})
	t.Run("opt-in when the default is off", func(t *testing.T) {
		b := broker.NewInMemory().WithMiddlewares(e.middleware(t, dedup.WithDefaultDeduplication(false)))
		off := task.Define(b, "off", func(context.Context, WelcomeArgs) error { return nil })
		on := task.Define(b, "on", func(context.Context, WelcomeArgs) error { return nil }, task.WithLabels(task.Labels{"deduplication": true}))
		for range 2 {
			_, err := off.Kiq(ctx, WelcomeArgs{UserID: 1})
			require.NoError(t, err)
		}
		_, err := on.Kiq(ctx, WelcomeArgs{UserID: 1})
		require.NoError(t, err)
		_, err = on.Kiq(ctx, WelcomeArgs{UserID: 1})
		require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	})
	t.Run("explicit key: one lock whatever the arguments", func(t *testing.T) {
		b := broker.NewInMemory().WithMiddlewares(e.middleware(t))
		tk := task.Define(b, "send_welcome_email", func(context.Context, WelcomeArgs) error { return nil },
			task.WithLabels(task.Labels{"deduplication_key": "send-welcome-email"}))
		_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 1})
		require.NoError(t, err)
		_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 2, Locale: "de"})
		var dup *dedup.DuplicateTaskError
		require.ErrorAs(t, err, &dup)
		require.Equal(t, e.prefix+":send-welcome-email", dup.Key)
	})
	t.Run("key fields from struct tags, missing field warned", func(t *testing.T) {
		type Args struct {
			task.Meta `deduplication_key_fields:"user_id,nope"`
			UserID    int    `msgpack:"user_id"`
			Locale    string `msgpack:"locale"`
		}
		b := broker.NewInMemory().WithMiddlewares(e.middleware(t))
		tk := task.Define(b, "send_welcome_email", func(context.Context, Args) error { return nil })
		_, err := tk.Kiq(ctx, Args{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		_, err = tk.Kiq(ctx, Args{UserID: 42, Locale: "fr"})
		require.ErrorIs(t, err, dedup.ErrDuplicateTask, "same user_id, other locale: a duplicate")
		require.Contains(t, e.logs.String(), "field=nope")
	})
	t.Run("call-level TTL beats the task's", func(t *testing.T) {
		b := broker.NewInMemory().WithMiddlewares(e.middleware(t))
		tk := task.Define(b, "ttl_task", func(context.Context, WelcomeArgs) error { return nil },
			task.WithLabels(task.Labels{"deduplication_ttl": 60}))
		_, err := tk.Kicker().WithLabels(task.Labels{"deduplication_ttl": 7 * time.Second}).Kiq(ctx, WelcomeArgs{UserID: 3})
		require.NoError(t, err)
		keys := e.client.Keys(ctx, e.prefix+":*").Val()
		var found bool
		for _, k := range keys {
			if ttl := e.client.PTTL(ctx, k).Val(); ttl > 5*time.Second && ttl <= 7*time.Second {
				found = true
			}
		}
		require.True(t, found, "a lock with the call-level TTL of 7 s")
	})
}

// failingBroker fails every Kick after the middlewares ran.
type failingBroker struct {
	*broker.InMemory
	err error
}

func (f *failingBroker) Kick(ctx context.Context, msg *broker.Message) error { return f.err }

func TestSendFailureReleasesTheLockAtOnce(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	sendErr := errors.New("broker down")
	fb := &failingBroker{InMemory: broker.NewInMemory(), err: sendErr}
	fb.WithMiddlewares(mw)
	tk := task.Define(fb, "send_welcome_email", func(context.Context, WelcomeArgs) error { return nil })
	ctx := context.Background()

	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, sendErr)
	require.Zero(t, e.client.Exists(ctx, e.prefix+":"+welcomeFingerprint).Val(), "no 10 s grace: the lock is gone at once")

	fb.err = nil
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err, "the fingerprint is free for the next try")
}

// A send cut by its deadline may have reached the broker: its lock is kept
// for the grace TTL rather than released, so that no duplicate joins a task
// queued after all.
func TestSendOfUnknownOutcomeKeepsTheLockForTheGrace(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	fb := &failingBroker{InMemory: broker.NewInMemory(), err: fmt.Errorf("kiq: kick: %w", context.DeadlineExceeded)}
	fb.WithMiddlewares(mw)
	tk := task.Define(fb, "send_welcome_email", func(context.Context, WelcomeArgs) error { return nil })
	ctx := context.Background()

	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	ttl := e.client.PTTL(ctx, e.prefix+":"+welcomeFingerprint).Val()
	require.Greater(t, ttl, time.Duration(0), "the lock is kept")
	require.LessOrEqual(t, ttl, 10*time.Second, "for the grace TTL only")
	fb.err = nil
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	var dup *dedup.DuplicateTaskError
	require.ErrorAs(t, err, &dup, "the fingerprint is held until the grace TTL ends")
}

func TestOnlyTheOwnerReleases(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	ctx := context.Background()
	key := e.prefix + ":" + "k"
	require.NoError(t, e.client.Set(ctx, key, "other-task", time.Minute).Err())
	msg := &broker.Message{TaskID: "me", TaskName: "t", Labels: broker.Labels{dedup.LabelLock: key}}
	mw.PostExecute(ctx, msg, &middleware.Result{})
	require.Equal(t, "other-task", e.client.Get(ctx, key).Val())

	require.NoError(t, e.client.Set(ctx, key, "me", time.Minute).Err())
	mw.PostExecute(ctx, msg, &middleware.Result{})
	require.Zero(t, e.client.Exists(ctx, key).Val())
}

func TestRetriedTaskKeepsItsLockUntilTheLastAttempt(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t, dedup.WithDefaultTTL(2*time.Second), dedup.WithHeartbeat(true, time.Second))
	ctx := context.Background()
	key := e.prefix + ":retry"
	require.NoError(t, e.client.Set(ctx, key, "t1", 2*time.Second).Err())
	msg := &broker.Message{TaskID: "t1", TaskName: "t", Labels: broker.Labels{dedup.LabelLock: key}}

	_, err := mw.PreExecute(ctx, msg)
	require.NoError(t, err)
	mw.PostExecute(ctx, msg, &middleware.Result{Err: errors.New("flaky"), Retry: true, RetryDelay: 30 * time.Second})
	require.Equal(t, "t1", e.client.Get(ctx, key).Val(), "kept for the retry")
	require.Greater(t, e.client.PTTL(ctx, key).Val(), 30*time.Second, "long enough to cover the retry's delay")

	msg.Attempt = 1
	_, err = mw.PreExecute(ctx, msg)
	require.NoError(t, err)
	require.Equal(t, "t1", e.client.Get(ctx, key).Val(), "the retry runs under its own lock")
	mw.PostExecute(ctx, msg, &middleware.Result{Err: errors.New("still failing")})
	require.Zero(t, e.client.Exists(ctx, key).Val(), "released after the final attempt")
}

func TestHeartbeatKeepsALongTaskLocked(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t, dedup.WithDefaultTTL(time.Second), dedup.WithHeartbeat(true, 100*time.Millisecond))
	ctx := context.Background()
	require.NoError(t, mw.Startup(ctx))
	key := e.prefix + ":long"
	require.NoError(t, e.client.Set(ctx, key, "t1", time.Second).Err())
	msg := &broker.Message{TaskID: "t1", TaskName: "t", Labels: broker.Labels{dedup.LabelLock: key}}

	_, err := mw.PreExecute(ctx, msg)
	require.NoError(t, err)
	time.Sleep(2500 * time.Millisecond) // well past the 1 s TTL
	require.Equal(t, "t1", e.client.Get(ctx, key).Val(), "the heartbeat kept the lock")

	// Someone else takes the lock: the heartbeat must not extend it.
	require.NoError(t, e.client.Set(ctx, key, "intruder", 400*time.Millisecond).Err())
	require.Eventually(t, func() bool { return mw.Stats().HeartbeatsLost == 1 }, 2*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return e.client.Exists(ctx, key).Val() == 0 }, 2*time.Second, 20*time.Millisecond,
		"the intruder's lock expires: nobody else extended it")
	mw.PostExecute(ctx, msg, &middleware.Result{})
}

func TestRedeliveredTaskTakesItsExpiredLockAgain(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	ctx := context.Background()
	key := e.prefix + ":crashed"
	msg := &broker.Message{TaskID: "t1", TaskName: "t", Labels: broker.Labels{dedup.LabelLock: key}}
	// The worker that ran t1 died and its lock expired; t1 is delivered again.
	_, err := mw.PreExecute(ctx, msg)
	require.NoError(t, err)
	require.Equal(t, "t1", e.client.Get(ctx, key).Val())
	require.Equal(t, int64(1), mw.Stats().LocksTaken)
	mw.PostExecute(ctx, msg, &middleware.Result{})
}

func TestStartupRetriesThenFails(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill(t)
	logs := &testlog.Buffer{}
	mw, err := dedup.New(srv.URL(), dedup.WithStartupRetries(2, 10*time.Millisecond),
		dedup.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	defer mw.Shutdown(context.Background())
	err = mw.Startup(context.Background())
	require.ErrorContains(t, err, "after 3 attempts")
	require.Equal(t, 2, strings.Count(logs.String(), "ping failed, retrying"))
}

func TestStartupWarnsWhenLocksCanBeEvicted(t *testing.T) {
	redistest.RequireReal(t, "CONFIG SET maxmemory-policy")
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	require.NoError(t, c.ConfigSet(ctx, "maxmemory-policy", "volatile-lru").Err())
	logs := &testlog.Buffer{}
	mw, err := dedup.New(srv.URL(), dedup.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	require.NoError(t, mw.Startup(ctx))
	require.NoError(t, mw.Shutdown(ctx))
	require.Contains(t, logs.String(), "maxmemory-policy=volatile-lru")

	require.NoError(t, c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	logs = &testlog.Buffer{}
	mw, err = dedup.New(srv.URL(), dedup.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	require.NoError(t, mw.Startup(ctx))
	require.NoError(t, mw.Shutdown(ctx))
	require.NotContains(t, logs.String(), "maxmemory-policy")
}

func TestRedisOutageFailClosedAndFailOpen(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	closed, err := dedup.New(srv.URL(), dedup.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	defer closed.Shutdown(ctx)
	logs := &testlog.Buffer{}
	open, err := dedup.New(srv.URL(), dedup.WithFailOpen(true), dedup.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	defer open.Shutdown(ctx)
	bClosed := broker.NewInMemory().WithMiddlewares(closed)
	bOpen := broker.NewInMemory().WithMiddlewares(open)
	tClosed, tOpen := welcome(t, bClosed), welcome(t, bOpen)
	srv.Kill(t)

	_, err = tClosed.Kiq(ctx, WelcomeArgs{UserID: 1})
	require.Error(t, err)
	require.NotErrorIs(t, err, dedup.ErrDuplicateTask)
	require.Equal(t, 0, queued(t, bClosed), "fail-closed: not sent")

	_, err = tOpen.Kiq(ctx, WelcomeArgs{UserID: 1})
	require.NoError(t, err)
	require.Equal(t, 1, queued(t, bOpen), "fail-open: sent unlocked")
	require.Contains(t, logs.String(), "fail-open")
}

func TestNewRejectsBadInput(t *testing.T) {
	_, err := dedup.New("redis://user:s3cret@localhost:6379/notanumber")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cret")
	_, err = dedup.New("http://localhost")
	require.Error(t, err)
	_, err = dedup.New("redis://localhost", dedup.WithDefaultTTL(0))
	require.Error(t, err)
}

func TestConcurrentKicksOnTheGracePath(t *testing.T) {
	e := newEnv(t)
	b := broker.NewInMemory().WithMiddlewares(e.middleware(t))
	tk := welcome(t, b)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, dups := 0, 0
	for range 200 {
		wg.Go(func() {
			_, err := tk.Kiq(context.Background(), WelcomeArgs{UserID: 42, Locale: "en"})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else if errors.Is(err, dedup.ErrDuplicateTask) {
				dups++
			}
		})
	}
	wg.Wait()
	require.Equal(t, 1, ok)
	require.Equal(t, 199, dups)
	require.Equal(t, 1, queued(t, b))
}

func TestLocksListAndForceRelease(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	b := broker.NewInMemory().WithMiddlewares(mw)
	h, err := welcome(t, b).Kiq(context.Background(), WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	ctx := context.Background()
	locks, err := mw.Locks(ctx, 10)
	require.NoError(t, err)
	require.Len(t, locks, 1)
	require.Equal(t, e.prefix+":"+welcomeFingerprint, locks[0].Key)
	require.Equal(t, h.TaskID(), locks[0].HolderTaskID)
	require.Greater(t, locks[0].TTL, 290*time.Second)

	_, err = mw.ForceRelease(ctx, "elsewhere:key")
	require.Error(t, err, "keys outside the prefix are refused")
	released, err := mw.ForceRelease(ctx, locks[0].Key)
	require.NoError(t, err)
	require.True(t, released)
	locks, err = mw.Locks(ctx, 10)
	require.NoError(t, err)
	require.Empty(t, locks)
}

// Locks skips keys under the prefix that are not locks instead of failing
// with WRONGTYPE.
func TestLocksSkipsKeysThatAreNotLocks(t *testing.T) {
	e := newEnv(t)
	mw := e.middleware(t)
	ctx := context.Background()
	require.NoError(t, e.client.HSet(ctx, e.prefix+":a-hash", "f", "v").Err())
	require.NoError(t, e.client.RPush(ctx, e.prefix+":a-list", "x").Err())
	require.NoError(t, e.client.Set(ctx, e.prefix+":lock", "task-1", time.Minute).Err())
	locks, err := mw.Locks(ctx, 10)
	require.NoError(t, err)
	require.Len(t, locks, 1)
	require.Equal(t, e.prefix+":lock", locks[0].Key)
	require.Equal(t, "task-1", locks[0].HolderTaskID)
}

// queued counts the tasks waiting on b's default queue.
func queued(t *testing.T, b *broker.InMemory) int {
	t.Helper()
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	return int(s.Pending + s.Scheduled)
}

// silentServer accepts connections and never answers, until the test ends.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { _, _ = io.Copy(io.Discard, c) })
			t.Cleanup(func() { c.Close() })
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done; conns.Wait() })
	return ln.Addr().String()
}

// A middleware made from a URL takes its locks within the caller's
// deadline: a Redis that never answers fails the kick when the caller's
// context ends, not at go-redis's own read timeout (3 s).
func TestLockFromAURLHonoursTheCallersDeadline(t *testing.T) {
	mw, err := dedup.New("redis://"+silentServer(t), dedup.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = mw.Shutdown(context.Background()) })
	b := broker.NewInMemory()
	b.WithMiddlewares(mw)
	tk := welcome(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second, "bounded by the caller's deadline")
	require.Zero(t, queued(t, b), "nothing sent unlocked")
}
