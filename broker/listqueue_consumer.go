package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// Bounds of one blocking wait (see Fetch).
const (
	minBlock        = 5 * time.Millisecond
	multiQueueBlock = 50 * time.Millisecond
	giveBackTimeout = 5 * time.Second
)

// lqConsumer is a consumer of a ListQueue. Its id names its in-flight lists
// (P:{q}:wip:<id>) and its entries in the queues' consumers sets.
type lqConsumer struct {
	b      *ListQueue
	id     string
	queues []string
	next   atomic.Uint32 // rotates the queue taken from first and blocked on

	// life ends when the consumer is closed or the context given to Consume
	// ends: the heartbeat stops and Fetch fails.
	life   context.Context
	end    context.CancelFunc
	hbDone chan struct{} // closed when the heartbeat goroutine returns

	mu       sync.Mutex
	closed   bool           // Close was called
	released bool           // Close handed back the consumer's tasks
	busy     sync.WaitGroup // Fetch calls and their BLMOVEs in progress

	// held counts, by queue and task id, the deliveries Fetch returned and
	// that are not settled yet. An id in the consumer's in-flight list that
	// held does not know is an orphan: moved there by a take or a BLMOVE
	// whose reply was lost (a connection dropped after Redis ran it, which
	// go-redis may even retry, moving more). See recoverOrphans.
	heldMu     sync.Mutex
	held       map[string]map[string]int
	recoverAt  time.Time // when recoverOrphans is due next; zero: not scheduled yet
	recoverNow bool      // a take or BLMOVE failed: recoverOrphans is due at once
	// moves is held shared by every take and BLMOVE, from before the call
	// until the ids it moved are in held (or given back), and exclusively,
	// with TryLock only, by recoverOrphans: it never takes an id on its way
	// into held for an orphan. Nobody calls Lock, so shared holders may
	// nest.
	moves sync.RWMutex
}

// hold records ds as held.
func (c *lqConsumer) hold(ds []*Delivery) {
	c.heldMu.Lock()
	defer c.heldMu.Unlock()
	if c.held == nil {
		c.held = make(map[string]map[string]int)
	}
	for _, d := range ds {
		if c.held[d.Queue] == nil {
			c.held[d.Queue] = make(map[string]int)
		}
		c.held[d.Queue][d.ID]++
	}
}

// settled forgets ds, settled by the broker.
func (c *lqConsumer) settled(ds ...*Delivery) {
	c.heldMu.Lock()
	defer c.heldMu.Unlock()
	for _, d := range ds {
		if n := c.held[d.Queue][d.ID]; n > 1 {
			c.held[d.Queue][d.ID] = n - 1
		} else {
			delete(c.held[d.Queue], d.ID)
		}
	}
}

// recoverDue makes recoverOrphans run at the next Fetch round.
func (c *lqConsumer) recoverDue() {
	c.heldMu.Lock()
	c.recoverNow = true
	c.heldMu.Unlock()
}

// recoverOrphans delivers the orphans of the consumer's in-flight lists
// (ids there that no delivery holds), at most limit: every heartbeat
// interval, and at once after a failed take or BLMOVE. Without it they
// would stay in flight, never run, until the consumer closes or dies.
// It skips its turn while a take or BLMOVE is under way.
func (c *lqConsumer) recoverOrphans(ctx context.Context, limit int) ([]*Delivery, error) {
	c.heldMu.Lock()
	now := time.Now()
	if c.recoverAt.IsZero() {
		c.recoverAt = now.Add(c.b.hbInterval)
	}
	due := c.recoverNow || !now.Before(c.recoverAt)
	c.heldMu.Unlock()
	if !due || !c.moves.TryLock() {
		return nil, nil
	}
	defer c.moves.Unlock()
	for _, q := range c.queues {
		ids, err := c.b.client.LRange(ctx, c.wip(q), 0, -1).Result()
		if err != nil {
			return nil, fmt.Errorf("kiq: fetch: %w", err)
		}
		c.heldMu.Lock()
		var orphans []string
		tokens := 0
		for _, id := range ids {
			if c.held[q][id] == 0 && len(orphans)-tokens < limit {
				orphans = append(orphans, id)
				if id == "" {
					tokens++
				}
			}
		}
		c.heldMu.Unlock()
		if len(orphans) == 0 {
			continue
		}
		// A limit of 0: the orphans still there, and nothing from pending. An
		// id settled since LRANGE is gone from the list, and take skips it.
		ds, _, err := c.take(ctx, q, 0, orphans...)
		if err != nil {
			return nil, err
		}
		if len(ds) > 0 {
			c.b.log.Warn("kiq: tasks left in this consumer's in-flight list by a lost reply are delivered again",
				slog.String("queue", q), slog.String("consumer", c.id), slog.Int("tasks", len(ds)))
			return ds, nil
		}
	}
	c.heldMu.Lock()
	c.recoverAt, c.recoverNow = time.Now().Add(c.b.hbInterval), false
	c.heldMu.Unlock()
	return nil, nil
}

// wipKey is consumer's in-flight list on queue; landKey the list its
// BLMOVE moves an id into for the take.lua behind it (a BLMOVE that timed
// out moved nothing: take cannot tell it from the in-flight list alone).
func (b *ListQueue) wipKey(queue, consumer string) string  { return b.key(queue, "wip:"+consumer) }
func (b *ListQueue) landKey(queue, consumer string) string { return b.key(queue, "land:"+consumer) }

func (c *lqConsumer) wip(queue string) string  { return c.b.wipKey(queue, c.id) }
func (c *lqConsumer) land(queue string) string { return c.b.landKey(queue, c.id) }

// reapKeys are reap.lua's KEYS for consumer on queue.
func (b *ListQueue) reapKeys(queue, consumer string) []string {
	return []string{b.wipKey(queue, consumer), b.key(queue, "pending"), b.key(queue, "consumers"), b.key(queue, "msg"), b.landKey(queue, consumer)}
}

// lifeErr is Fetch's error once the consumer's life ended.
func (c *lqConsumer) lifeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrConsumerClosed
	}
	return fmt.Errorf("%w: the context given to Consume ended", ErrConsumerClosed)
}

// heartbeats renews the consumer's deadline every interval, and reaps dead
// consumers, until the consumer's life ends. Failures are logged once per
// outage and retried at the next tick.
func (c *lqConsumer) heartbeats() {
	defer close(c.hbDone)
	t := time.NewTicker(c.b.hbInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-c.life.Done():
			return
		case <-t.C:
		}
		err := c.heartbeat(c.life)
		switch {
		case c.life.Err() != nil:
			return
		case err != nil && !failing:
			c.b.log.Warn("kiq: consumer heartbeat failed; retrying", slog.String("consumer", c.id), slog.Any("error", err))
			failing = true
		case err == nil && failing:
			c.b.log.Info("kiq: consumer heartbeat recovered", slog.String("consumer", c.id))
			failing = false
		}
	}
}

// heartbeat renews the consumer's deadline on each of its queues and
// redelivers the tasks of the consumers found dead there.
func (c *lqConsumer) heartbeat(ctx context.Context) error {
	ttl := c.b.hbTTL.Milliseconds()
	for _, q := range c.queues {
		dead, err := heartbeatScript.Run(ctx, c.b.client, []string{c.b.key(q, "consumers")}, c.id, ttl).StringSlice()
		if err != nil {
			return fmt.Errorf("kiq: heartbeat: %w", err)
		}
		for _, d := range dead {
			if err := c.reap(ctx, q, d); err != nil {
				return err
			}
		}
	}
	return nil
}

// reap redelivers the tasks of the consumer dead on queue q, if it is still
// dead.
func (c *lqConsumer) reap(ctx context.Context, q, dead string) error {
	n, err := reapScript.Run(ctx, c.b.client, c.b.reapKeys(q, dead), dead, "1").Int()
	if err != nil {
		return fmt.Errorf("kiq: reap: %w", err)
	}
	if n > 0 {
		c.b.log.Warn("kiq: consumer died; its tasks are delivered again",
			slog.String("queue", q), slog.String("consumer", dead), slog.Int("tasks", n))
	}
	return nil
}

// enter counts a Fetch in, unless the consumer is closed.
func (c *lqConsumer) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrConsumerClosed
	}
	c.busy.Add(1)
	return nil
}

// Fetch takes up to limit tasks, blocking until one is ready.
//
// It first runs take.lua on each queue in turn (a different queue first on
// each call, so that a busy queue does not starve the others). When all are
// empty it blocks in BLMOVE on one queue, with take.lua in the same
// pipeline, so that a task pushed there is delivered in the round trip that
// waited for it. BLMOVE waits at most until the earliest scheduled task is due,
// clamped to [5 ms, 1 s] (see block). Consuming several queues, it blocks
// on one at a time, in rotation, for at most 50 ms: Redis has no blocking
// move from several lists, so a task on another queue may wait up to that
// long (plus a round trip per queue); a consumer per queue avoids it.
func (c *lqConsumer) Fetch(ctx context.Context, limit int) ([]*Delivery, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.busy.Done()
	limit = max(limit, 1)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if c.life.Err() != nil {
			return nil, c.lifeErr()
		}
		ds, err := c.recoverOrphans(ctx, limit)
		if err == nil && len(ds) == 0 {
			ds, err = c.fetchRound(ctx, limit)
		}
		if err != nil {
			if ctx.Err() == nil {
				c.recoverDue() // the failed call may have moved ids all the same
			}
			return nil, err
		}
		if len(ds) > 0 {
			return ds, nil
		}
	}
}

// fetchRound takes from the queues, or blocks on one of them once; no
// deliveries and no error means: go round again.
func (c *lqConsumer) fetchRound(ctx context.Context, limit int) ([]*Delivery, error) {
	c.moves.RLock()
	defer c.moves.RUnlock()
	first := int(c.next.Add(1) % uint32(len(c.queues)))
	ds, wait, err := c.takeAny(ctx, first, limit)
	if err != nil || len(ds) > 0 {
		return ds, err
	}
	// No deliveries and no error: the wait ended (a scheduled task may be
	// due), or a wake-up token came (one was scheduled earlier: wait less).
	ds, err = c.block(ctx, c.queues[first], limit, c.blockFor(ctx, wait))
	c.hold(ds)
	return ds, err
}

// takeAny runs take on every queue from the first-th until one returns
// tasks. wait is the time until the earliest scheduled task is due, or -1.
func (c *lqConsumer) takeAny(ctx context.Context, first, limit int) (ds []*Delivery, wait time.Duration, err error) {
	wait = -1
	for i := range c.queues {
		q := c.queues[(first+i)%len(c.queues)]
		ds, next, err := c.take(ctx, q, limit)
		if err != nil || len(ds) > 0 {
			return ds, 0, err
		}
		if next >= 0 && (wait < 0 || next < wait) {
			wait = next
		}
	}
	return nil, wait, nil
}

// blockFor is how long to block in BLMOVE given the time until the next
// scheduled task (-1: none) and ctx's deadline.
func (c *lqConsumer) blockFor(ctx context.Context, wait time.Duration) time.Duration {
	d := c.b.maxBlock
	if len(c.queues) > 1 {
		d = min(d, multiQueueBlock)
	}
	if wait >= 0 {
		d = min(d, wait)
	}
	if deadline, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(deadline))
	}
	return max(d, minBlock)
}

// take runs take.lua on queue q: due scheduled tasks are queued, then up to
// limit tasks (the claimed ones first) are returned, and held, with how long
// until the next scheduled task is due (-1: none). The caller holds moves.
func (c *lqConsumer) take(ctx context.Context, q string, limit int, claimed ...string) ([]*Delivery, time.Duration, error) {
	keys, args := c.takeArgs(q, limit, claimed)
	res, err := takeScript.Run(ctx, c.b.client, keys, args...).Slice()
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		return nil, 0, fmt.Errorf("kiq: fetch: %w", err)
	}
	ds, wait, err := parseTake(c.b.formatter, c.b.maxSize, q, res)
	c.hold(ds)
	return ds, wait, err
}

// takeArgs are take.lua's KEYS and ARGV.
func (c *lqConsumer) takeArgs(q string, limit int, claimed []string) ([]string, []any) {
	keys := []string{c.b.key(q, "pending"), c.wip(q), c.b.key(q, "msg"), c.b.key(q, "scheduled"), c.b.key(q, "consumers"), c.land(q)}
	args := make([]any, 0, 3+len(claimed))
	args = append(args, c.id, c.b.hbTTL.Milliseconds(), limit)
	for _, id := range claimed {
		args = append(args, id)
	}
	return keys, args
}

// parseTake decodes take.lua's reply: {wait ms, {id, message, ...}}. A
// message over maxSize is not decoded: its delivery carries the error.
func parseTake(f Formatter, maxSize int, q string, res []any) ([]*Delivery, time.Duration, error) {
	var ms int64
	var pairs []any
	ok := len(res) == 2
	if ok {
		ms, ok = res[0].(int64)
	}
	if ok {
		pairs, ok = res[1].([]any)
	}
	if !ok {
		return nil, 0, fmt.Errorf("kiq: fetch: unexpected reply %v", res)
	}
	wait := time.Duration(ms) * time.Millisecond
	if ms < 0 {
		wait = -1
	}
	ds := make([]*Delivery, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		id, _ := pairs[i].(string)
		raw, _ := pairs[i+1].(string)
		var d *Delivery
		if len(raw) > maxSize {
			d = &Delivery{Queue: q, Raw: []byte(raw), Err: fmt.Errorf("%w: %d bytes, the limit is %d", ErrMalformed, len(raw), maxSize)}
		} else {
			d = decodeDelivery(f, q, []byte(raw))
		}
		d.ID = id
		ds = append(ds, d)
	}
	return ds, wait, nil
}

// blocked is the outcome of one BLMOVE and the take behind it.
type blocked struct {
	ds  []*Delivery
	err error
}

// block waits in BLMOVE for an id on queue q, for up to wait, and takes it
// (with up to limit tasks in all) by the take.lua sent behind it in one
// pipeline: Redis runs the take as soon as the BLMOVE is served, or timed
// out. The deliveries are not held yet.
//
// The pipeline runs in a goroutine, for two reasons: go-redis does not
// interrupt a command when its context is cancelled, so block returns as
// soon as ctx or the consumer's life ends; and Redis checks blocking
// timeouts only on its cron tick (every 100 ms at the default hz 10), so a
// wait shorter than maxBlock (a scheduled task due soon, several queues)
// ends on a client-side timer, on time. An abandoned pipeline goes on for at
// most its timeout and a tick, and hands back what it takes. Close waits for
// it.
func (c *lqConsumer) block(ctx context.Context, q string, limit int, wait time.Duration) ([]*Delivery, error) {
	got := make(chan blocked) // unbuffered: a result is either received or handed back
	gaveUp := make(chan struct{})
	c.busy.Add(1) // within a Fetch's count, so Close waits for it
	// Within the Fetch's, until the result is received (unlocked here: were
	// blmove to unlock after its send, the Fetch's next recoverOrphans could
	// find moves still locked and skip its turn) or given back (by blmove).
	c.moves.RLock()
	go c.blmove(ctx, q, limit, wait, got, gaveUp)
	var timeout <-chan time.Time
	if wait < c.b.maxBlock {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case r := <-got:
		c.moves.RUnlock()
		return r.ds, r.err
	case <-timeout:
		close(gaveUp)
		return nil, nil
	case <-ctx.Done():
		close(gaveUp)
		return nil, ctx.Err()
	case <-c.life.Done():
		close(gaveUp)
		return nil, c.lifeErr()
	}
}

func (c *lqConsumer) blmove(ctx context.Context, q string, limit int, wait time.Duration, got chan<- blocked, gaveUp <-chan struct{}) {
	defer c.busy.Done()
	ctx = context.WithoutCancel(ctx)
	secs := strconv.FormatFloat(wait.Seconds(), 'f', 3, 64)
	keys, args := c.takeArgs(q, limit, nil)
	var move, take *redis.Cmd
	_, _ = c.b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		move = p.Do(ctx, "BLMOVE", c.b.key(q, "pending"), c.land(q), "RIGHT", "LEFT", secs)
		take = takeScript.EvalSha(ctx, p, keys, args...)
		return nil
	})
	var r blocked
	res, err := take.Slice()
	switch {
	case err == nil:
		r.ds, _, r.err = parseTake(c.b.formatter, c.b.maxSize, q, res)
	case redis.HasErrorPrefix(err, "NOSCRIPT"):
		// A new or restarted server: the next round's take (EVAL) loads the
		// script and delivers what the BLMOVE landed.
	case move.Err() != nil && !errors.Is(move.Err(), redis.Nil):
		r.err = fmt.Errorf("kiq: fetch: %w", move.Err())
	default:
		r.err = fmt.Errorf("kiq: fetch: %w", err)
	}
	select {
	case got <- r: // block unlocks moves
	case <-gaveUp:
		c.giveBack(q, r.ds)
		c.moves.RUnlock()
	}
}

// giveBack returns to the head of q the tasks taken for a Fetch that gave
// up. If it fails, they stay in flight until recoverOrphans delivers them.
func (c *lqConsumer) giveBack(q string, ds []*Delivery) {
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
	defer cancel()
	ids := make([]any, len(ds))
	for i, d := range ds {
		ids[i] = d.ID
	}
	if err := handBackScript.Run(ctx, c.b.client, []string{c.wip(q), c.b.key(q, "pending")}, ids...).Err(); err != nil {
		c.b.log.Warn("kiq: handing back tasks taken after their Fetch ended failed; they are delivered again later",
			slog.String("queue", q), slog.Int("tasks", len(ds)), slog.Any("error", err))
		c.recoverDue()
	}
}

// Ack settles deliveries as done: one ack.lua per queue, all in one round
// trip. Settling a delivery the consumer no longer holds (it was delivered
// again after the consumer was taken for dead) does nothing. The locks the
// script released are reported through their Lock.Released.
func (c *lqConsumer) Ack(ctx context.Context, ds ...*Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	type call struct {
		keys []string
		args []any
		ds   []*Delivery
		cmd  *redis.Cmd
	}
	var queues []string
	calls := map[string]*call{}
	for _, d := range ds {
		cl := calls[d.Queue]
		if cl == nil {
			cl = &call{keys: []string{c.wip(d.Queue), c.b.key(d.Queue, "msg")}}
			calls[d.Queue] = cl
			queues = append(queues, d.Queue)
		}
		lock := 0
		if l := d.unlock(); l != nil && c.b.LocksAtomically(l.Client) {
			cl.keys = append(cl.keys, l.Key)
			lock = len(cl.keys)
		}
		cl.args = append(cl.args, d.ID, lock)
		cl.ds = append(cl.ds, d)
	}
	var err error
	if len(queues) == 1 {
		cl := calls[queues[0]]
		cl.cmd = ackScript.Run(ctx, c.b.client, cl.keys, cl.args...)
		err = cl.cmd.Err()
	} else {
		err = c.b.pipelineScript(ctx, ackScript, func(p redis.Pipeliner) {
			for _, q := range queues {
				calls[q].cmd = ackScript.EvalSha(ctx, p, calls[q].keys, calls[q].args...)
			}
		})
	}
	if err != nil {
		return fmt.Errorf("kiq: ack: %w", err)
	}
	for _, q := range queues {
		cl := calls[q]
		res, _ := cl.cmd.Slice()
		for _, v := range res[min(1, len(res)):] {
			if i, ok := v.(int64); ok && i >= 1 && int(i) <= len(cl.ds) {
				if l := cl.ds[i-1].unlock(); l != nil && l.Released != nil {
					l.Released()
				}
			}
		}
	}
	c.settled(ds...)
	return nil
}

// HandBack returns deliveries to the head of their queues, the first to be
// taken first: one handback.lua per queue, all in one round trip.
func (c *lqConsumer) HandBack(ctx context.Context, ds ...*Delivery) error {
	err := c.perQueue(ctx, "hand back", handBackScript, ds, func(q string) []string {
		return []string{c.wip(q), c.b.key(q, "pending")}
	})
	if err == nil {
		c.settled(ds...)
	}
	return err
}

// queueIDs are the ids of the deliveries of one queue, in order.
type queueIDs struct {
	queue string
	ids   []any
}

func groupByQueue(ds []*Delivery) []queueIDs {
	var groups []queueIDs
	for _, d := range ds {
		i := slices.IndexFunc(groups, func(g queueIDs) bool { return g.queue == d.Queue })
		if i < 0 {
			groups = append(groups, queueIDs{queue: d.Queue, ids: make([]any, 0, len(ds))})
			i = len(groups) - 1
		}
		groups[i].ids = append(groups[i].ids, d.ID)
	}
	return groups
}

// perQueue runs script once per queue of ds, with keys(queue) and the ids
// of that queue's deliveries: one round trip whatever the count.
func (c *lqConsumer) perQueue(ctx context.Context, what string, script *redis.Script, ds []*Delivery, keys func(string) []string) error {
	if len(ds) == 0 {
		return nil
	}
	groups := groupByQueue(ds)
	var err error
	if len(groups) == 1 {
		err = script.Run(ctx, c.b.client, keys(groups[0].queue), groups[0].ids...).Err()
	} else {
		err = c.b.pipelineScript(ctx, script, func(p redis.Pipeliner) {
			for _, g := range groups {
				script.EvalSha(ctx, p, keys(g.queue), g.ids...)
			}
		})
	}
	if err != nil {
		return fmt.Errorf("kiq: %s: %w", what, err)
	}
	return nil
}

// pipelineScript sends fill's EVALSHAs of script in one pipeline, loading
// the script and sending them again when Redis does not know it (after a
// restart). The scripts must be safe to run twice.
func (b *ListQueue) pipelineScript(ctx context.Context, script *redis.Script, fill func(redis.Pipeliner)) error {
	send := func(p redis.Pipeliner) error { fill(p); return nil }
	_, err := b.client.Pipelined(ctx, send)
	if err == nil || !redis.HasErrorPrefix(err, "NOSCRIPT") {
		return err
	}
	if err := script.Load(ctx, b.client).Err(); err != nil {
		return err
	}
	_, err = b.client.Pipelined(ctx, send)
	return err
}

// Retry settles d and sends msg again: scheduled after delay, or at the
// tail of the queue when delay <= 0.
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
	c.settled(d)
	return nil
}

// DeadLetter settles d by recording it, with reason, in its queue's
// dead-letter list (newest first, capped by WithDeadLetterLimit). The dead
// letter keeps the task id even when the message did not decode. A lock the
// script released is reported through its Lock.Released. When the cap makes
// the list drop its oldest entries, a warning says how many.
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
	if l := d.unlock(); l != nil && c.b.LocksAtomically(l.Client) {
		keys = append(keys, l.Key)
	}
	res, err := deadScript.Run(ctx, c.b.client, keys, d.ID, entry, c.b.deadLimit).Int64Slice()
	if err != nil {
		return fmt.Errorf("kiq: dead letter: %w", err)
	}
	if l := d.unlock(); len(res) == 2 && res[0] == 2 && l != nil && l.Released != nil {
		l.Released()
	}
	c.settled(d)
	if len(res) == 2 && res[1] > 0 {
		c.b.log.Warn("kiq: the dead-letter list is full; its oldest entries were dropped",
			slog.String("queue", q), slog.Int64("dropped", res[1]), slog.Int("limit", c.b.deadLimit))
	}
	return nil
}

// Close stops the heartbeat and any Fetch in progress, hands back every
// task the consumer still holds and deregisters it. If Redis cannot be
// reached, Close fails and may be called again; otherwise the consumer's
// tasks are delivered again once its heartbeat TTL passes.
func (c *lqConsumer) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.end()
	c.busy.Wait()
	<-c.hbDone

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.released {
		return nil
	}
	var errs []error
	for _, q := range c.queues {
		if err := reapScript.Run(ctx, c.b.client, c.b.reapKeys(q, c.id), c.id, "0").Err(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("kiq: close consumer: %w", errors.Join(errs...))
	}
	c.released = true
	return nil
}
