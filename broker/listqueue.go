package broker

// ListQueue's Redis layout. P is the key prefix (default "kiq") and q a
// queue name; every key of a queue carries the hash tag {q}, so each script
// touches one Redis Cluster slot, and every key a script touches is passed
// in KEYS.
//
//	P:{q}:msg             hash   task id -> encoded message, while the task exists
//	P:{q}:pending         list   task ids ready to run; producers push left, consumers take right
//	P:{q}:scheduled       zset   task id -> due time (ms): delayed tasks and retries
//	P:{q}:wip:<consumer>  list   task ids a consumer holds (in flight)
//	P:{q}:consumers       zset   consumer id -> heartbeat deadline (ms)
//	P:{q}:dead            list   encoded DeadLetters, newest first, capped
//
// The life of a message: Kick stores it in msg and pushes its id on pending
// (or scheduled), in one script that may first take a deduplication lock.
// A consumer moves ids from pending to its wip list atomically (LMOVE in a
// script for a batch, BLMOVE to block when idle) and reads their messages in
// the same round trip. Ack removes the id from wip and the message from msg.
// A consumer heartbeats its deadline in consumers; when a deadline passes,
// any other consumer of the queue moves the dead one's wip ids back to the
// head of pending. Nothing is removed from Redis before it was acknowledged,
// retried, dead-lettered or handed back.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiq-go/kiq/internal/batch"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

var (
	//go:embed lua/kick.lua
	kickLua string
	//go:embed lua/take.lua
	takeLua string
	//go:embed lua/ack.lua
	ackLua string
	//go:embed lua/retry.lua
	retryLua string
	//go:embed lua/dead.lua
	deadLua string
	//go:embed lua/handback.lua
	handBackLua string
	//go:embed lua/reap.lua
	reapLua string
	//go:embed lua/heartbeat.lua
	heartbeatLua string

	kickScript      = redis.NewScript(kickLua)
	takeScript      = redis.NewScript(takeLua)
	ackScript       = redis.NewScript(ackLua)
	retryScript     = redis.NewScript(retryLua)
	deadScript      = redis.NewScript(deadLua)
	handBackScript  = redis.NewScript(handBackLua)
	reapScript      = redis.NewScript(reapLua)
	heartbeatScript = redis.NewScript(heartbeatLua)
)

// ErrMessageTooLarge is returned by Kick for a message over the broker's
// size limit (WithMaxMessageSize).
var ErrMessageTooLarge = errors.New("kiq: message too large")

// ErrTaskExists is returned by Kick for a task id already queued, scheduled
// or in flight on the queue.
var ErrTaskExists = errors.New("kiq: a task with this id exists already")

// ListQueue is the Redis list broker: at-least-once, with blocking
// consumption (no polling), batched takes and acks (one round trip each),
// scheduled delivery, dead letters, and redelivery of the tasks of a consumer
// that died. See the layout above and docs/architecture.md.
type ListQueue struct {
	base

	client     redis.UniversalClient
	calls      *batch.Pipeline // coalesces concurrent kicks into pipelines
	ownsClient bool
	queue      string
	prefix     string
	hbInterval time.Duration
	hbTTL      time.Duration
	deadLimit  int
	maxSize    int
	log        *slog.Logger
}

// ListQueueOption configures NewListQueue.
type ListQueueOption func(*ListQueue)

// WithQueueName sets the queue of messages without a queue label, and the
// one consumed by default. Default "taskiq".
func WithQueueName(name string) ListQueueOption { return func(b *ListQueue) { b.queue = name } }

// WithClient makes the broker use an existing client (the URL given to
// NewListQueue may then be ""). Shutdown does not close it.
func WithClient(c redis.UniversalClient) ListQueueOption {
	return func(b *ListQueue) { b.client = c }
}

// WithKeyPrefix sets the prefix of the broker's keys. Default "kiq".
func WithKeyPrefix(p string) ListQueueOption { return func(b *ListQueue) { b.prefix = p } }

// WithFormatter sets the message encoding. Default Msgpack.
func WithFormatter(f Formatter) ListQueueOption { return func(b *ListQueue) { b.formatter = f } }

// WithHeartbeat sets how often a consumer renews its liveness (default 2 s)
// and how long after its last renewal it counts as dead and its tasks are
// delivered again (default 15 s).
func WithHeartbeat(interval, ttl time.Duration) ListQueueOption {
	return func(b *ListQueue) { b.hbInterval, b.hbTTL = interval, ttl }
}

// WithDeadLetterLimit sets how many dead letters a queue keeps, newest
// first. Default 10000.
func WithDeadLetterLimit(n int) ListQueueOption { return func(b *ListQueue) { b.deadLimit = n } }

// WithMaxMessageSize sets the largest encoded message Kick accepts and a
// consumer decodes; a larger one found on the queue is dead-lettered
// unread. Default 8 MiB.
func WithMaxMessageSize(n int) ListQueueOption { return func(b *ListQueue) { b.maxSize = n } }

// WithLogger sets the logger of background errors (heartbeats, reaping).
// Default slog.Default().
func WithLogger(l *slog.Logger) ListQueueOption { return func(b *ListQueue) { b.log = l } }

// NewListQueue returns a Redis list broker for the Redis at url
// (redis://[user:password@]host:port[/db], rediss:// for TLS). It opens no
// connection: the first Kick or Consume does. A malformed URL is an error,
// which never contains the URL's password.
func NewListQueue(url string, opts ...ListQueueOption) (*ListQueue, error) {
	b := &ListQueue{
		base:       base{formatter: Msgpack},
		queue:      DefaultQueue,
		prefix:     "kiq",
		hbInterval: 2 * time.Second,
		hbTTL:      15 * time.Second,
		deadLimit:  10000,
		maxSize:    8 << 20,
	}
	for _, o := range opts {
		o(b)
	}
	switch {
	case b.queue == "":
		return nil, errors.New("kiq: list queue: empty queue name")
	case b.hbInterval <= 0 || b.hbTTL <= b.hbInterval:
		return nil, fmt.Errorf("kiq: list queue: heartbeat TTL (%v) must exceed a positive interval (%v)", b.hbTTL, b.hbInterval)
	case b.maxSize <= 0:
		return nil, fmt.Errorf("kiq: list queue: max message size must be positive, got %d", b.maxSize)
	case b.deadLimit <= 0:
		return nil, fmt.Errorf("kiq: list queue: dead-letter limit must be positive, got %d", b.deadLimit)
	case b.formatter == nil:
		return nil, errors.New("kiq: list queue: nil formatter")
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.client == nil {
		ropts, err := ParseRedisURL(url)
		if err != nil {
			return nil, err
		}
		// Let a cancelled context interrupt a blocking BLMOVE.
		ropts.ContextTimeoutEnabled = true
		b.client, b.ownsClient = redis.NewClient(ropts), true
	}
	b.calls = batch.New(b.client)
	return b, nil
}

// ParseRedisURL parses a Redis URL as go-redis does. Its error never
// contains the URL's password.
func ParseRedisURL(rawURL string) (*redis.Options, error) {
	opts, err := redis.ParseURL(rawURL)
	if err == nil {
		return opts, nil
	}
	// Hide the user info (user:password) wherever the message repeats it,
	// even when the URL is too malformed to parse.
	msg := err.Error()
	if i, j := strings.Index(rawURL, "://"), strings.LastIndex(rawURL, "@"); i >= 0 && j > i+3 {
		msg = strings.ReplaceAll(msg, rawURL[i+3:j], "xxxxx")
	}
	return nil, fmt.Errorf("kiq: bad Redis URL: %s", msg)
}

// WithResultBackend sets where the worker stores results and Wait reads
// them, and returns b. Shutdown closes it.
func (b *ListQueue) WithResultBackend(rb ResultBackend) *ListQueue {
	b.results = rb
	return b
}

// WithMiddlewares registers middlewares, in order, and returns b.
func (b *ListQueue) WithMiddlewares(mws ...Middleware) *ListQueue {
	b.addMiddlewares(b, mws)
	return b
}

// Client returns the broker's Redis client.
func (b *ListQueue) Client() redis.UniversalClient { return b.client }

// KeyPrefix returns the prefix of the broker's keys.
func (b *ListQueue) KeyPrefix() string { return b.prefix }

// QueueName returns the default queue.
func (b *ListQueue) QueueName() string { return b.queue }

// RedeliveryTimeout bounds how long after a consumer dies its tasks are
// delivered again: the heartbeat TTL, plus one interval for another
// consumer's heartbeat to notice.
func (b *ListQueue) RedeliveryTimeout() time.Duration { return b.hbTTL + b.hbInterval }

// LocksAtomically reports whether a lock held in c can be taken in the
// enqueue script: c must reach the same server and database as the broker,
// and neither may be a cluster client.
func (b *ListQueue) LocksAtomically(c redis.UniversalClient) bool {
	if c == b.client {
		_, cluster := c.(*redis.ClusterClient)
		return !cluster
	}
	mine, ok1 := b.client.(*redis.Client)
	theirs, ok2 := c.(*redis.Client)
	if !ok1 || !ok2 {
		return false
	}
	a, o := mine.Options(), theirs.Options()
	return a.Network == o.Network && a.Addr == o.Addr && a.DB == o.DB && a.Username == o.Username
}

// Startup checks the connection and runs the middlewares' Startup hooks.
func (b *ListQueue) Startup(ctx context.Context) error {
	if err := b.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("kiq: list queue: %w", err)
	}
	return b.startup(ctx)
}

// Shutdown runs the middlewares' Shutdown hooks and closes the client if
// NewListQueue opened it.
func (b *ListQueue) Shutdown(ctx context.Context) error {
	err := b.shutdown(ctx)
	if b.ownsClient {
		err = errors.Join(err, b.client.Close())
	}
	return err
}

func (b *ListQueue) key(queue, part string) string {
	return b.prefix + ":{" + queue + "}:" + part
}

// Kick stores msg and queues it, or schedules it when it has a delay. With
// msg.Lock set, the lock is taken in the same script (see LockingBroker).
func (b *ListQueue) Kick(ctx context.Context, msg *Message) error {
	if msg.EnqueuedAt == 0 {
		msg.EnqueuedAt = time.Now().UnixMilli()
	}
	raw, err := b.formatter.EncodeMessage(msg)
	if err != nil {
		return err
	}
	if len(raw) > b.maxSize {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrMessageTooLarge, len(raw), b.maxSize)
	}
	q := msg.Queue(b.queue)
	keys := []string{b.key(q, "msg"), b.key(q, "pending"), b.key(q, "scheduled")}
	args := []any{msg.TaskID, raw, msg.Delay().Milliseconds()}
	if l := msg.Lock; l != nil {
		if !b.LocksAtomically(l.Client) {
			return ErrLockUnsupported
		}
		keys = append(keys, l.Key)
		args = append(args, max(l.TTL.Milliseconds(), 1))
	}
	res, err := b.calls.Script(ctx, kickScript, keys, args...).Slice()
	if err != nil {
		return fmt.Errorf("kiq: kick %s: %w", msg.TaskName, err)
	}
	switch res[0].(int64) {
	case 1:
		return nil
	case 0:
		holder, _ := res[1].(string)
		if msg.Lock.Held != nil {
			return msg.Lock.Held(holder)
		}
		return fmt.Errorf("kiq: lock %s held by task %s", msg.Lock.Key, holder)
	}
	return fmt.Errorf("%w: %s", ErrTaskExists, msg.TaskID)
}

// TaskExists reports whether the task is pending, scheduled or in flight on
// queue.
func (b *ListQueue) TaskExists(ctx context.Context, queue, taskID string) (bool, error) {
	n, err := b.client.HExists(ctx, b.key(queue, "msg"), taskID).Result()
	if err != nil {
		return false, fmt.Errorf("kiq: task exists: %w", err)
	}
	return n, nil
}

// QueueStats are the counts of one queue.
type QueueStats struct {
	Queue     string `json:"queue"`
	Pending   int64  `json:"pending"`
	InFlight  int64  `json:"in_flight"`
	Scheduled int64  `json:"scheduled"`
	Dead      int64  `json:"dead"`
	Consumers int64  `json:"consumers"`
}

// Stats counts the tasks of queue by state.
func (b *ListQueue) Stats(ctx context.Context, queue string) (QueueStats, error) {
	s := QueueStats{Queue: queue}
	consumers, err := b.client.ZRange(ctx, b.key(queue, "consumers"), 0, -1).Result()
	if err != nil {
		return s, fmt.Errorf("kiq: stats: %w", err)
	}
	var pending, scheduled, dead *redis.IntCmd
	var head *redis.StringCmd
	wip := make([]*redis.IntCmd, len(consumers))
	_, err = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		pending = p.LLen(ctx, b.key(queue, "pending"))
		head = p.LIndex(ctx, b.key(queue, "pending"), -1)
		scheduled = p.ZCard(ctx, b.key(queue, "scheduled"))
		dead = p.LLen(ctx, b.key(queue, "dead"))
		for i, c := range consumers {
			wip[i] = p.LLen(ctx, b.key(queue, "wip:"+c))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return s, fmt.Errorf("kiq: stats: %w", err)
	}
	s.Pending, s.Scheduled, s.Dead, s.Consumers = pending.Val(), scheduled.Val(), dead.Val(), int64(len(consumers))
	if head.Err() == nil && head.Val() == "" {
		s.Pending-- // a wake-up token (see kick.lua), not a task
	}
	for _, c := range wip {
		s.InFlight += c.Val()
	}
	return s, nil
}

// DeadLetters returns up to limit dead letters of queue, newest first,
// skipping offset.
func (b *ListQueue) DeadLetters(ctx context.Context, queue string, offset, limit int) ([]DeadLetter, error) {
	raws, err := b.client.LRange(ctx, b.key(queue, "dead"), int64(offset), int64(offset+limit-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("kiq: dead letters: %w", err)
	}
	out := make([]DeadLetter, 0, len(raws))
	for _, raw := range raws {
		var dl DeadLetter
		if err := msgpack.Unmarshal([]byte(raw), &dl); err != nil {
			return out, fmt.Errorf("kiq: dead letters: %w", err)
		}
		out = append(out, dl)
	}
	return out, nil
}

// Consume registers a consumer of opts.Queues (default: the broker's queue)
// and starts its heartbeat, which also redelivers the tasks of dead
// consumers. The heartbeat stops when the consumer is closed or ctx ends.
func (b *ListQueue) Consume(ctx context.Context, opts ConsumeOptions) (Consumer, error) {
	queues := opts.Queues
	if len(queues) == 0 {
		queues = []string{b.queue}
	}
	c := &lqConsumer{b: b, id: NewTaskID()[:16], queues: append([]string(nil), queues...)}
	if err := c.heartbeat(ctx); err != nil {
		return nil, err
	}
	hbCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	c.stop, c.done = stop, make(chan struct{})
	go c.heartbeats(ctx, hbCtx)
	return c, nil
}

type lqConsumer struct {
	b      *ListQueue
	id     string
	queues []string
	next   int // the queue to block on next, in rotation

	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

func (c *lqConsumer) wip(queue string) string { return c.b.key(queue, "wip:"+c.id) }

// heartbeats renews the consumer's deadline every interval until it is
// closed or ctx ends, and reaps dead consumers.
func (c *lqConsumer) heartbeats(ctx, hbCtx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.b.hbInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-hbCtx.Done():
			return
		case <-t.C:
		}
		err := c.heartbeat(hbCtx)
		switch {
		case err != nil && !failing && hbCtx.Err() == nil:
			c.b.log.Warn("kiq: consumer heartbeat failed; retrying", slog.String("consumer", c.id), slog.Any("error", err))
			failing = true
		case err == nil && failing:
			c.b.log.Info("kiq: consumer heartbeat recovered", slog.String("consumer", c.id))
			failing = false
		}
	}
}

// heartbeat renews the consumer's deadline on each queue and redelivers
// the tasks of consumers found dead.
func (c *lqConsumer) heartbeat(ctx context.Context) error {
	ttl := c.b.hbTTL.Milliseconds()
	for _, q := range c.queues {
		dead, err := heartbeatScript.Run(ctx, c.b.client, []string{c.b.key(q, "consumers")}, c.id, ttl).StringSlice()
		if err != nil {
			return fmt.Errorf("kiq: heartbeat: %w", err)
		}
		for _, d := range dead {
			keys := []string{c.b.key(q, "wip:"+d), c.b.key(q, "pending"), c.b.key(q, "consumers")}
			n, err := reapScript.Run(ctx, c.b.client, keys, d, "1").Int()
			if err != nil {
				return fmt.Errorf("kiq: reap: %w", err)
			}
			if n > 0 {
				c.b.log.Warn("kiq: consumer died; its tasks are delivered again",
					slog.String("queue", q), slog.String("consumer", d), slog.Int("tasks", n))
			}
		}
	}
	return nil
}

// Fetch takes up to limit tasks, blocking until one is ready. Idle, it
// blocks in BLMOVE on one queue at a time (a whole second on a single
// queue, or until the next scheduled task is due; 50 ms per queue in
// rotation when consuming several), so a kicked task starts at once.
func (c *lqConsumer) Fetch(ctx context.Context, limit int) ([]*Delivery, error) {
	limit = max(limit, 1)
	for {
		wait := time.Second
		for i := range c.queues {
			q := c.queues[(c.next+i)%len(c.queues)]
			ds, next, err := c.take(ctx, q, limit, nil)
			if err != nil || len(ds) > 0 {
				return ds, err
			}
			if next >= 0 {
				wait = min(wait, next)
			}
		}
		if len(c.queues) > 1 {
			wait = min(wait, 50*time.Millisecond)
		}
		wait = max(wait, 5*time.Millisecond)
		q := c.queues[c.next%len(c.queues)]
		c.next++
		id, err := c.b.client.Do(ctx, "BLMOVE", c.b.key(q, "pending"), c.wip(q), "RIGHT", "LEFT",
			strconv.FormatFloat(wait.Seconds(), 'f', 3, 64)).Text()
		switch {
		case errors.Is(err, redis.Nil):
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("kiq: fetch: %w", err)
		}
		ds, _, err := c.take(ctx, q, limit, []string{id})
		if err != nil || len(ds) > 0 {
			return ds, err
		}
		// A wake-up for a newly scheduled task: block again, until its time.
	}
}

// take runs the take script on queue: due scheduled tasks are queued, then
// up to limit tasks (claimed first) are returned, with how long until the
// next scheduled task is due (-1: none).
func (c *lqConsumer) take(ctx context.Context, q string, limit int, claimed []string) ([]*Delivery, time.Duration, error) {
	keys := []string{c.b.key(q, "pending"), c.wip(q), c.b.key(q, "msg"), c.b.key(q, "scheduled")}
	args := make([]any, 0, 1+len(claimed))
	args = append(args, limit)
	for _, id := range claimed {
		args = append(args, id)
	}
	res, err := takeScript.Run(ctx, c.b.client, keys, args...).Slice()
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		return nil, 0, fmt.Errorf("kiq: fetch: %w", err)
	}
	wait := time.Duration(res[0].(int64)) * time.Millisecond
	if res[0].(int64) < 0 {
		wait = -1
	}
	pairs, _ := res[1].([]any)
	ds := make([]*Delivery, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		id, _ := pairs[i].(string)
		raw, _ := pairs[i+1].(string)
		var d *Delivery
		if len(raw) > c.b.maxSize {
			d = &Delivery{Queue: q, Raw: []byte(raw), Err: fmt.Errorf("%w: %d bytes, the limit is %d", ErrMalformed, len(raw), c.b.maxSize)}
		} else {
			d = decodeDelivery(c.b.formatter, q, []byte(raw))
		}
		d.ID = id
		ds = append(ds, d)
	}
	return ds, wait, nil
}

// Ack settles deliveries: one script per queue, in one pipeline.
func (c *lqConsumer) Ack(ctx context.Context, ds ...*Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	byQueue := make(map[string][]any)
	for _, d := range ds {
		byQueue[d.Queue] = append(byQueue[d.Queue], d.ID)
	}
	if len(byQueue) == 1 {
		for q, ids := range byQueue {
			if err := ackScript.Run(ctx, c.b.client, []string{c.wip(q), c.b.key(q, "msg")}, ids...).Err(); err != nil {
				return fmt.Errorf("kiq: ack: %w", err)
			}
		}
		return nil
	}
	return c.pipelineScripts(ctx, ackScript, func(p redis.Pipeliner) {
		for q, ids := range byQueue {
			ackScript.EvalSha(ctx, p, []string{c.wip(q), c.b.key(q, "msg")}, ids...)
		}
	})
}

// pipelineScripts runs fill's EVALSHAs in one pipeline, loading script and
// trying once more when Redis does not know it (after a restart).
func (c *lqConsumer) pipelineScripts(ctx context.Context, script *redis.Script, fill func(redis.Pipeliner)) error {
	for attempt := 0; ; attempt++ {
		_, err := c.b.client.Pipelined(ctx, func(p redis.Pipeliner) error { fill(p); return nil })
		if err != nil && attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			if err := script.Load(ctx, c.b.client).Err(); err != nil {
				return fmt.Errorf("kiq: load script: %w", err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("kiq: ack: %w", err)
		}
		return nil
	}
}

// Retry settles d and schedules msg after delay.
func (c *lqConsumer) Retry(ctx context.Context, d *Delivery, msg *Message, delay time.Duration) error {
	raw, err := c.b.formatter.EncodeMessage(msg)
	if err != nil {
		return err
	}
	q := d.Queue
	keys := []string{c.wip(q), c.b.key(q, "msg"), c.b.key(q, "pending"), c.b.key(q, "scheduled")}
	if err := retryScript.Run(ctx, c.b.client, keys, d.ID, raw, delay.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("kiq: retry: %w", err)
	}
	return nil
}

// DeadLetter settles d by recording it, with reason, in its queue's
// dead-letter list.
func (c *lqConsumer) DeadLetter(ctx context.Context, d *Delivery, reason string) error {
	dl := DeadLetter{TaskID: d.ID, Queue: d.Queue, Reason: reason, At: time.Now(), Raw: d.Raw}
	if d.Message != nil {
		dl.TaskName, dl.Attempt = d.Message.TaskName, d.Message.Attempt
	}
	entry, err := msgpack.Marshal(&dl)
	if err != nil {
		return fmt.Errorf("kiq: dead letter: %w", err)
	}
	q := d.Queue
	keys := []string{c.wip(q), c.b.key(q, "msg"), c.b.key(q, "dead")}
	if err := deadScript.Run(ctx, c.b.client, keys, d.ID, entry, c.b.deadLimit).Err(); err != nil {
		return fmt.Errorf("kiq: dead letter: %w", err)
	}
	return nil
}

// HandBack returns deliveries to the head of their queues, in order.
func (c *lqConsumer) HandBack(ctx context.Context, ds ...*Delivery) error {
	byQueue := make(map[string][]any)
	var order []string
	for _, d := range ds {
		if _, seen := byQueue[d.Queue]; !seen {
			order = append(order, d.Queue)
		}
		byQueue[d.Queue] = append(byQueue[d.Queue], d.ID)
	}
	for _, q := range order {
		if err := handBackScript.Run(ctx, c.b.client, []string{c.wip(q), c.b.key(q, "pending")}, byQueue[q]...).Err(); err != nil {
			return fmt.Errorf("kiq: hand back: %w", err)
		}
	}
	return nil
}

// Close stops the heartbeat, hands back every task the consumer still holds
// and deregisters it.
func (c *lqConsumer) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		c.stop()
		<-c.done
		for _, q := range c.queues {
			keys := []string{c.wip(q), c.b.key(q, "pending"), c.b.key(q, "consumers")}
			if err := reapScript.Run(ctx, c.b.client, keys, c.id, "0").Err(); err != nil {
				c.closeErr = errors.Join(c.closeErr, fmt.Errorf("kiq: close consumer: %w", err))
			}
		}
	})
	return c.closeErr
}
