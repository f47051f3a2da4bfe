// Package batch coalesces concurrent calls into batches: an item submitted
// while a batch is in flight waits and goes out with every other item
// queued meanwhile, in the next batch. A lone caller pays one round trip,
// as it would without batching; 64 concurrent callers pay a handful.
//
// Coalescer is the mechanism; Pipeline is a Coalescer of Redis commands,
// sent as one pipeline per batch.
package batch

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Coalescer runs the items submitted through Do in batches, through a flush
// function, with at most a given number of batches in flight at once. It
// starts no goroutine: a caller that finds a free slot sends a batch, for
// itself and whoever queued since; when it is done, it hands its slot to
// the oldest waiting caller, so no caller serves others for long.
type Coalescer[T any] struct {
	flush    func(ctx context.Context, items []T)
	parallel int

	mu     sync.Mutex
	queue  []*entry[T]
	active int // batches in flight, at most parallel

	// entries holds entries to reuse, an allocation less per call: when Do
	// returns, every signal sent to its entry was received, and whoever
	// sent one is done with it.
	entries sync.Pool
}

type entry[T any] struct {
	item     T
	deadline time.Time // the caller's deadline; zero for none
	// signal gets true once the item's batch was flushed, after a false if
	// the caller was promoted to send the next batch.
	signal chan bool
	leads  bool // the caller holds a slot (guarded by mu)
}

// NewCoalescer returns a coalescer that passes batches to flush, with at
// most parallel batches in flight (at least 1). Two let one batch be
// answered while the next is sent. flush must handle every item it is given
// (its results go through the items themselves); its context carries the
// values of the caller that sends the batch, never its cancellation, and
// the latest deadline of the batch's callers, if every one has a deadline:
// a batch is cut short only once no caller is left waiting for it.
func NewCoalescer[T any](parallel int, flush func(ctx context.Context, items []T)) *Coalescer[T] {
	return &Coalescer[T]{flush: flush, parallel: max(parallel, 1)}
}

// Do submits item and returns once its batch was flushed, or with ctx's
// error if ctx ended before the item went into a batch. A ctx that has
// already ended when Do is called submits nothing: Do returns its error at
// once, and item goes in no batch. An item whose batch is in flight is
// always waited for.
func (c *Coalescer[T]) Do(ctx context.Context, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e, _ := c.entries.Get().(*entry[T])
	if e == nil {
		e = &entry[T]{signal: make(chan bool, 2)}
	}
	defer c.release(e)
	e.item = item
	e.deadline, _ = ctx.Deadline()
	c.mu.Lock()
	c.queue = append(c.queue, e)
	if c.active < c.parallel {
		c.active++
		e.leads = true
	}
	lead := e.leads
	c.mu.Unlock()
	if !lead {
		var flushed bool
		select {
		case flushed = <-e.signal:
		case <-ctx.Done():
			if c.withdraw(e) {
				return ctx.Err()
			}
			flushed = <-e.signal // in a batch in flight, or promoted meanwhile
		}
		if flushed {
			return nil
		}
	}
	// This caller holds a slot. Its item is still queued, and goes out in
	// the batch sent now, or another batch in flight took it.
	c.mu.Lock()
	queued := c.queue
	c.queue = nil
	c.mu.Unlock()
	if len(queued) > 0 {
		items := make([]T, len(queued))
		var latest time.Time
		bounded := true // every caller has a deadline
		for i, q := range queued {
			items[i] = q.item
			bounded = bounded && !q.deadline.IsZero()
			if q.deadline.After(latest) {
				latest = q.deadline
			}
		}
		fctx := context.WithoutCancel(ctx)
		if bounded {
			var cancel context.CancelFunc
			fctx, cancel = context.WithDeadline(fctx, latest)
			defer cancel()
		}
		c.flush(fctx, items)
	}
	// The slot first: the next batch goes out while this one's callers wake
	// (or, when another batch took this caller's item, while it waits).
	c.handOver()
	for _, q := range queued {
		q.signal <- true
	}
	<-e.signal // flushed: the only signal left for a caller that holds a slot
	return nil
}

// release readies e for another call and pools it.
func (c *Coalescer[T]) release(e *entry[T]) {
	var zero T
	e.item, e.deadline, e.leads = zero, time.Time{}, false
	c.entries.Put(e)
}

// withdraw removes a waiting entry from the queue, unless it was promoted
// or taken into a batch; it reports whether it removed it.
func (c *Coalescer[T]) withdraw(e *entry[T]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.leads {
		return false
	}
	i := slices.Index(c.queue, e)
	if i < 0 {
		return false
	}
	c.queue = slices.Delete(c.queue, i, i+1)
	return true
}

// handOver gives the caller's slot to the oldest queued caller that holds
// none (a caller that took a free slot is queued too until it sends its
// batch: handing it a second slot would lose one), or frees it.
func (c *Coalescer[T]) handOver() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.queue {
		if !e.leads {
			e.leads = true
			e.signal <- false
			return
		}
	}
	c.active--
}

// Pipeline coalesces the Redis calls made through Do into pipelines, two in
// flight at most. Make one with New.
type Pipeline struct {
	client redis.UniversalClient
	calls  *Coalescer[func(redis.Pipeliner)]
}

// New returns a pipeline on client.
func New(client redis.UniversalClient) *Pipeline {
	p := &Pipeline{client: client}
	p.calls = NewCoalescer(2, p.send)
	return p
}

// Do queues the commands fill adds to its pipeliner and returns once they
// have their replies (read them from the commands fill kept), or ctx ended.
// The commands of a caller whose ctx ended may still run.
func (p *Pipeline) Do(ctx context.Context, fill func(redis.Pipeliner)) error {
	return p.calls.Do(ctx, fill)
}

// send runs one pipeline for fills. Per-command errors stay on the
// commands; a connection error is on every one of them.
func (p *Pipeline) send(ctx context.Context, fills []func(redis.Pipeliner)) {
	_, _ = p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, fill := range fills {
			fill(pipe)
		}
		return nil
	})
}

// Script runs s in the next pipeline and returns its reply. Scripts go out
// as EVALSHA; one that Redis does not know yet (first use, or a restarted
// server) is run again on its own with EVAL, which also loads it.
func (p *Pipeline) Script(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	var cmd *redis.Cmd
	if err := p.Do(ctx, func(pipe redis.Pipeliner) { cmd = s.EvalSha(ctx, pipe, keys, args...) }); err != nil {
		cmd = redis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		return s.Eval(ctx, p.client, keys, args...)
	}
	return cmd
}
