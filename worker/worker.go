// Package worker runs tasks: a Worker takes deliveries from a broker,
// runs each through the broker's middleware chain and the task's handler,
// and settles it.
//
// The life of a delivery: the fetch loop takes deliveries in batches while
// fewer than Prefetch are held; one of Concurrency goroutines runs it (the
// PreExecute hooks, the handler with the task's timeout label as a context
// deadline and its panic recovered as a *PanicError, then the post hooks);
// then it is settled:
//
//   - success: acknowledged, in batches (one broker call for all the
//     deliveries that finished while the previous call was in flight);
//   - failure with a retry decided by a middleware (see middleware.Retrier):
//     sent again by the broker after the retry's delay, same task id, with its
//     attempt counter raised;
//   - an undecodable message, an unknown task name, arguments of the wrong
//     type, or a final failure: moved to the queue's dead-letter list with
//     the reason. The worker logs it and goes on.
//
// Shutdown (the context given to Run ends, or Shutdown is called): the
// worker stops taking, hands back at once the deliveries it holds but has
// not started (a hand-back is not a failed attempt), waits up to
// ShutdownTimeout for running tasks, then cancels their contexts and waits
// one more second. Tasks still running then are left to the broker, which
// delivers them again: delivery is at least once.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
)

// Options configure a Worker. The zero value of each field means its
// default.
type Options struct {
	// Concurrency is how many tasks run at once. Default 16.
	Concurrency int
	// Prefetch is the most deliveries held at once, running or waiting.
	// Default twice Concurrency; never below Concurrency.
	Prefetch int
	// Queues to consume. Default: the broker's default queue.
	Queues []string
	// ShutdownTimeout is how long shutdown waits for running tasks before
	// cancelling their contexts. Default 10 s.
	ShutdownTimeout time.Duration
	// Logger receives the worker's logs. Default slog.Default().
	Logger *slog.Logger
	// ErrorBackoff is the longest wait between retries of a failing broker
	// call (Redis down, say); waits start at 50 ms and double, with jitter.
	// Default 5 s.
	ErrorBackoff time.Duration
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 2 * o.Concurrency
	}
	o.Prefetch = max(o.Prefetch, o.Concurrency)
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ErrorBackoff <= 0 {
		o.ErrorBackoff = 5 * time.Second
	}
	return o
}

// Worker consumes and runs tasks. Make one with New; Run it once.
type Worker struct {
	b    broker.Broker
	opts Options
	log  *slog.Logger

	stats counters

	mu       sync.Mutex
	shutdown context.CancelFunc // ends the current Run's taking
	done     chan struct{}      // closed when the current Run returns
}

// New returns a worker of b's tasks.
func New(b broker.Broker, opts Options) *Worker {
	opts = opts.withDefaults()
	return &Worker{b: b, opts: opts, log: opts.Logger}
}

// Stats are a worker's counters since it started.
type Stats struct {
	// Done counts tasks that succeeded.
	Done int64
	// Failed counts executions that returned an error or panicked,
	// retried or not.
	Failed int64
	// Retried counts failed executions sent again for another attempt.
	Retried int64
	// DeadLettered counts deliveries moved to a dead-letter list: bad input
	// and final failures.
	DeadLettered int64
	// Running is how many tasks run now.
	Running int64
	// HandedBack counts deliveries returned unstarted at shutdown.
	HandedBack int64
}

type counters struct {
	done, failed, retried, dead, running, handedBack atomic.Int64
}

// Stats returns the current counters.
func (w *Worker) Stats() Stats {
	return Stats{
		Done:         w.stats.done.Load(),
		Failed:       w.stats.failed.Load(),
		Retried:      w.stats.retried.Load(),
		DeadLettered: w.stats.dead.Load(),
		Running:      w.stats.running.Load(),
		HandedBack:   w.stats.handedBack.Load(),
	}
}

// PanicError is a task's recovered panic: the task failed with it, the
// worker went on.
type PanicError struct {
	// Value is what the task panicked with.
	Value any
	// Stack is the goroutine's stack at the panic.
	Stack []byte
}

// Error describes the panic.
func (e *PanicError) Error() string { return fmt.Sprintf("kiq: task panicked: %v", e.Value) }

// ErrRunning is returned by Run when the worker is already running.
var ErrRunning = errors.New("kiq: worker already running")

// Shutdown stops a running worker as the end of Run's context would, and
// waits until Run has returned or ctx ends.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	stop, done := w.shutdown, w.done
	w.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run consumes until ctx ends (or Shutdown is called), then drains
// gracefully and returns nil. It calls the broker's Startup first, retrying
// while the broker is unreachable; it does not call the broker's Shutdown,
// which is the broker owner's to call.
func (w *Worker) Run(ctx context.Context) error {
	takeCtx, stopTaking := context.WithCancel(ctx)
	defer stopTaking()
	w.mu.Lock()
	if w.shutdown != nil {
		w.mu.Unlock()
		return ErrRunning
	}
	done := make(chan struct{})
	w.shutdown, w.done = stopTaking, done
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.shutdown, w.done = nil, nil
		w.mu.Unlock()
		close(done)
	}()

	bo := w.newBackoff()
	if !bo.retry(takeCtx, "start the broker", func() error { return w.b.Startup(takeCtx) }) {
		return nil
	}
	var consumer broker.Consumer
	if !bo.retry(takeCtx, "open a consumer", func() (err error) {
		consumer, err = w.b.Consume(takeCtx, broker.ConsumeOptions{Queues: w.opts.Queues, Prefetch: w.opts.Prefetch})
		return err
	}) {
		return nil
	}
	r := &run{
		w:        w,
		consumer: consumer,
		chain:    middleware.NewChain(w.b.Middlewares()),
		registry: w.b.Registry(),
		slots:    make(chan struct{}, w.opts.Prefetch),
		work:     make(chan *broker.Delivery, w.opts.Prefetch),
		stopped:  make(chan struct{}),
		acks:     newAcker(),
	}
	if h, ok := w.b.(broker.ResultHolder); ok {
		r.results = h.ResultBackend()
	}
	r.taskCtx, r.cancelTasks = context.WithCancel(context.WithoutCancel(ctx))
	defer r.cancelTasks()
	return r.run(takeCtx)
}

// run is the state of one Run.
type run struct {
	w        *Worker
	consumer broker.Consumer
	chain    *middleware.Chain
	registry *broker.Registry
	results  broker.ResultBackend // nil: no results are stored

	slots   chan struct{}         // one token per delivery held
	work    chan *broker.Delivery // fetched, not started
	stopped chan struct{}         // closed when taking stops
	acks    *acker

	taskCtx     context.Context // parent of the tasks' contexts, cancelled after ShutdownTimeout
	cancelTasks context.CancelFunc
	tasks       sync.WaitGroup
}

func (r *run) run(takeCtx context.Context) error {
	w := r.w
	var pool sync.WaitGroup
	for range w.opts.Concurrency {
		pool.Go(r.execLoop)
	}
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); r.acks.loop(r) }()

	r.fetchLoop(takeCtx)
	close(r.stopped)

	// Hand back what was fetched but not started.
	var unstarted []*broker.Delivery
	for {
		select {
		case d := <-r.work:
			unstarted = append(unstarted, d)
			continue
		default:
		}
		break
	}
	r.handBack(unstarted)

	// Wait for running tasks, then cancel them.
	poolDone := make(chan struct{})
	go func() { pool.Wait(); close(poolDone) }()
	select {
	case <-poolDone:
	case <-time.After(w.opts.ShutdownTimeout):
		w.log.Warn("kiq: shutdown timeout: cancelling running tasks", slog.Int64("running", w.stats.running.Load()))
		r.cancelTasks()
		select {
		case <-poolDone:
		case <-time.After(time.Second):
			w.log.Warn("kiq: tasks still running after cancellation are left to the broker's redelivery",
				slog.Int64("running", w.stats.running.Load()))
		}
	}
	r.acks.close()
	select {
	case <-ackDone:
	case <-time.After(5 * time.Second):
		// The broker is failing: stop retrying acks. What was not acked
		// is delivered again.
		r.cancelTasks()
		<-ackDone
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.consumer.Close(ctx); err != nil {
		w.log.Warn("kiq: closing the consumer failed; the broker redelivers what it held", slog.Any("error", err))
	}
	return nil
}

// fetchLoop takes deliveries while slots are free, until takeCtx ends.
func (r *run) fetchLoop(takeCtx context.Context) {
	bo := r.w.newBackoff()
	for {
		// Wait for one free slot, then claim every other free one.
		select {
		case <-takeCtx.Done():
			return
		case r.slots <- struct{}{}:
		}
		n := 1
	claim:
		for n < cap(r.slots) {
			select {
			case r.slots <- struct{}{}:
				n++
			default:
				break claim
			}
		}
		ds, err := r.consumer.Fetch(takeCtx, n)
		for range n - len(ds) {
			<-r.slots
		}
		if err != nil {
			if takeCtx.Err() != nil {
				return
			}
			if !bo.wait(takeCtx, "fetch", err) {
				return
			}
			continue
		}
		bo.ok("fetch")
		for _, d := range ds {
			r.work <- d
		}
	}
}

// execLoop runs deliveries until taking stops.
func (r *run) execLoop() {
	for {
		select {
		case <-r.stopped:
			return
		case d := <-r.work:
			select {
			case <-r.stopped:
				r.handBack([]*broker.Delivery{d})
				return
			default:
			}
			r.execute(d) // frees d's slot once it is settled
		}
	}
}

func (r *run) handBack(ds []*broker.Delivery) {
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.consumer.HandBack(ctx, ds...); err != nil {
		r.w.log.Warn("kiq: hand-back failed; the broker redelivers those tasks", slog.Int("tasks", len(ds)), slog.Any("error", err))
		return
	}
	r.w.stats.handedBack.Add(int64(len(ds)))
	for range ds {
		<-r.slots
	}
}

// execute runs one delivery and settles it.
func (r *run) execute(d *broker.Delivery) {
	w := r.w
	if d.Message == nil {
		r.deadLetter(d, fmt.Sprintf("undecodable message: %v", d.Err))
		return
	}
	msg := d.Message
	h, ok := r.registry.Lookup(msg.TaskName)
	if !ok {
		r.deadLetter(d, fmt.Sprintf("unknown task %q", msg.TaskName))
		return
	}
	ctx := r.taskCtx
	if timeout, ok := msg.Labels.Duration(broker.LabelTimeout); ok && timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	w.stats.running.Add(1)
	start := time.Now()
	res := r.chain.Execute(ctx, msg, func(ctx context.Context) (any, error) { return call(ctx, h, msg) })
	res.Duration = time.Since(start)
	w.stats.running.Add(-1)
	if res.Err == nil || !res.Retry {
		r.saveResult(msg, res)
	}

	switch {
	case res.Err == nil:
		w.stats.done.Add(1)
		r.acks.add(d)
	case res.Retry:
		w.stats.failed.Add(1)
		w.stats.retried.Add(1)
		next := *msg
		next.Attempt++
		next.Lock = nil
		r.settle("retry", func(ctx context.Context) error { return r.consumer.Retry(ctx, d, &next, res.RetryDelay) })
		<-r.slots
	default:
		w.stats.failed.Add(1)
		reason := res.Err.Error()
		if errors.Is(res.Err, broker.ErrMalformed) {
			reason = "bad arguments: " + reason
		}
		r.deadLetter(d, reason)
	}
}

// saveResult stores the final outcome of msg in the broker's result
// backend, if it has one, then runs the PostSave hooks. A storage error is
// logged: the task itself is done.
func (r *run) saveResult(msg *broker.Message, res *middleware.Result) {
	if r.results == nil {
		return
	}
	tr := &broker.TaskResult{TaskID: msg.TaskID, TaskName: msg.TaskName, Attempt: msg.Attempt,
		Duration: res.Duration, FinishedAt: time.Now()}
	if res.Err != nil {
		tr.Error, tr.ErrorKind = res.Err.Error(), errorKind(res.Err)
	} else if res.Value != nil {
		raw, err := r.w.b.Formatter().EncodeArgs(res.Value)
		if err != nil {
			tr.Error, tr.ErrorKind = err.Error(), "error"
		}
		tr.Value = raw
	}
	ttl, _ := msg.Labels.Duration(broker.LabelResultTTL)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.taskCtx), 5*time.Second)
	defer cancel()
	if err := r.results.Store(ctx, tr, ttl); err != nil {
		r.w.log.Warn("kiq: could not store a task's result", slog.String("task_id", msg.TaskID), slog.Any("error", err))
		return
	}
	r.chain.PostSave(ctx, msg, res)
}

// errorKind classifies a task's error for its stored result.
func errorKind(err error) string {
	var pe *PanicError
	switch {
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, broker.ErrMalformed):
		return "bad_arguments"
	}
	return "error"
}

// call runs the handler, turning a panic into a *PanicError.
func call(ctx context.Context, h broker.Handler, msg *broker.Message) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return h.Execute(ctx, msg)
}

func (r *run) deadLetter(d *broker.Delivery, reason string) {
	r.w.stats.dead.Add(1)
	name := ""
	if d.Message != nil {
		name = d.Message.TaskName
	}
	r.w.log.Warn("kiq: task moved to the dead-letter list", slog.String("queue", d.Queue), slog.String("task_id", d.ID),
		slog.String("task_name", name), slog.String("reason", reason))
	r.settle("dead-letter", func(ctx context.Context) error { return r.consumer.DeadLetter(ctx, d, reason) })
	<-r.slots
}

// settle retries a settling call with backoff until it succeeds or the
// tasks are cancelled at shutdown, after which the broker redelivers.
func (r *run) settle(what string, f func(context.Context) error) {
	bo := r.w.newBackoff()
	for {
		err := f(r.taskCtx)
		if err == nil {
			bo.ok(what)
			return
		}
		if !bo.wait(r.taskCtx, what, err) {
			return
		}
	}
}

// acker batches acknowledgements: whatever finished while one Ack call was
// in flight goes out in the next.
type acker struct {
	mu      sync.Mutex
	pending []*broker.Delivery
	closed  bool
	wake    chan struct{}
}

func newAcker() *acker { return &acker{wake: make(chan struct{}, 1)} }

func (a *acker) add(d *broker.Delivery) {
	a.mu.Lock()
	a.pending = append(a.pending, d)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// loop sends batches until closed and drained.
func (a *acker) loop(r *run) {
	for range a.wake {
		a.mu.Lock()
		batch, closed := a.pending, a.closed
		a.pending = nil
		a.mu.Unlock()
		if len(batch) > 0 {
			r.settle("ack", func(ctx context.Context) error { return r.consumer.Ack(ctx, batch...) })
			for range batch {
				<-r.slots
			}
		}
		if closed {
			a.mu.Lock()
			rest := len(a.pending)
			a.mu.Unlock()
			if rest == 0 {
				return
			}
		}
	}
}

// backoff paces retries of a failing broker call and keeps the log quiet:
// one line when a call starts failing, one every 30 s while it goes on, one
// when it recovers.
type backoff struct {
	log      *slog.Logger
	max      time.Duration
	delay    time.Duration
	failing  bool
	lastLog  time.Time
	failures int
}

func (w *Worker) newBackoff() *backoff {
	return &backoff{log: w.log, max: w.opts.ErrorBackoff}
}

// wait logs err (rate-limited) and sleeps the next delay; false means ctx
// ended.
func (b *backoff) wait(ctx context.Context, what string, err error) bool {
	b.failures++
	if !b.failing || time.Since(b.lastLog) > 30*time.Second {
		b.log.Warn("kiq: broker call failed; retrying with backoff", slog.String("call", what),
			slog.Int("failures", b.failures), slog.Any("error", err))
		b.failing, b.lastLog = true, time.Now()
	}
	if b.delay == 0 {
		b.delay = 50 * time.Millisecond
	} else {
		b.delay = min(2*b.delay, b.max)
	}
	d := b.delay/2 + rand.N(b.delay/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// ok notes a success, logging the recovery of a failing call.
func (b *backoff) ok(what string) {
	if b.failing {
		b.log.Info("kiq: broker call recovered", slog.String("call", what), slog.Int("failures", b.failures))
	}
	b.failing, b.delay, b.failures = false, 0, 0
}

// retry calls f until it succeeds (true) or ctx ends (false).
func (b *backoff) retry(ctx context.Context, what string, f func() error) bool {
	for {
		err := f()
		if err == nil {
			b.ok(what)
			return true
		}
		if ctx.Err() != nil || !b.wait(ctx, what, err) {
			return false
		}
	}
}
