// Package kicker builds and sends task messages: the Kicker[Args] builder
// behind task.Task's Kiq and Kicker methods.
package kicker

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
)

// Target is the task a kicker sends: its broker, name and task-level labels.
// task.Define builds one per task; kickers made from it share it.
type Target struct {
	// Broker sends the messages.
	Broker broker.Broker
	// Name is the task's name.
	Name string
	// Labels are the task-level labels (struct tags merged with Define's).
	Labels broker.Labels

	chainOnce sync.Once
	chain     *middleware.Chain
}

// Chain returns the middleware chain of the target's broker, built on first
// use: middlewares registered on the broker after a task's first kick do not
// run for that task's kicks.
func (t *Target) Chain() *middleware.Chain {
	t.chainOnce.Do(func() { t.chain = middleware.NewChain(t.Broker.Middlewares()) })
	return t.chain
}

// Kicker builds one kick of a task with arguments of type Args. Its With
// methods return a new Kicker, so a Kicker can be kept and reused.
type Kicker[Args any] struct {
	target *Target
	labels broker.Labels
	taskID string
	eta    time.Time
	hasETA bool // WithETA was called after any delay label
}

// New returns a kicker of t.
func New[Args any](t *Target) *Kicker[Args] {
	return &Kicker[Args]{target: t}
}

// WithLabels returns a kicker whose call-level labels are k's overridden by
// labels. Call-level labels win over task-level ones. A delay label in
// labels replaces an earlier WithETA, as WithDelay does.
func (k *Kicker[Args]) WithLabels(labels broker.Labels) *Kicker[Args] {
	c := *k
	c.labels = maps.Clone(k.labels)
	if c.labels == nil {
		c.labels = make(broker.Labels, len(labels))
	}
	maps.Copy(c.labels, labels)
	if _, ok := labels[broker.LabelDelay]; ok {
		c.eta, c.hasETA = time.Time{}, false
	}
	return &c
}

// WithTaskID returns a kicker that sends the task under id instead of a
// random one. KiqMany of more than one task numbers it: id-0, id-1, ...
func (k *Kicker[Args]) WithTaskID(id string) *Kicker[Args] {
	c := *k
	c.taskID = id
	return &c
}

// WithDelay returns a kicker whose task is delivered no earlier than d after
// the kick (the delay label). WithDelay and WithETA set the same thing: the
// last one called wins.
func (k *Kicker[Args]) WithDelay(d time.Duration) *Kicker[Args] {
	return k.WithLabels(broker.Labels{broker.LabelDelay: d})
}

// WithETA returns a kicker whose task is delivered no earlier than t (the
// delay label, computed when Kiq is called). A time in the past means now.
// WithETA and WithDelay (or a delay label given to WithLabels) set the same
// thing: the last one called wins.
func (k *Kicker[Args]) WithETA(t time.Time) *Kicker[Args] {
	c := *k
	if _, ok := k.labels[broker.LabelDelay]; ok {
		c.labels = maps.Clone(k.labels)
		delete(c.labels, broker.LabelDelay)
	}
	c.eta, c.hasETA = t, true
	return &c
}

// Handle refers to a kicked task.
type Handle struct {
	taskID string
}

// TaskID returns the id of the sent task.
func (h *Handle) TaskID() string { return h.taskID }

// Kiq sends the task with args. The error wraps the cause, so errors.Is and
// errors.As reach a middleware's error (a duplicate, say), a label error
// (broker.ErrBadLabel) or the broker's. A ctx that has already ended sends
// nothing: the message is not built, no send hook runs, and the error wraps
// ctx's.
func (k *Kicker[Args]) Kiq(ctx context.Context, args Args) (*Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, kickError(k.target.Name, err)
	}
	msg, err := k.Message(args)
	if err != nil {
		return nil, err
	}
	t := k.target
	if err := t.Chain().Send(ctx, msg, t.Broker.Kick); err != nil {
		return nil, kickError(t.Name, err)
	}
	return &Handle{taskID: msg.TaskID}, nil
}

// KiqMany sends one task per element of args, in bulk: the middlewares'
// send hooks run for each, and the broker sends them together where it can
// (the Redis broker: one round trip per thousand). It returns a handle per
// task that was sent, and an error per task that was not (nil where it
// was), in the order of args.
//
// Task ids must differ, so with WithTaskID(id) and more than one element
// the task of args[i] is sent as id + "-" + i ("id-0", "id-1", ...); with
// exactly one element it is sent as id, as Kiq would.
//
// More than manyChunk tasks go in chunks, one after the other in the order
// of args: the next chunk's messages are built, and their send hooks run,
// while the broker sends the one before. A chunk not started when ctx ends
// is not built; its tasks get ctx's error. A hook's panic reaches the
// caller once the chunks under way are done; no chunk starts after it.
func (k *Kicker[Args]) KiqMany(ctx context.Context, args []Args) ([]*Handle, []error) {
	handles := make([]*Handle, len(args))
	errs := make([]error, len(args))
	if err := ctx.Err(); err != nil { // as Kiq: nothing built, no hook run
		for i := range errs {
			errs[i] = kickError(k.target.Name, err)
		}
		return handles, errs
	}
	if len(args) <= manyChunk {
		k.kiqRange(ctx, args, 0, len(args), handles, errs, k.kickMany)
	} else {
		k.kiqChunks(ctx, args, handles, errs)
	}
	return handles, errs
}

// manyChunk is how many tasks KiqMany builds and sends at a time.
const manyChunk = 10000

// kickMany sends msgs through the task's broker, in bulk where it can.
func (k *Kicker[Args]) kickMany(ctx context.Context, msgs []*broker.Message) []error {
	return broker.KickMany(ctx, k.target.Broker, msgs)
}

// kiqRange builds the messages of args[start:end], passes them through the
// middleware chain to send, and fills in their handles and errs.
func (k *Kicker[Args]) kiqRange(ctx context.Context, args []Args, start, end int, handles []*Handle, errs []error, send func(context.Context, []*broker.Message) []error) {
	t := k.target
	msgs := make([]*broker.Message, 0, end-start)
	at := make([]int, 0, end-start)
	for i := start; i < end; i++ {
		m, err := k.Message(args[i])
		if err != nil {
			errs[i] = err
			continue
		}
		if k.taskID != "" && len(args) > 1 {
			m.TaskID = fmt.Sprintf("%s-%d", k.taskID, i)
		}
		msgs = append(msgs, m)
		at = append(at, i)
	}
	sendErrs := t.Chain().SendMany(ctx, msgs, send)
	for j, m := range msgs {
		if err := sendErrs[j]; err != nil {
			errs[at[j]] = kickError(t.Name, err)
			continue
		}
		handles[at[j]] = &Handle{taskID: m.TaskID}
	}
}

// kiqChunks is KiqMany in chunks of manyChunk, each on a goroutine of its
// own, two at most under way: one chunk's send hooks run only once the
// chunk before's have, its send once the chunk before was sent, and its
// post-send hooks once the chunk before's have run.
func (k *Kicker[Args]) kiqChunks(ctx context.Context, args []Args, handles []*Handle, errs []error) {
	var wg sync.WaitGroup
	var stopped atomic.Bool
	panics := make([]any, (len(args)+manyChunk-1)/manyChunk)
	prev := closedTurn()
	for c := range panics {
		start, end := c*manyChunk, min((c+1)*manyChunk, len(args))
		<-prev.built
		<-prev.prev.finished // at most two chunks under way
		if stopped.Load() {
			break
		}
		if err := ctx.Err(); err != nil {
			for i := start; i < len(args); i++ {
				errs[i] = kickError(k.target.Name, err)
			}
			break
		}
		cur := newTurn(prev)
		wg.Go(func() {
			defer func() {
				if r := recover(); r != nil {
					panics[c] = r
					stopped.Store(true)
				}
				cur.end()
			}()
			k.kiqRange(ctx, args, start, end, handles, errs, func(ctx context.Context, msgs []*broker.Message) []error {
				cur.closeBuilt()
				<-cur.prev.sent
				sendErrs := k.kickMany(ctx, msgs)
				cur.closeSent()
				<-cur.prev.finished
				return sendErrs
			})
		})
		prev = cur
	}
	wg.Wait()
	for _, r := range panics {
		if r != nil {
			panic(r)
		}
	}
}

// turn orders a chunk of a KiqMany after the chunk before, prev: each of
// its channels is closed once the chunk has passed that step, never before
// prev's.
type turn struct {
	prev     *turn
	built    chan struct{} // its send hooks ran
	sent     chan struct{} // the broker has its messages
	finished chan struct{} // its post-send hooks ran

	closeBuilt, closeSent func()
}

func newTurn(prev *turn) *turn {
	t := &turn{prev: prev, built: make(chan struct{}), sent: make(chan struct{}), finished: make(chan struct{})}
	t.closeBuilt = sync.OnceFunc(func() { close(t.built) })
	t.closeSent = sync.OnceFunc(func() { <-prev.sent; close(t.sent) })
	return t
}

// closedTurn is the turn before the first chunk's, and its own prev.
func closedTurn() *turn {
	t := newTurn(nil)
	t.prev = t
	close(t.built)
	close(t.sent)
	close(t.finished)
	return t
}

// end closes what the chunk has not closed yet, when it is done or
// panicked, each after prev's.
func (t *turn) end() {
	t.closeBuilt()
	t.closeSent()
	<-t.prev.finished
	close(t.finished)
}

// Message builds the message Kiq would send for args, without sending it.
func (k *Kicker[Args]) Message(args Args) (*broker.Message, error) {
	t := k.target
	call := k.labels
	if k.hasETA {
		call = maps.Clone(call)
		if call == nil {
			call = broker.Labels{}
		}
		call[broker.LabelDelay] = max(time.Until(k.eta), 0)
	}
	labels, err := t.Labels.Merge(call)
	if err != nil {
		return nil, kickError(t.Name, err)
	}
	raw, err := t.Broker.Formatter().EncodeArgs(args)
	if err != nil {
		return nil, kickError(t.Name, err)
	}
	id := k.taskID
	if id == "" {
		id = broker.NewTaskID()
	}
	return &broker.Message{
		TaskID:     id,
		TaskName:   t.Name,
		Labels:     labels,
		Args:       raw,
		EnqueuedAt: time.Now().UnixMilli(),
	}, nil
}

// kickError wraps err, the cause of a failed kick of the task name, so that
// it reads "kiq: kick NAME: cause" once: a cause that already starts so
// (the Redis broker's own errors) is returned as it is, and the "kiq: "
// prefix of any other cause is not repeated. errors.Is and errors.As reach
// the cause either way.
func kickError(name string, err error) error {
	prefix := "kiq: kick " + name + ": "
	if strings.HasPrefix(err.Error(), prefix) {
		return err
	}
	return &wrapped{msg: prefix + strings.TrimPrefix(err.Error(), "kiq: "), err: err}
}

// wrapped is an error with its own text that unwraps to its cause.
type wrapped struct {
	msg string
	err error
}

func (e *wrapped) Error() string { return e.msg }
func (e *wrapped) Unwrap() error { return e.err }
