package dedup

import (
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// Scope decides which tasks can be duplicates of each other.
type Scope int

const (
	// ScopeGlobal: one fingerprint is one lock, whatever queue the task goes
	// to. Keys are prefix:fingerprint, as in Python's taskiq-deduplication,
	// so Go and Python producers deduplicate against each other once
	// self-healing is off (see WithSelfHealing). With self-healing on, a
	// holder on another queue is not seen and its lock is taken over.
	ScopeGlobal Scope = iota
	// ScopeQueue: the same task sent to two queues holds two locks. Keys are
	// prefix:queue:fingerprint (not shared with Python producers).
	ScopeQueue
)

// Option configures the middleware made by New.
type Option func(*config)

type config struct {
	defaultDedup      bool
	defaultTTL        time.Duration
	keyPrefix         string
	startupRetries    int
	startupDelay      time.Duration
	heartbeat         bool
	heartbeatInterval time.Duration // 0: a third of the default TTL, at least 1 s
	failOpen          bool
	graceTTL          time.Duration
	scope             Scope
	selfHeal          bool
	client            redis.UniversalClient
	logger            *slog.Logger
}

func defaults() config {
	return config{
		defaultDedup:   true,
		defaultTTL:     300 * time.Second,
		keyPrefix:      "taskiq:deduplication",
		startupRetries: 3,
		startupDelay:   time.Second,
		heartbeat:      true,
		graceTTL:       10 * time.Second,
		scope:          ScopeGlobal,
		selfHeal:       true,
	}
}

// WithDefaultDeduplication sets whether tasks are deduplicated unless their
// deduplication label says otherwise. Default true; false makes
// deduplication opt-in per task.
func WithDefaultDeduplication(on bool) Option { return func(c *config) { c.defaultDedup = on } }

// WithDefaultTTL sets the lock TTL for tasks without a deduplication_ttl
// label. Default 300 s.
func WithDefaultTTL(d time.Duration) Option { return func(c *config) { c.defaultTTL = d } }

// WithKeyPrefix sets the prefix of every lock key. Default
// "taskiq:deduplication", as in the Python package.
func WithKeyPrefix(p string) Option { return func(c *config) { c.keyPrefix = p } }

// WithStartupRetries sets how many times Startup retries its Redis ping
// after the first failure, waiting baseDelay, then twice that, and so on.
// Default 3 retries from 1 s.
func WithStartupRetries(n int, baseDelay time.Duration) Option {
	return func(c *config) { c.startupRetries, c.startupDelay = n, baseDelay }
}

// WithHeartbeat turns the heartbeat on or off. While on (the default), the
// locks of running tasks are extended every interval, so a task may run
// longer than its TTL; the TTL then only bounds how long a crashed worker's
// lock outlives it. interval 0 means a third of the default TTL, at least
// 1 s. While off, a running task's lock is set once when the task starts
// and never renewed: a task running longer than that loses its lock, and a
// duplicate can be queued meanwhile.
func WithHeartbeat(on bool, interval time.Duration) Option {
	return func(c *config) { c.heartbeat, c.heartbeatInterval = on, interval }
}

// WithFailOpen sets what a Redis error while taking a lock does: by default
// (false) the send fails; with true the task is sent without a lock and a
// warning is logged. Where the lock and the queue share one Redis the send
// fails either way, since the queue is down too.
func WithFailOpen(on bool) Option { return func(c *config) { c.failOpen = on } }

// WithGraceTTL sets the TTL a lock is first taken with where it cannot be
// taken in the broker's enqueue script (separate Redis, Redis Cluster): if
// the producer dies between the lock and the send, the fingerprint is free
// again after this. Default 10 s.
func WithGraceTTL(d time.Duration) Option { return func(c *config) { c.graceTTL = d } }

// WithScope sets the deduplication scope. Default ScopeGlobal.
func WithScope(s Scope) Option { return func(c *config) { c.scope = s } }

// WithSelfHealing sets whether a lock whose holder task exists nowhere on
// the queue the new task goes to (not pending, scheduled, in flight or
// awaiting a retry) is taken over by the next Kiq instead of blocking it
// until its TTL ends. Default true. Only holders with ids Kiq generated
// (broker.IsGeneratedTaskID) are taken over: a lock held under an id given
// WithTaskID, or by a Python Taskiq producer (its ids are UUIDv4), is
// respected until its TTL ends, since Kiq cannot look for those tasks. A
// lock with no more than the grace TTL left is never taken over (it may be
// a send under way on the grace path, and it ends soon anyway), nor one
// without a TTL.
//
// Turn it off where tasks the broker cannot see hold locks under ids Kiq
// generated: one task kicked to several queues under ScopeGlobal, or Kiq
// producers on another broker prefix sharing the lock Redis.
func WithSelfHealing(on bool) Option { return func(c *config) { c.selfHeal = on } }

// WithClient makes the middleware use an existing go-redis client instead of
// connecting to the URL given to New (which may then be ""). The client is
// not closed by Shutdown.
func WithClient(c redis.UniversalClient) Option { return func(cfg *config) { cfg.client = c } }

// WithLogger sets the logger for warnings (duplicates, lost heartbeats,
// Redis errors after the send). Default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }
