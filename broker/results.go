package broker

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// TaskResult is the stored outcome of a task's final execution.
type TaskResult struct {
	// TaskID is the id of the task.
	TaskID string `msgpack:"task_id"`
	// TaskName is the name of the task.
	TaskName string `msgpack:"task_name"`
	// Value is the task's return value, encoded by the broker's Formatter;
	// empty for tasks without a result and for failures.
	Value msgpack.RawMessage `msgpack:"value,omitempty"`
	// Error is the task's error text; empty on success.
	Error string `msgpack:"error,omitempty"`
	// ErrorKind classifies Error: "error", "panic", "timeout" or
	// "bad_arguments" for a task that ran; "malformed" (the message did not
	// decode, or was too large) or "unknown_task" for one dead-lettered
	// before it could run.
	ErrorKind string `msgpack:"error_kind,omitempty"`
	// Attempt is the attempt counter of the execution that produced it.
	Attempt int `msgpack:"attempt"`
	// Duration is how long the task's handler ran, hooks excluded.
	Duration time.Duration `msgpack:"duration"`
	// FinishedAt is when the worker had the outcome, by its clock.
	FinishedAt time.Time `msgpack:"finished_at"`
}

// ErrNoResult is returned by Get for a task without a stored result (not
// finished, never kicked, or expired).
var ErrNoResult = errors.New("kiq: no result")

// ResultBackend stores task results and lets callers wait for them.
type ResultBackend interface {
	// Store keeps r for ttl (the backend's default when ttl is 0) and wakes
	// the callers waiting for it.
	Store(ctx context.Context, r *TaskResult, ttl time.Duration) error
	// Get returns the stored result of a task, or ErrNoResult.
	Get(ctx context.Context, taskID string) (*TaskResult, error)
	// Wait blocks until the task's result is stored or ctx ends, without
	// polling.
	Wait(ctx context.Context, taskID string) (*TaskResult, error)
	// Close releases the backend's connections and goroutines.
	Close() error
}

// ResultHolder is implemented by brokers that have a result backend.
type ResultHolder interface {
	// ResultBackend returns the broker's result backend, or nil.
	ResultBackend() ResultBackend
}

// DefaultResultTTL is how long results are kept unless configured otherwise.
const DefaultResultTTL = time.Hour

//go:embed lua/store_result.lua
var storeResultLua string

var storeResultScript = redis.NewScript(storeResultLua)

// RedisResults is a Redis result backend: results are msgpack-encoded under
// prefix:result:<task id> with a TTL, and their arrival is published on
// prefix:results, so Wait wakes when the result lands. One subscription per
// backend serves every waiter.
type RedisResults struct {
	client redis.UniversalClient
	prefix string
	ttl    time.Duration

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
	sub     *redis.PubSub
	subDone chan struct{}
	// subscribing is set while one Wait opens the subscription, without
	// the lock held; it is closed when that attempt ends.
	subscribing chan struct{}
}

// NewRedisResults returns a result backend on client with the given key
// prefix ("kiq" when empty) and default TTL (DefaultResultTTL when 0).
func NewRedisResults(client redis.UniversalClient, prefix string, ttl time.Duration) *RedisResults {
	if prefix == "" {
		prefix = "kiq"
	}
	if ttl <= 0 {
		ttl = DefaultResultTTL
	}
	return &RedisResults{client: client, prefix: prefix, ttl: ttl, waiters: make(map[string]map[chan struct{}]struct{})}
}

func (r *RedisResults) key(taskID string) string { return r.prefix + ":result:" + taskID }
func (r *RedisResults) channel() string          { return r.prefix + ":results" }

// Store implements ResultBackend.
func (r *RedisResults) Store(ctx context.Context, res *TaskResult, ttl time.Duration) error {
	if ttl <= 0 {
		ttl = r.ttl
	}
	raw, err := msgpack.Marshal(res)
	if err != nil {
		return fmt.Errorf("kiq: store result: %w", err)
	}
	// PX takes whole milliseconds, and refuses 0.
	ms := max(ttl.Milliseconds(), 1)
	if err := storeResultScript.Run(ctx, r.client, []string{r.key(res.TaskID)}, raw, ms, r.channel(), res.TaskID).Err(); err != nil {
		return fmt.Errorf("kiq: store result: %w", err)
	}
	return nil
}

// Get implements ResultBackend.
func (r *RedisResults) Get(ctx context.Context, taskID string) (*TaskResult, error) {
	raw, err := r.client.Get(ctx, r.key(taskID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNoResult
	}
	if err != nil {
		return nil, fmt.Errorf("kiq: get result: %w", err)
	}
	var res TaskResult
	if err := checkMsgpack(raw); err != nil {
		return nil, fmt.Errorf("%w: result: %v", ErrMalformed, err)
	}
	if err := msgpack.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("%w: result: %v", ErrMalformed, err)
	}
	return &res, nil
}

// Wait implements ResultBackend: it subscribes (once per backend) before
// reading the result, so a result stored at any moment wakes it. As a
// safety net against a notification lost to a reconnection, it reads the
// result again every 10 s.
func (r *RedisResults) Wait(ctx context.Context, taskID string) (*TaskResult, error) {
	wake, err := r.register(ctx, taskID)
	if err != nil {
		return nil, err
	}
	defer r.unregister(taskID, wake)
	safety := time.NewTicker(10 * time.Second)
	defer safety.Stop()
	for {
		res, err := r.Get(ctx, taskID)
		if !errors.Is(err, ErrNoResult) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
		case <-safety.C:
		}
	}
}

// register adds a waiter for taskID, opening the backend's subscription
// first if it is not open. The subscription is opened without the lock held,
// so that the dispatch, other waiters and Close are not stalled by its
// network round trips; concurrent first waiters wait for one attempt (each
// within its own ctx) instead of opening several. A result published
// before the waiter is added is not lost: Wait reads the result after
// register returns.
func (r *RedisResults) register(ctx context.Context, taskID string) (chan struct{}, error) {
	for {
		r.mu.Lock()
		if r.sub != nil {
			wake := r.addWaiterLocked(taskID)
			r.mu.Unlock()
			return wake, nil
		}
		if pending := r.subscribing; pending != nil {
			r.mu.Unlock()
			select {
			case <-pending:
				continue // opened (or failed): look again
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		attempt := make(chan struct{})
		r.subscribing = attempt
		r.mu.Unlock()

		sub := r.client.Subscribe(ctx, r.channel())
		_, err := sub.Receive(ctx)

		r.mu.Lock()
		r.subscribing = nil
		close(attempt)
		if err != nil {
			r.mu.Unlock()
			_ = sub.Close()
			return nil, fmt.Errorf("kiq: subscribe to results: %w", err)
		}
		r.sub, r.subDone = sub, make(chan struct{})
		go r.dispatch(sub.Channel(), r.subDone)
		wake := r.addWaiterLocked(taskID)
		r.mu.Unlock()
		return wake, nil
	}
}

func (r *RedisResults) addWaiterLocked(taskID string) chan struct{} {
	wake := make(chan struct{}, 1)
	if r.waiters[taskID] == nil {
		r.waiters[taskID] = make(map[chan struct{}]struct{})
	}
	r.waiters[taskID][wake] = struct{}{}
	return wake
}

func (r *RedisResults) unregister(taskID string, wake chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.waiters[taskID], wake)
	if len(r.waiters[taskID]) == 0 {
		delete(r.waiters, taskID)
	}
}

// dispatch wakes the waiters of each published task id.
func (r *RedisResults) dispatch(ch <-chan *redis.Message, done chan struct{}) {
	defer close(done)
	for m := range ch {
		r.mu.Lock()
		for wake := range r.waiters[m.Payload] {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		r.mu.Unlock()
	}
}

// Close stops the subscription, after waiting for one being opened.
func (r *RedisResults) Close() error {
	r.mu.Lock()
	for r.subscribing != nil {
		pending := r.subscribing
		r.mu.Unlock()
		<-pending // bounded by the opening Wait's context
		r.mu.Lock()
	}
	sub, done := r.sub, r.subDone
	r.sub = nil
	r.mu.Unlock()
	if sub == nil {
		return nil
	}
	err := sub.Close()
	<-done
	return err
}

// MemoryResults is an in-process result backend with the same API, for the
// in-memory broker.
type MemoryResults struct {
	mu      sync.Mutex
	results map[string]memResult
	changed chan struct{}
	ttl     time.Duration
	now     func() time.Time
}

type memResult struct {
	res     TaskResult
	expires time.Time
}

// NewMemoryResults returns an empty in-memory result backend keeping
// results for ttl (DefaultResultTTL when 0).
func NewMemoryResults(ttl time.Duration) *MemoryResults {
	if ttl <= 0 {
		ttl = DefaultResultTTL
	}
	return &MemoryResults{results: make(map[string]memResult), changed: make(chan struct{}), ttl: ttl, now: time.Now}
}

// Store implements ResultBackend.
func (m *MemoryResults) Store(ctx context.Context, r *TaskResult, ttl time.Duration) error {
	if ttl <= 0 {
		ttl = m.ttl
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.results[r.TaskID] = memResult{res: *r, expires: m.now().Add(ttl)}
	close(m.changed)
	m.changed = make(chan struct{})
	return nil
}

// Get implements ResultBackend.
func (m *MemoryResults) Get(ctx context.Context, taskID string) (*TaskResult, error) {
	res, _, err := m.get(taskID)
	return res, err
}

func (m *MemoryResults) get(taskID string) (*TaskResult, chan struct{}, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.results[taskID]
	if !ok || !m.now().Before(r.expires) {
		delete(m.results, taskID)
		return nil, m.changed, ErrNoResult
	}
	res := r.res
	return &res, m.changed, nil
}

// Wait implements ResultBackend.
func (m *MemoryResults) Wait(ctx context.Context, taskID string) (*TaskResult, error) {
	for {
		res, changed, err := m.get(taskID)
		if err == nil {
			return res, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// Close implements ResultBackend.
func (m *MemoryResults) Close() error { return nil }
