package dedup_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/internal/testlog"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// split is a producer (or worker) whose queue and locks live in different
// Redis databases, so its locks take the grace path: SET NX with the grace
// TTL before the send, extended after it.
type split struct {
	b      *broker.ListQueue
	mw     *dedup.Middleware
	queue  *redis.Client // the queue's Redis
	locks  *redis.Client // the locks' Redis
	prefix string        // the lock key prefix
	logs   *testlog.Buffer
}

// lockDB returns a client of database 1 of srv: another Redis as far as
// LocksAtomically is concerned.
func lockDB(t *testing.T, srv *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: 1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newSplit returns a split process on the shared server: the queue in
// database 0 under queuePrefix, locks in locks under lockPrefix. Processes
// made with the same prefixes and lock Redis share queue and locks, each
// with clients of its own.
func newSplit(t *testing.T, queuePrefix, lockPrefix string, locks *redis.Client, opts ...dedup.Option) *split {
	t.Helper()
	s := &split{queue: redistest.Shared(t).Client(t), locks: locks, prefix: lockPrefix, logs: &testlog.Buffer{}}
	var err error
	s.b, err = broker.NewListQueue("", broker.WithClient(s.queue), broker.WithKeyPrefix(queuePrefix))
	require.NoError(t, err)
	s.mw, err = dedup.New("", append([]dedup.Option{dedup.WithClient(locks), dedup.WithKeyPrefix(lockPrefix),
		dedup.WithLogger(slog.New(slog.NewTextHandler(s.logs, nil)))}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.mw.Shutdown(context.Background())) })
	s.b.WithMiddlewares(s.mw)
	require.False(t, s.b.LocksAtomically(locks), "locks in another Redis: the grace path")
	return s
}

// splitQueue returns one split process with prefixes of the test's own.
func splitQueue(t *testing.T, opts ...dedup.Option) *split {
	p := redistest.Prefix(t)
	return newSplit(t, p, p+":dedup", lockDB(t, redistest.Shared(t)), opts...)
}

func (s *split) key(fp string) string { return s.prefix + ":" + fp }

func (s *split) pending(t *testing.T) int64 {
	t.Helper()
	st, err := s.b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	return st.Pending + st.Scheduled
}

// 200 concurrent Kiq calls with one fingerprint, on a ListQueue whose locks
// live in another Redis, from one process or two: exactly one task is
// queued each round, and it holds the lock.
func TestConcurrentKicksWithLocksInAnotherRedis(t *testing.T) {
	for _, tc := range []struct {
		name      string
		processes int
		locks     func(t *testing.T) func() *redis.Client
	}{
		{"another database, one process", 1, func(t *testing.T) func() *redis.Client {
			return func() *redis.Client { return lockDB(t, redistest.Shared(t)) }
		}},
		{"another database, two processes", 2, func(t *testing.T) func() *redis.Client {
			return func() *redis.Client { return lockDB(t, redistest.Shared(t)) }
		}},
		{"another server, two processes", 2, func(t *testing.T) func() *redis.Client {
			srv := redistest.Start(t)
			return func() *redis.Client { return srv.Client(t) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := redistest.Prefix(t)
			newLocks := tc.locks(t)
			var procs []*split
			var tasks []*task.Task[WelcomeArgs]
			for range tc.processes {
				p := newSplit(t, prefix, prefix+":dedup", newLocks())
				procs = append(procs, p)
				tasks = append(tasks, welcome(t, p.b))
			}
			ctx := context.Background()
			for round := range 5 {
				var wg sync.WaitGroup
				var mu sync.Mutex
				var winners []string
				var dups atomic.Int64
				for i := range 200 {
					wg.Go(func() {
						h, err := tasks[i%len(tasks)].Kiq(ctx, WelcomeArgs{UserID: round, Locale: "en"})
						switch {
						case err == nil:
							mu.Lock()
							winners = append(winners, h.TaskID())
							mu.Unlock()
						case errors.Is(err, dedup.ErrDuplicateTask):
							dups.Add(1)
						default:
							t.Errorf("kick: %v", err)
						}
					})
				}
				wg.Wait()
				require.Len(t, winners, 1, "round %d", round)
				require.Equal(t, int64(199), dups.Load())
				require.Equal(t, int64(round+1), procs[0].pending(t), "exactly one task queued in round %d", round)
				keys, err := procs[0].locks.Keys(ctx, procs[0].prefix+":*").Result()
				require.NoError(t, err)
				require.Len(t, keys, round+1)
			}
			var taken, lost int64
			for _, p := range procs {
				taken += p.mw.Stats().LocksTaken
				lost += p.mw.Stats().LocksTakenOver
			}
			require.Equal(t, int64(5), taken)
			require.Zero(t, lost)
		})
	}
}

// roundTripHook runs after once the first command that match accepts.
type roundTripHook struct {
	match func(redis.Cmder) bool
	after func()
	once  sync.Once
}

func (h *roundTripHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *roundTripHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if h.match(cmd) {
			h.once.Do(h.after)
		}
		return err
	}
}
func (h *roundTripHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// The race behind B1, played in order: producer A took the lock with the
// grace TTL; producer B finds it held and looks for A's task, which is not
// on the queue yet; A's send then lands and A extends its lock. B must not
// take the lock over: A's task is queued.
func TestGracePathTakeoverCannotMissASendUnderWay(t *testing.T) {
	s := splitQueue(t)
	tk := welcome(t, s.b)
	ctx := context.Background()
	key := s.key(welcomeFingerprint)
	taskA := broker.NewTaskID()
	// A's lock, as acquire.lua took it: the grace TTL (10 s).
	require.NoError(t, s.locks.Set(ctx, key, taskA, 10*time.Second).Err())
	a, err := broker.NewListQueue("", broker.WithClient(redistest.Shared(t).Client(t)), broker.WithKeyPrefix(s.b.KeyPrefix()))
	require.NoError(t, err)
	hook := &roundTripHook{
		match: func(c redis.Cmder) bool { return c.Name() == "hexists" },
		after: func() { // A's send lands, then A's PostSend extends its lock
			require.NoError(t, a.Kick(ctx, &broker.Message{TaskID: taskA, TaskName: "send_welcome_email"}))
			require.NoError(t, s.locks.PExpire(ctx, key, 300*time.Second).Err())
		},
	}
	s.queue.AddHook(hook)
	_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	hook.once.Do(hook.after) // A's send lands now if B never looked for it
	var dup *dedup.DuplicateTaskError
	require.ErrorAs(t, err, &dup, "A's lock was within its grace when B found it: never taken over")
	require.Equal(t, taskA, dup.HolderTaskID)
	require.Equal(t, taskA, s.locks.Get(ctx, key).Val())
	require.Equal(t, int64(1), s.pending(t), "only A's task")
	require.Zero(t, s.mw.Stats().LocksTakenOver)

	// Past its grace, with its task gone, the lock is stale: taken over.
	c, err := s.b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, c.Ack(ctx, ds...))
	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	require.Equal(t, h.TaskID(), s.locks.Get(ctx, key).Val())
	require.Equal(t, int64(1), s.mw.Stats().LocksTakenOver)
	require.Contains(t, s.logs.String(), "stale_holder_task_id="+taskA)
}

// observer is a middleware registered after dedup: its PreSend runs between
// the lock and the send, its PostSend between the send and dedup's, its
// PreExecute after dedup's.
type observer struct {
	middleware.Base
	preSend    func(ctx context.Context, msg *broker.Message) error
	postSend   func()
	preExecute func(ctx context.Context) context.Context
}

func (o *observer) PreExecute(ctx context.Context, _ *broker.Message) (context.Context, error) {
	if o.preExecute == nil {
		return ctx, nil
	}
	return o.preExecute(ctx), nil
}

func (o *observer) PreSend(ctx context.Context, msg *broker.Message) error {
	if o.preSend == nil {
		return nil
	}
	return o.preSend(ctx, msg)
}

func (o *observer) PostSend(context.Context, *broker.Message) {
	if o.postSend != nil {
		o.postSend()
	}
}

// A caller that gives up once its task is sent, or whose deadline passes
// then, does not leave the task with only the grace TTL: the extend after
// the send runs without the caller's cancellation and deadline.
func TestGracePathExtendsTheLockOfACallerThatGaveUp(t *testing.T) {
	for _, how := range []string{"cancelled", "deadline"} {
		t.Run(how, func(t *testing.T) {
			s := splitQueue(t)
			key := s.key(welcomeFingerprint)
			ctx, cancel := context.WithCancel(context.Background())
			giveUp := cancel
			if how == "deadline" {
				ctx, cancel = context.WithTimeout(context.Background(), time.Second)
				giveUp = func() { <-ctx.Done() }
			}
			defer cancel()
			s.b.WithMiddlewares(&observer{postSend: giveUp})
			h, err := welcome(t, s.b).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			require.NoError(t, err)
			require.Error(t, ctx.Err(), "the caller gave up after the send")
			bg := context.Background()
			require.Equal(t, h.TaskID(), s.locks.Get(bg, key).Val())
			require.InDelta(t, 300*time.Second, s.locks.PTTL(bg, key).Val(), float64(2*time.Second), "the full TTL")
		})
	}
}

// On the grace path the lock has the grace TTL until the send, then the
// full TTL.
func TestGracePathExtendsTheLockAfterTheSend(t *testing.T) {
	s := splitQueue(t)
	key := s.key(welcomeFingerprint)
	var before time.Duration
	s.b.WithMiddlewares(&observer{preSend: func(ctx context.Context, msg *broker.Message) error {
		before = s.locks.PTTL(ctx, key).Val()
		return nil
	}})
	h, err := welcome(t, s.b).Kiq(context.Background(), WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	require.Greater(t, before, time.Duration(0))
	require.LessOrEqual(t, before, 10*time.Second, "before the send: the grace TTL")
	require.Equal(t, h.TaskID(), s.locks.Get(context.Background(), key).Val())
	require.InDelta(t, 300*time.Second, s.locks.PTTL(context.Background(), key).Val(), float64(2*time.Second), "after: the full TTL")
	require.Zero(t, s.mw.Stats().GraceLocksLost)
}

// A producer that took its lock and never sent (it hung or died between
// the two) blocks the fingerprint only for the grace TTL.
func TestGracePathFreesALockNeverSentAfterTheGraceTTL(t *testing.T) {
	p := redistest.Prefix(t)
	locks := lockDB(t, redistest.Shared(t))
	const grace = 300 * time.Millisecond
	stuck := newSplit(t, p, p+":dedup", locks, dedup.WithGraceTTL(grace))
	hang := make(chan struct{})
	locked := make(chan struct{})
	stuck.b.WithMiddlewares(&observer{preSend: func(ctx context.Context, msg *broker.Message) error {
		close(locked)
		<-hang // never sends while the test looks
		return errors.New("gave up")
	}})
	other := newSplit(t, p, p+":dedup", locks, dedup.WithGraceTTL(grace))
	ctx := context.Background()
	stuckTask := welcome(t, stuck.b)
	stuckDone := make(chan error, 1)
	go func() {
		_, err := stuckTask.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		stuckDone <- err
	}()
	<-locked
	tk := welcome(t, other.b)
	_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask, "held while the grace TTL runs")
	time.Sleep(grace + 100*time.Millisecond)
	h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err, "free once the grace TTL passed")
	require.Equal(t, int64(1), other.pending(t))
	close(hang)
	require.Error(t, <-stuckDone)
	require.Equal(t, h.TaskID(), locks.Get(ctx, other.key(welcomeFingerprint)).Val(), "the stuck producer's failure does not release another's lock")
}

// A lock lost before PostSend could extend it (the send outlasted the
// grace TTL) is logged and counted, not silently ignored.
func TestGracePathCountsALockLostBeforeTheExtend(t *testing.T) {
	s := splitQueue(t)
	s.b.WithMiddlewares(&observer{preSend: func(ctx context.Context, msg *broker.Message) error {
		// The grace TTL runs out during a slow send.
		return s.locks.Del(ctx, s.key(welcomeFingerprint)).Err()
	}})
	_, err := welcome(t, s.b).Kiq(context.Background(), WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err, "the task was sent")
	require.Equal(t, int64(1), s.mw.Stats().GraceLocksLost)
	require.Contains(t, s.logs.String(), "lock lost before the send completed")
	require.Zero(t, s.locks.Exists(context.Background(), s.key(welcomeFingerprint)).Val(), "the extend did not resurrect it")
}

// On the grace path a starting task always checks its lock: the extend
// after the send may have failed, leaving only the grace TTL, which the
// heartbeat would not renew in time.
func TestGracePathTaskChecksItsLockBeforeRunning(t *testing.T) {
	s := splitQueue(t)
	ctx := context.Background()
	h, err := welcome(t, s.b).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	key := s.key(welcomeFingerprint)
	require.NoError(t, s.locks.PExpire(ctx, key, 2*time.Second).Err(), "as if the extend had failed")
	c, err := s.b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, h.TaskID(), ds[0].ID)
	_, err = s.mw.PreExecute(ctx, ds[0].Message)
	require.NoError(t, err)
	require.Greater(t, s.locks.PTTL(ctx, key).Val(), 290*time.Second, "renewed to the running TTL")
	s.mw.PostExecute(ctx, ds[0].Message, &middleware.Result{})
	require.NoError(t, c.Ack(ctx, ds...))
	require.Zero(t, s.locks.Exists(ctx, key).Val())
	require.Equal(t, int64(1), s.mw.Stats().LocksReleased)
}

// A task interrupted by the worker's shutdown is handed back, not settled:
// it keeps its lock (extended to the running TTL), on both paths, and the
// release is not counted.
func TestHandedBackTaskKeepsItsLock(t *testing.T) {
	for _, path := range []string{"atomic", "grace"} {
		t.Run(path, func(t *testing.T) {
			var b *broker.ListQueue
			var mw *dedup.Middleware
			var locks *redis.Client
			var key string
			if path == "atomic" {
				var prefix string
				b, mw, locks, prefix = listQueue(t)
				key = prefix + ":" + welcomeFingerprint
			} else {
				s := splitQueue(t)
				b, mw, locks, key = s.b, s.mw, s.locks, s.key(welcomeFingerprint)
			}
			started := make(chan struct{})
			tk := task.Define(b, "send_welcome_email", func(ctx context.Context, a WelcomeArgs) error {
				close(started)
				<-ctx.Done() // runs past the shutdown timeout
				return ctx.Err()
			})
			ctx := context.Background()
			h, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			require.NoError(t, err)
			w := worker.New(b, worker.Options{Concurrency: 1, ShutdownTimeout: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- w.Run(runCtx) }()
			<-started
			require.NoError(t, locks.PExpire(ctx, key, 5*time.Second).Err(), "so the keep is seen")
			stop()
			require.NoError(t, <-done)
			require.Equal(t, int64(1), w.Stats().HandedBack)

			require.Equal(t, h.TaskID(), locks.Get(ctx, key).Val(), "the lock is kept")
			require.Greater(t, locks.PTTL(ctx, key).Val(), 290*time.Second, "for the running TTL")
			_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			var dup *dedup.DuplicateTaskError
			require.ErrorAs(t, err, &dup, "the handed-back task still owes its run")
			require.Equal(t, h.TaskID(), dup.HolderTaskID)
			require.Zero(t, mw.Stats().LocksReleased)
		})
	}
}

// A task that finally fails after a deadline a middleware gave it is not
// handed back: it is dead-lettered and lets its lock go, on both paths, and
// the same task can be kicked again at once.
func TestTaskFailingPastAMiddlewaresDeadlineLetsItsLockGo(t *testing.T) {
	bothPaths(t, func(t *testing.T, b *broker.ListQueue, mw *dedup.Middleware, locks *redis.Client, prefix string) {
		b.WithMiddlewares(&observer{preExecute: func(ctx context.Context) context.Context {
			ctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond) // a deadline of its own
			context.AfterFunc(ctx, cancel)
			return ctx
		}})
		failed := make(chan struct{})
		tk := task.Define(b, "send_welcome_email", func(ctx context.Context, a WelcomeArgs) error {
			<-ctx.Done() // past the middleware's deadline
			defer close(failed)
			return errors.New("mailer down")
		})
		ctx := context.Background()
		_, err := tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err)
		key := prefix + ":" + welcomeFingerprint
		require.Equal(t, int64(1), locks.Exists(ctx, key).Val())

		w := worker.New(b, worker.Options{Concurrency: 1, Logger: slog.New(slog.DiscardHandler)})
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(runCtx) }()
		<-failed
		require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 5*time.Second, 5*time.Millisecond)
		stop()
		require.NoError(t, <-done)
		require.Zero(t, w.Stats().HandedBack)
		require.Zero(t, locks.Exists(ctx, key).Val(), "the lock went with the task")
		_, err = tk.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		require.NoError(t, err, "not a duplicate of a task that is dead")
	})
}
