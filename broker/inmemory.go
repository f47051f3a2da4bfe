package broker

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// InMemory is a broker that keeps its queues in process memory: for tests,
// examples and programs that kick and run tasks in one process. It has the
// same API and delivery semantics as [ListQueue] within its process; nothing
// survives the process.
type InMemory struct {
	base

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced whenever a queue gains work
	queues    map[string]*memQueue
	consumers map[*memConsumer]struct{}
	now       func() time.Time
}

type memQueue struct {
	ready     []memMsg
	scheduled memSchedule
	dead      []DeadLetter
	// ids holds the task id of every task that exists on the queue: kicked
	// and not yet acknowledged or dead-lettered (pending, scheduled, in
	// flight or awaiting a retry), as ListQueue's msg hash does. Guarded by
	// the broker's mu.
	ids map[string]struct{}
}

// memMsg is a stored message and the task id the broker knows it by (the
// kicked message's, kept even when the message does not decode).
type memMsg struct {
	id  string
	raw []byte
}

// DeadLetter is a message a worker could not or would not run, with the
// reason.
type DeadLetter struct {
	// TaskID is the task's id; empty when the message did not decode,
	// unless the broker keeps ids beside messages (ListQueue does).
	TaskID string `msgpack:"task_id"`
	// TaskName is the task's name; empty when the message did not decode.
	TaskName string `msgpack:"task_name"`
	// Queue the message was taken from.
	Queue string `msgpack:"queue"`
	// Reason says why it was dead-lettered: the decoding error, the unknown
	// name, or the task's last error.
	Reason string `msgpack:"reason"`
	// Attempt is the message's attempt counter when it was dead-lettered.
	Attempt int `msgpack:"attempt"`
	// At is when it was dead-lettered.
	At time.Time `msgpack:"at"`
	// Raw is the message as it was stored.
	Raw []byte `msgpack:"raw"`
}

// NewInMemory returns an empty in-memory broker using the msgpack formatter.
func NewInMemory() *InMemory {
	return &InMemory{
		base:      base{formatter: Msgpack},
		changed:   make(chan struct{}),
		queues:    make(map[string]*memQueue),
		consumers: make(map[*memConsumer]struct{}),
		now:       time.Now,
	}
}

// WithResultBackend sets where the worker stores results and Wait reads
// them, and returns b. Shutdown closes it.
func (b *InMemory) WithResultBackend(rb ResultBackend) *InMemory {
	b.results = rb
	return b
}

// WithMiddlewares registers middlewares, in order, and returns b.
func (b *InMemory) WithMiddlewares(mws ...Middleware) *InMemory {
	b.addMiddlewares(b, mws)
	return b
}

// Startup runs the middlewares' Startup hooks.
func (b *InMemory) Startup(ctx context.Context) error { return b.startup(ctx) }

// Shutdown runs the middlewares' Shutdown hooks.
func (b *InMemory) Shutdown(ctx context.Context) error { return b.shutdown(ctx) }

// ErrLockUnsupported is returned by a broker's Kick for a message carrying a
// [Lock] it cannot take atomically; a middleware must check
// [LockingBroker] first.
var ErrLockUnsupported = errors.New("kiq: broker cannot take a lock with the enqueue")

// Kick encodes msg and puts it on its queue, or schedules it when it carries
// a delay. A task id that exists already on the queue (not yet acknowledged
// or dead-lettered) is an error wrapping [ErrTaskExists], and nothing is
// queued.
func (b *InMemory) Kick(ctx context.Context, msg *Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if msg.TaskID == "" {
		return errors.New("kiq: kick: empty task id") // as ListQueue
	}
	if msg.Lock != nil {
		return ErrLockUnsupported
	}
	if msg.EnqueuedAt == 0 {
		msg.EnqueuedAt = b.now().UnixMilli()
	}
	raw, err := b.formatter.EncodeMessage(msg)
	if err != nil {
		return err
	}
	due := time.UnixMilli(msg.EnqueuedAt).Add(msg.Delay())
	queue := msg.Queue(DefaultQueue)
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queue(queue)
	if _, ok := q.ids[msg.TaskID]; ok {
		return fmt.Errorf("%w: %s", ErrTaskExists, msg.TaskID)
	}
	q.ids[msg.TaskID] = struct{}{}
	b.enqueueLocked(queue, memMsg{id: msg.TaskID, raw: raw}, due)
	return nil
}

func (b *InMemory) enqueueLocked(queue string, m memMsg, due time.Time) {
	q := b.queue(queue)
	if due.After(b.now()) {
		heap.Push(&q.scheduled, memScheduled{due: due, msg: m})
	} else {
		q.ready = append(q.ready, m)
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *InMemory) queue(name string) *memQueue {
	q, ok := b.queues[name]
	if !ok {
		q = &memQueue{ids: make(map[string]struct{})}
		b.queues[name] = q
	}
	return q
}

// Stats counts the tasks of queue by state.
func (b *InMemory) Stats(ctx context.Context, queue string) (QueueStats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queue(queue)
	s := QueueStats{Queue: queue, Pending: int64(len(q.ready)), Scheduled: int64(len(q.scheduled)), Dead: int64(len(q.dead))}
	for c := range b.consumers {
		c.mu.Lock()
		for d := range c.held {
			if d.Queue == queue {
				s.InFlight++
			}
		}
		c.mu.Unlock()
		s.Consumers++
	}
	return s, nil
}

// DeadLetters returns up to limit dead letters of queue, newest first,
// skipping offset.
func (b *InMemory) DeadLetters(ctx context.Context, queue string, offset, limit int) ([]DeadLetter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	dead := b.queue(queue).dead
	var out []DeadLetter
	for i := len(dead) - 1 - max(offset, 0); i >= 0 && len(out) < limit; i-- {
		out = append(out, dead[i])
	}
	return out, nil
}

// Consume opens a consumer of opts.Queues.
func (b *InMemory) Consume(ctx context.Context, opts ConsumeOptions) (Consumer, error) {
	queues := opts.Queues
	if len(queues) == 0 {
		queues = []string{DefaultQueue}
	}
	c := &memConsumer{b: b, queues: slices.Clone(queues), held: make(map[*Delivery]string)}
	b.mu.Lock()
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	return c, nil
}

type memConsumer struct {
	b      *InMemory
	queues []string

	mu     sync.Mutex           // guards held and closed; taken after b.mu
	held   map[*Delivery]string // delivery -> the task id the broker knows it by
	closed bool
}

// ErrConsumerClosed is returned by Fetch once the consumer was closed (for
// a ListQueue consumer, also once the context given to Consume ended).
var ErrConsumerClosed = errors.New("kiq: consumer closed")

func (c *memConsumer) Fetch(ctx context.Context, limit int) ([]*Delivery, error) {
	limit = max(limit, 1)
	for {
		b := c.b
		b.mu.Lock()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			b.mu.Unlock()
			return nil, ErrConsumerClosed
		}
		now := b.now()
		var out []*Delivery
		var next time.Time
		for _, name := range c.queues {
			q := b.queue(name)
			for len(q.scheduled) > 0 && !q.scheduled[0].due.After(now) {
				q.ready = append(q.ready, heap.Pop(&q.scheduled).(memScheduled).msg)
			}
			if len(q.scheduled) > 0 && (next.IsZero() || q.scheduled[0].due.Before(next)) {
				next = q.scheduled[0].due
			}
			for len(q.ready) > 0 && len(out) < limit {
				m := q.ready[0]
				q.ready = q.ready[1:]
				d := decodeDelivery(b.formatter, name, m.raw)
				c.held[d] = m.id
				out = append(out, d)
			}
		}
		changed := b.changed
		c.mu.Unlock()
		b.mu.Unlock()
		if len(out) > 0 {
			return out, nil
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			t := time.NewTimer(next.Sub(now))
			timer = t.C
			defer t.Stop()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		case <-timer:
		}
	}
}

// decodeDelivery builds the delivery of raw taken from queue.
func decodeDelivery(f Formatter, queue string, raw []byte) *Delivery {
	d := &Delivery{Queue: queue, Raw: raw}
	d.Message, d.Err = f.DecodeMessage(raw)
	if d.Message != nil {
		d.ID = d.Message.TaskID
	}
	return d
}

// settle removes ds from the held set, failing for one this consumer does
// not hold, and returns their task ids, in order. The caller holds c.b.mu.
func (c *memConsumer) settle(ds ...*Delivery) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, len(ds))
	for i, d := range ds {
		id, ok := c.held[d]
		if !ok {
			return nil, fmt.Errorf("kiq: delivery %q is not held by this consumer", d.ID)
		}
		ids[i] = id
	}
	for _, d := range ds {
		delete(c.held, d)
	}
	return ids, nil
}

// finishLocked settles ds, which ended (acknowledged or dead-lettered),
// and forgets their task ids: they can be kicked again. The caller holds
// c.b.mu.
func (c *memConsumer) finishLocked(ds ...*Delivery) error {
	ids, err := c.settle(ds...)
	if err != nil {
		return err
	}
	for i, d := range ds {
		delete(c.b.queue(d.Queue).ids, ids[i])
	}
	return nil
}

func (c *memConsumer) Ack(ctx context.Context, ds ...*Delivery) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	return c.finishLocked(ds...)
}

func (c *memConsumer) Retry(ctx context.Context, d *Delivery, msg *Message, delay time.Duration) error {
	raw, err := c.b.formatter.EncodeMessage(msg)
	if err != nil {
		return err
	}
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	ids, err := c.settle(d)
	if err != nil {
		return err
	}
	// The task still exists: it is queued again under the id it has.
	c.b.enqueueLocked(d.Queue, memMsg{id: ids[0], raw: raw}, c.b.now().Add(delay))
	return nil
}

func (c *memConsumer) DeadLetter(ctx context.Context, d *Delivery, reason string) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	if err := c.finishLocked(d); err != nil {
		return err
	}
	dl := DeadLetter{Queue: d.Queue, Reason: reason, At: c.b.now(), Raw: d.Raw}
	if d.Message != nil {
		dl.TaskID, dl.TaskName, dl.Attempt = d.Message.TaskID, d.Message.TaskName, d.Message.Attempt
	}
	q := c.b.queue(d.Queue)
	q.dead = append(q.dead, dl)
	return nil
}

func (c *memConsumer) HandBack(ctx context.Context, ds ...*Delivery) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	ids, err := c.settle(ds...)
	if err != nil {
		return err
	}
	c.handBackLocked(ds, ids)
	return nil
}

// handBackLocked puts ds, known by ids, back at the head of their queues,
// in order. Their tasks still exist.
func (c *memConsumer) handBackLocked(ds []*Delivery, ids []string) {
	front := map[string][]memMsg{} // queue -> its messages handed back, in order
	for i, d := range ds {
		front[d.Queue] = append(front[d.Queue], memMsg{id: ids[i], raw: d.Raw})
	}
	for name, ms := range front {
		q := c.b.queue(name)
		q.ready = append(ms, q.ready...)
	}
	close(c.b.changed)
	c.b.changed = make(chan struct{})
}

func (c *memConsumer) Close(ctx context.Context) error {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	delete(c.b.consumers, c)
	held := make([]*Delivery, 0, len(c.held))
	ids := make([]string, 0, len(c.held))
	for d, id := range c.held {
		held = append(held, d)
		ids = append(ids, id)
	}
	clear(c.held)
	c.mu.Unlock()
	c.handBackLocked(held, ids) // also wakes a Fetch blocked on this consumer
	return nil
}

type memScheduled struct {
	due time.Time
	msg memMsg
}

// memSchedule is a min-heap of scheduled messages by due time.
type memSchedule []memScheduled

func (s memSchedule) Len() int           { return len(s) }
func (s memSchedule) Less(i, j int) bool { return s[i].due.Before(s[j].due) }
func (s memSchedule) Swap(i, j int)      { s[i], s[j] = s[j], s[i] }
func (s *memSchedule) Push(x any)        { *s = append(*s, x.(memScheduled)) }
func (s *memSchedule) Pop() any {
	old := *s
	x := old[len(old)-1]
	*s = old[:len(old)-1]
	return x
}
