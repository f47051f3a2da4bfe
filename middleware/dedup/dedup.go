// Package dedup is the Redis deduplication middleware: a task whose
// fingerprint (or explicit key) is locked is not sent again, and Kiq returns
// a *DuplicateTaskError instead. It mirrors Python's taskiq-deduplication
// (same labels, options, defaults and lock keys) and goes past it: the lock
// is taken in the broker's enqueue script where lock and queue share a Redis,
// released at once when a send fails, kept across retries, extended by a
// heartbeat while the task runs, and taken over when its holder no longer
// exists.
//
// See docs/deduplication.md for the guarantees and their limits.
package dedup

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/batch"
	"github.com/kiq-go/kiq/middleware"
	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lua/acquire.lua
	acquireLua string
	//go:embed lua/takeover.lua
	takeoverLua string
	//go:embed lua/extend.lua
	extendLua string
	//go:embed lua/own.lua
	ownLua string
	//go:embed lua/release.lua
	releaseLua string

	acquireScript  = redis.NewScript(acquireLua)
	takeoverScript = redis.NewScript(takeoverLua)
	extendScript   = redis.NewScript(extendLua)
	ownScript      = redis.NewScript(ownLua)
	releaseScript  = redis.NewScript(releaseLua)
)

// LabelLock is the label the middleware sets on a message it locked: the
// lock's key, so the worker side finds the lock without fingerprinting
// again.
const LabelLock = "deduplication_lock"

// Middleware is the Redis deduplication middleware (Taskiq's
// RedisDeduplicationMiddleware). Make one with New and register it with the
// broker's WithMiddlewares. It is safe for concurrent use.
type Middleware struct {
	middleware.Base

	cfg        config
	client     redis.UniversalClient
	calls      *batch.Pipeline // coalesces concurrent lock calls into pipelines
	ownsClient bool
	log        *slog.Logger
	stats      counters

	mu      sync.Mutex
	brokers []broker.Broker
	atomic  bool                 // every broker takes the lock in its enqueue script
	running map[string]*heldLock // lock key -> lock of a running task
	stop    context.CancelFunc   // stops the heartbeat
	done    chan struct{}        // closed when the heartbeat ended

	// The callbacks of the locks the broker takes and releases, made once
	// rather than per task.
	held      func(msg *broker.Message, holder string) error
	takenOver func(msg *broker.Message, holder string)
	released  func()
}

type heldLock struct {
	taskID string
	ttl    time.Duration
}

// New returns the middleware, connected (lazily: no I/O happens here) to the
// Redis at url, or to the client given WithClient. A malformed URL is an
// error; the error never contains the URL's password.
func New(url string, opts ...Option) (*Middleware, error) {
	cfg := defaults()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.defaultTTL <= 0 {
		return nil, fmt.Errorf("kiq: dedup: default TTL must be positive, got %v", cfg.defaultTTL)
	}
	if cfg.graceTTL <= 0 {
		return nil, fmt.Errorf("kiq: dedup: grace TTL must be positive, got %v", cfg.graceTTL)
	}
	if cfg.startupRetries < 0 || cfg.startupDelay < 0 {
		return nil, fmt.Errorf("kiq: dedup: startup retries and delay must not be negative")
	}
	m := &Middleware{cfg: cfg, log: cfg.logger, running: make(map[string]*heldLock)}
	m.held = func(msg *broker.Message, holder string) error { return m.duplicate(msg, msg.Lock.Key, holder) }
	m.takenOver = func(msg *broker.Message, holder string) { m.tookOver(msg, msg.Lock.Key, holder) }
	m.released = func() { m.stats.released.Add(1) }
	if m.log == nil {
		m.log = slog.Default()
	}
	if cfg.client != nil {
		m.client = cfg.client
		m.calls = batch.New(m.client)
		return m, nil
	}
	ropts, err := broker.ParseRedisURL(url)
	if err != nil {
		return nil, fmt.Errorf("kiq: dedup: %w", err)
	}
	m.client, m.ownsClient = redis.NewClient(ropts), true
	m.calls = batch.New(m.client)
	return m, nil
}

// Client returns the Redis client holding the locks.
func (m *Middleware) Client() redis.UniversalClient { return m.client }

// SetBroker is called by the broker's WithMiddlewares. Where every broker the
// middleware is registered on can take the lock in its enqueue script, locks
// are taken that way (one round trip, atomic with the send); otherwise with
// the grace TTL before the send.
func (m *Middleware) SetBroker(b broker.Broker) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.brokers = append(m.brokers, b)
	m.atomic = true
	for _, b := range m.brokers {
		if lb, ok := b.(broker.LockingBroker); !ok || !lb.LocksAtomically(m.client) {
			m.atomic = false
		}
	}
}

func (m *Middleware) firstBroker() broker.Broker {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.brokers) == 0 {
		return nil
	}
	return m.brokers[0]
}

func (m *Middleware) formatter() broker.Formatter {
	if b := m.firstBroker(); b != nil {
		return b.Formatter()
	}
	return broker.Msgpack
}

func (m *Middleware) defaultQueue() string {
	if b, ok := m.firstBroker().(interface{ QueueName() string }); ok {
		return b.QueueName()
	}
	return broker.DefaultQueue
}

func (m *Middleware) lockAtomically() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.atomic
}

// ttl returns the lock TTL of msg: its deduplication_ttl label or the
// default.
func (m *Middleware) ttl(msg *broker.Message) time.Duration {
	if d, ok := msg.Labels.Duration(broker.LabelDeduplicationTTL); ok && d > 0 {
		return d
	}
	return m.cfg.defaultTTL
}

// sendTTL is the TTL a lock gets when its task is sent: the task's TTL
// counted from when it may first run, so a delayed task does not lose its
// lock while it waits.
func (m *Middleware) sendTTL(msg *broker.Message) time.Duration {
	return addTTL(m.ttl(msg), msg.Delay())
}

// addTTL adds two durations that are not negative, saturating instead of
// wrapping: a delay of centuries (a saturated label) keeps its lock.
func addTTL(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// duplicate logs the rejection and returns its error.
func (m *Middleware) duplicate(msg *broker.Message, key, holder string) error {
	m.stats.duplicates.Add(1)
	m.log.Warn("kiq: duplicate task not sent",
		slog.String("task_name", msg.TaskName), slog.String("key", key), slog.String("holder_task_id", holder))
	return &DuplicateTaskError{TaskName: msg.TaskName, Key: key, HolderTaskID: holder}
}

// PreSend takes the task's lock, or has the broker take it in its enqueue
// script. A held lock is a *DuplicateTaskError.
func (m *Middleware) PreSend(ctx context.Context, msg *broker.Message) error {
	key, on, err := m.lockKey(msg)
	if err != nil || !on {
		return err
	}
	if msg.Labels == nil {
		msg.Labels = broker.Labels{}
	}
	msg.Labels[LabelLock] = key
	if m.lockAtomically() {
		msg.Lock = &broker.Lock{
			Client:    m.client,
			Key:       key,
			TTL:       m.sendTTL(msg),
			Held:      m.held,
			TakeOver:  m.cfg.selfHeal,
			Grace:     m.cfg.graceTTL,
			TakenOver: m.takenOver,
		}
		m.stats.taken.Add(1) // counted back by OnSendError if the send fails
		return nil
	}
	return m.acquire(ctx, msg, key)
}

// acquire takes the lock with the grace TTL before the send; PostSend
// extends it to the full TTL.
//
// A held lock is taken over (with self-healing on) only when it had more
// than the grace TTL left when acquire.lua found it, and its holder then
// exists nowhere on the queue. The first condition makes the second sound:
// a lock on this path lives longer than the grace only once its producer
// extended it, which happens after its send landed, so the existence check
// that follows cannot miss a send still under way. (A check of the TTL
// after the existence check, as takeover.lua also makes, cannot tell a
// send that landed and was extended meanwhile from a vanished holder.)
func (m *Middleware) acquire(ctx context.Context, msg *broker.Message, key string) error {
	res, err := m.calls.Script(ctx, acquireScript, []string{key}, msg.TaskID, m.cfg.graceTTL.Milliseconds()).Slice()
	if err != nil {
		return m.acquireFailed(msg, key, err)
	}
	if res[0].(int64) == 1 {
		m.stats.taken.Add(1)
		return nil
	}
	holder, _ := res[1].(string)
	var pttl int64
	if len(res) > 2 {
		pttl, _ = res[2].(int64)
	}
	if m.cfg.selfHeal && pttl > m.cfg.graceTTL.Milliseconds() && m.holderGone(ctx, msg, holder) {
		ok, err := m.calls.Script(ctx, takeoverScript, []string{key}, holder, msg.TaskID, m.cfg.graceTTL.Milliseconds()).Int()
		if err != nil {
			return m.acquireFailed(msg, key, err)
		}
		if ok == 1 {
			m.stats.taken.Add(1)
			m.tookOver(msg, key, holder)
			return nil
		}
	}
	delete(msg.Labels, LabelLock)
	return m.duplicate(msg, key, holder)
}

// tookOver counts and logs a lock taken over from a holder that no longer
// existed.
func (m *Middleware) tookOver(msg *broker.Message, key, holder string) {
	m.stats.takenOver.Add(1)
	m.log.Warn("kiq: took over a deduplication lock whose holder no longer exists",
		slog.String("task_name", msg.TaskName), slog.String("key", key), slog.String("stale_holder_task_id", holder))
}

// holderGone reports whether the broker knows for sure that the holder task
// exists nowhere in msg's queue.
func (m *Middleware) holderGone(ctx context.Context, msg *broker.Message, holder string) bool {
	b, ok := m.firstBroker().(broker.TaskLocator)
	if !ok || !broker.IsGeneratedTaskID(holder) {
		return false // a caller's or another producer's id: not Kiq's to look for
	}
	exists, err := b.TaskExists(ctx, msg.Queue(m.defaultQueue()), holder)
	return err == nil && !exists
}

func (m *Middleware) acquireFailed(msg *broker.Message, key string, err error) error {
	m.stats.errors.Add(1)
	delete(msg.Labels, LabelLock)
	if m.cfg.failOpen {
		m.log.Warn("kiq: deduplication lock not taken, sending unlocked (fail-open)",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.Any("error", err))
		return nil
	}
	return fmt.Errorf("kiq: dedup: take lock %s: %w", key, err)
}

// PostSend extends a lock taken with the grace TTL to the full TTL (plus
// the task's delay). A lock found gone or held by another task (the send
// outlasted the grace TTL) is logged and counted in Stats.GraceLocksLost:
// the task was sent, unprotected.
func (m *Middleware) PostSend(ctx context.Context, msg *broker.Message) {
	key, ok := msg.Labels.String(LabelLock)
	if !ok || msg.Lock != nil {
		return
	}
	// The task is sent: a caller that gives up now, or whose deadline
	// passes, must not leave it with only the grace TTL. The extend runs
	// without the caller's cancellation and deadline, for at most the grace
	// TTL: past it the lock is gone anyway.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.graceTTL)
	defer cancel()
	n, err := m.calls.Script(ctx, extendScript, []string{key}, msg.TaskID, m.sendTTL(msg).Milliseconds()).Int()
	switch {
	case err != nil:
		m.stats.errors.Add(1)
		m.log.Warn("kiq: could not extend a deduplication lock after the send; it expires with the grace TTL",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.Any("error", err))
	case n == 0:
		m.stats.graceLost.Add(1)
		m.log.Warn("kiq: deduplication lock lost before the send completed (the send outlasted the grace TTL); the task was sent unprotected",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.String("task_id", msg.TaskID))
	}
}

// OnSendError releases the lock at once when the send failed. A send cut
// by its context or a network timeout may have reached Redis all the same:
// its lock is kept and expires with the grace TTL, so that a task queued
// after all is not joined by a duplicate. A lock the broker was to take in
// its enqueue script is left alone: the script either did not run, or ran
// and queued the task.
func (m *Middleware) OnSendError(ctx context.Context, msg *broker.Message, err error) {
	key, ok := msg.Labels.String(LabelLock)
	if !ok {
		return
	}
	if msg.Lock != nil {
		m.stats.taken.Add(-1)
		return
	}
	if mayHaveBeenSent(err) {
		m.log.Warn("kiq: a send was cut short and may have reached the broker; its deduplication lock expires with the grace TTL",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.String("task_id", msg.TaskID), slog.Any("error", err))
		return
	}
	m.release(ctx, msg.TaskName, key, msg.TaskID)
}

// mayHaveBeenSent reports whether err leaves a send's outcome unknown: the
// caller's context ended, or the connection timed out, while the message
// may have been written.
func mayHaveBeenSent(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.As(err, &ne) && ne.Timeout()
}

func (m *Middleware) release(ctx context.Context, taskName, key, taskID string) {
	n, err := m.calls.Script(context.WithoutCancel(ctx), releaseScript, []string{key}, taskID).Int()
	if err != nil {
		m.stats.errors.Add(1)
		m.log.Warn("kiq: could not release a deduplication lock; it expires with its TTL",
			slog.String("task_name", taskName), slog.String("key", key), slog.Any("error", err))
		return
	}
	if n == 1 {
		m.stats.released.Add(1)
	}
}

// runningTTL is the TTL of a running task's lock: its own TTL, but long
// enough that the heartbeat renews it in time and that it outlives the
// broker's redelivery of a crashed worker's tasks, so no duplicate gets in
// while the task is still owed: the redelivery timeout, counted from the
// last renewal (up to one interval before the crash), plus one more
// interval for the redelivered task to start and check its lock.
func (m *Middleware) runningTTL(msg *broker.Message) time.Duration {
	ttl := m.ttl(msg)
	if m.cfg.heartbeat {
		ttl = max(ttl, 3*m.heartbeatInterval())
	}
	if r, ok := m.firstBroker().(broker.Redeliverer); ok {
		ttl = max(ttl, r.RedeliveryTimeout()+2*m.heartbeatInterval())
	}
	return ttl
}

func (m *Middleware) heartbeatInterval() time.Duration {
	if m.cfg.heartbeatInterval > 0 {
		return m.cfg.heartbeatInterval
	}
	return max(m.cfg.defaultTTL/3, time.Second)
}

// PreExecute makes sure the task holds its lock while it runs: a lock that
// expired (a crashed worker's task delivered again) is taken again, and the
// heartbeat keeps it. A lock held by another task is logged, and the task
// runs anyway: a delivered task is never dropped.
func (m *Middleware) PreExecute(ctx context.Context, msg *broker.Message) (context.Context, error) {
	key, ok := msg.Labels.String(LabelLock)
	if !ok {
		return ctx, nil
	}
	ttl := m.runningTTL(msg)
	if m.surelyHeld(msg) {
		m.track(key, msg.TaskID, ttl)
		return ctx, nil
	}
	res, err := m.calls.Script(ctx, ownScript, []string{key}, msg.TaskID, ttl.Milliseconds()).Slice()
	switch {
	case err != nil:
		m.stats.errors.Add(1)
		m.log.Warn("kiq: could not check a deduplication lock before the task; running it",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.Any("error", err))
	case res[0].(int64) == 2:
		m.stats.taken.Add(1)
		m.log.Info("kiq: deduplication lock taken again by a redelivered task",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.String("task_id", msg.TaskID))
	case res[0].(int64) == 0:
		holder, _ := res[1].(string)
		m.log.Warn("kiq: deduplication lock held by another task while this one runs",
			slog.String("task_name", msg.TaskName), slog.String("key", key), slog.String("holder_task_id", holder))
		return ctx, nil
	}
	m.track(key, msg.TaskID, ttl)
	return ctx, nil
}

// surelyHeld reports whether msg's lock is certainly still held by its task
// without asking Redis: on the atomic path (where the enqueue script took
// the lock with its full TTL, or did not send the task), a first attempt,
// kicked so recently that the TTL the lock was taken with outlasts both the
// next heartbeat and the broker's redelivery of a crashed worker's tasks,
// with 5 s to spare for clocks. No other task can have taken such a lock: a
// takeover needs the holder gone from its queue, and a delivered task is in
// flight there. Everything else (the grace path, where the extend after the
// send may have failed and left only the grace TTL; retries, old or
// redelivered tasks) is checked, and re-taken if free.
func (m *Middleware) surelyHeld(msg *broker.Message) bool {
	if !m.cfg.heartbeat || msg.Attempt != 0 || msg.EnqueuedAt == 0 || !m.lockAtomically() {
		return false
	}
	need := m.heartbeatInterval() + 5*time.Second
	if r, ok := m.firstBroker().(broker.Redeliverer); ok {
		need = max(need, r.RedeliveryTimeout()+5*time.Second)
	}
	elapsed := time.Since(time.UnixMilli(msg.EnqueuedAt))
	return elapsed >= 0 && m.sendTTL(msg)-elapsed > need
}

// track hands a running task's lock to the heartbeat.
func (m *Middleware) track(key, taskID string, ttl time.Duration) {
	if !m.cfg.heartbeat {
		return
	}
	m.mu.Lock()
	m.running[key] = &heldLock{taskID: taskID, ttl: ttl}
	m.mu.Unlock()
}

// PostExecute releases the lock when the task completed or finally failed:
// where the broker shares the lock's Redis, in the same script that settles
// the delivery (see broker.Message.Unlock), else at once. A task that will
// be retried keeps its lock, extended to cover the retry's delay; so does a
// task the worker hands back because its shutdown interrupted it
// (res.HandedBack), extended to the running TTL: the task still owes its
// run.
func (m *Middleware) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	key, ok := msg.Labels.String(LabelLock)
	if !ok {
		return
	}
	m.mu.Lock()
	if h := m.running[key]; h != nil && h.taskID == msg.TaskID {
		delete(m.running, key)
	}
	m.mu.Unlock()
	switch {
	case res.HandedBack:
		m.keep(ctx, msg, key, m.runningTTL(msg), "kiq: could not keep the deduplication lock of a task handed back at shutdown")
		return
	case res.Err != nil && res.Retry:
		m.keep(ctx, msg, key, addTTL(max(res.RetryDelay, 0), m.runningTTL(msg)), "kiq: could not keep a deduplication lock for a retry")
		return
	}
	if m.lockAtomically() {
		// The broker releases it in the script that settles the delivery,
		// with no round trip of its own, and reports the release; nothing
		// is released if the delivery is handed back instead.
		msg.Unlock = &broker.Lock{Client: m.client, Key: key, Released: m.released}
		return
	}
	m.release(ctx, msg.TaskName, key, msg.TaskID)
}

// keep extends a lock its task still owns to ttl, logging a failure as warn.
func (m *Middleware) keep(ctx context.Context, msg *broker.Message, key string, ttl time.Duration, warn string) {
	if err := m.calls.Script(context.WithoutCancel(ctx), extendScript, []string{key}, msg.TaskID, ttl.Milliseconds()).Err(); err != nil {
		m.stats.errors.Add(1)
		m.log.Warn(warn, slog.String("task_name", msg.TaskName), slog.String("key", key), slog.Any("error", err))
	}
}

// Startup pings Redis, retrying with exponential backoff, warns when Redis
// may evict lock keys, and starts the heartbeat.
func (m *Middleware) Startup(ctx context.Context) error {
	delay := m.cfg.startupDelay
	var err error
	for attempt := 0; ; attempt++ {
		if err = m.client.Ping(ctx).Err(); err == nil {
			break
		}
		if attempt >= m.cfg.startupRetries {
			return fmt.Errorf("kiq: dedup: Redis unreachable after %d attempts: %w", attempt+1, err)
		}
		m.log.Warn("kiq: dedup: Redis ping failed, retrying", slog.Duration("in", delay), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
	m.checkEviction(ctx)
	if m.cfg.heartbeat {
		m.startHeartbeat()
	}
	return nil
}

// checkEviction warns when Redis's maxmemory-policy could evict lock keys.
// Every lock key has a TTL, so volatile-* policies may evict them as well
// as allkeys-* ones: only noeviction is safe.
func (m *Middleware) checkEviction(ctx context.Context) {
	cfg, err := m.client.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		m.log.Debug("kiq: dedup: cannot read maxmemory-policy", slog.Any("error", err))
		return
	}
	if policy := cfg["maxmemory-policy"]; policy != "" && policy != "noeviction" {
		m.log.Warn("kiq: dedup: Redis may evict deduplication locks under memory pressure, letting duplicates through; set maxmemory-policy noeviction",
			slog.String("maxmemory-policy", policy))
	}
}

// Shutdown stops the heartbeat and closes the Redis client if New opened it.
func (m *Middleware) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	stop, done := m.stop, m.done
	m.stop, m.done = nil, nil
	m.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	if m.ownsClient {
		return m.client.Close()
	}
	return nil
}

// Stats are the middleware's counters since it was made.
type Stats struct {
	// LocksTaken counts locks taken: at send, and again by redelivered tasks.
	LocksTaken int64
	// Duplicates counts tasks rejected as duplicates.
	Duplicates int64
	// LocksReleased counts locks deleted because their task ended: by the
	// middleware's compare-and-delete, or by the broker's ack or
	// dead-letter script (which reports it), each time only when the lock
	// was still the task's; plus locks deleted by ForceRelease. A lock kept
	// for a retry or a hand-back, or found gone or taken, is not counted.
	LocksReleased int64
	// LocksTakenOver counts locks taken from a holder that no longer existed.
	LocksTakenOver int64
	// HeartbeatsLost counts running tasks whose lock was found gone or held
	// by another task when the heartbeat came to extend it.
	HeartbeatsLost int64
	// GraceLocksLost counts tasks sent on the grace path whose lock was
	// found gone or held by another task when PostSend came to extend it
	// (the send outlasted the grace TTL): they went out unprotected.
	GraceLocksLost int64
	// RedisErrors counts Redis errors the middleware met.
	RedisErrors int64
}

type counters struct {
	taken, duplicates, released, takenOver, heartbeatsLost, graceLost, errors atomic.Int64
}

// Stats returns the current counters.
func (m *Middleware) Stats() Stats {
	return Stats{
		LocksTaken:     m.stats.taken.Load(),
		Duplicates:     m.stats.duplicates.Load(),
		LocksReleased:  m.stats.released.Load(),
		LocksTakenOver: m.stats.takenOver.Load(),
		HeartbeatsLost: m.stats.heartbeatsLost.Load(),
		GraceLocksLost: m.stats.graceLost.Load(),
		RedisErrors:    m.stats.errors.Load(),
	}
}
