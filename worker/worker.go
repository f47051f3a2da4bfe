// Package worker runs tasks: a [Worker] takes deliveries from a broker,
// runs each through the broker's middleware chain and the task's handler,
// and settles it with the broker.
//
// # The life of a delivery
//
// The fetch loop takes deliveries in batches, never holding more than
// Options.Prefetch of them (running, waiting to run, or waiting for their
// acknowledgement). One of Options.Concurrency goroutines takes each and:
//
//  1. dead-letters it at once when its message did not decode (the reason is
//     the decoding error) or names a task that is not registered on the
//     broker (reason `unknown task "name"`). Where the broker has a result
//     backend and the task id is known, a failed result is stored first
//     (error kind "malformed" or "unknown_task"), so a caller waiting for
//     the task is not left waiting;
//  2. runs it through the middleware chain, frozen when Run started:
//     PreExecute hooks, the task's handler, the retry decision, OnError and
//     PostExecute hooks (see package middleware for the order). The handler
//     runs with the task's timeout label as its context deadline, and a
//     panic in it is recovered as a [*PanicError] with the stack (a hook's,
//     by the chain, as a [*middleware.PanicError]): it is that task's
//     failure, never the worker's crash. The hooks' context does not carry
//     the deadline, so a PostExecute hook can still reach Redis after the
//     task timed out;
//  3. when the outcome is final (a success, or a failure not retried) and
//     the broker has a result backend (broker.ResultHolder), stores the
//     result and runs the PostSave hooks;
//  4. settles it:
//     - success: acknowledged. Acknowledgements are coalesced: one goroutine
//     sends, in one broker call, every delivery that finished while the
//     previous call was in flight — batches as large as the load, with no
//     timer adding latency;
//     - a failure that a middleware decided to retry (middleware.Retrier):
//     sent again by the broker after the retry's delay, the same task id
//     with its Attempt raised by one;
//     - any other failure, arguments of the wrong type (broker.ErrMalformed)
//     included: moved to the queue's dead-letter list with the task's error
//     text as the reason. The dead-letter list holds every task that
//     finally failed, up to the broker's cap: the list broker keeps the
//     newest 10 000 by default (broker.WithDeadLetterLimit) and logs a
//     warning with the count each time the cap drops the oldest, so nothing
//     is dropped silently.
//
// A failing settle call (Redis down) is retried with backoff; it is never
// dropped while the worker runs. Failing broker calls are logged once when
// they start failing, every 30 s while they go on, and once when they
// recover, never once per retry.
//
// # Shutdown
//
// When the context given to Run ends, or Shutdown is called, the worker:
//
//  1. stops fetching;
//  2. hands back at once the deliveries it fetched but did not start (a
//     hand-back is not a failed attempt: Attempt is unchanged);
//  3. waits up to Options.ShutdownTimeout for the running tasks;
//  4. then cancels the tasks' contexts (context.Cause is
//     [ErrShutdownTimeout]) and waits one more second. A task that returns
//     an error by then is handed back, not counted as failed; a task that
//     still has not returned is left to the broker, which delivers it again
//     (its goroutine cannot be stopped: it ends when the task returns; its
//     post hooks run and a success is stored where the result backend is
//     still open, but it is never acknowledged);
//  5. flushes the pending acknowledgements, retrying them until the
//     shutdown timeout has passed (at least one second); those still failing
//     are left to the broker, which delivers them again;
//  6. closes the consumer.
//
// Delivery is therefore at least once: a task may run again after a crash,
// an outage or a shutdown that could not wait for it, never zero times.
//
// Run does not call the broker's Shutdown: whoever built the broker owns it
// and shuts it down, after Run has returned.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
)

const (
	// initialBackoff is the first wait after a failed broker call.
	initialBackoff = 50 * time.Millisecond
	// grace is how long shutdown waits for tasks after cancelling them, and
	// the least it gives pending acknowledgements.
	grace = time.Second
	// callTimeout bounds the broker calls of the shutdown (hand-backs, the
	// consumer's Close) and the storing of a result.
	callTimeout = 5 * time.Second
	// failureLogEvery is how often a broker call that keeps failing is
	// logged again.
	failureLogEvery = 30 * time.Second
)

// Defaults of Options.
const (
	DefaultConcurrency     = 16
	DefaultShutdownTimeout = 10 * time.Second
)

// Options configure a Worker. The zero value of each field means its
// default.
type Options struct {
	// Concurrency is how many tasks run at once. Default 16
	// (DefaultConcurrency).
	Concurrency int
	// Prefetch is the most deliveries held at once: running, waiting to
	// run, or waiting for their acknowledgement. Default twice Concurrency;
	// never below Concurrency.
	Prefetch int
	// Queues to consume. Default: the broker's default queue.
	Queues []string
	// ShutdownTimeout is how long shutdown waits for running tasks before
	// cancelling their contexts. Default 10 s (DefaultShutdownTimeout).
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
		o.Concurrency = DefaultConcurrency
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 2 * o.Concurrency
	}
	o.Prefetch = max(o.Prefetch, o.Concurrency)
	o.Queues = slices.Clone(o.Queues)
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ErrorBackoff <= 0 {
		o.ErrorBackoff = 5 * time.Second
	}
	return o
}

// Worker consumes and runs the tasks of one broker. Make one with New and
// call Run; Stats and Shutdown may be called from any goroutine.
type Worker struct {
	b        broker.Broker
	opts     Options
	log      *slog.Logger
	stats    counters
	failures failureLog

	mu     sync.Mutex
	closed bool               // Shutdown was called
	stop   context.CancelFunc // ends the current Run's taking
	done   chan struct{}      // closed when the current Run returns
}

// New returns a worker of b's tasks.
func New(b broker.Broker, opts Options) *Worker {
	opts = opts.withDefaults()
	return &Worker{b: b, opts: opts, log: opts.Logger, failures: failureLog{log: opts.Logger}}
}

// Options returns the worker's options, each default filled in.
func (w *Worker) Options() Options {
	o := w.opts
	o.Queues = slices.Clone(o.Queues)
	return o
}

// Stats are a worker's counters since it was made, for a live progress
// line. Each is read atomically; together they are not one snapshot.
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
	// HandedBack counts deliveries returned to their queue at shutdown:
	// fetched but not started, or interrupted by the shutdown timeout.
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
	// Stack is the panicking goroutine's stack.
	Stack []byte
}

// Error describes the panic.
func (e *PanicError) Error() string { return fmt.Sprintf("kiq: task panicked: %v", e.Value) }

// Unwrap returns the panic's value when it is an error, so that errors.Is
// and errors.As see through the panic.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

var (
	// ErrRunning is returned by Run when the worker is already running.
	ErrRunning = errors.New("kiq: worker already running")
	// ErrClosed is returned by Run after Shutdown was called.
	ErrClosed = errors.New("kiq: worker shut down")
	// ErrShutdownTimeout is the cause (context.Cause) of a task's context
	// cancelled because the worker's shutdown timeout passed.
	ErrShutdownTimeout = errors.New("kiq: worker shutdown timeout")
)

// Shutdown stops the worker as the end of Run's context would, and waits
// until Run has drained and returned, or ctx ends (it then returns ctx's
// error; the drain goes on). Like http.Server's, it is final: a later Run
// returns ErrClosed at once.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	stop, done := w.stop, w.done
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

// Run consumes until ctx ends or Shutdown is called, then drains (see the
// package documentation) and returns nil.
//
// It first calls the broker's Startup, which runs the middlewares' start-up
// hooks (and pings Redis, for the list broker). Startup, opening the
// consumer and every broker call after them are retried with backoff while
// they fail: Run does not exit on broker errors, it logs them.
//
// Run does not call the broker's Shutdown: the broker's owner does, after
// Run has returned. The values of ctx reach the tasks' contexts; its end
// only starts the shutdown.
func (w *Worker) Run(ctx context.Context) error {
	takeCtx, stopTaking := context.WithCancel(ctx)
	defer stopTaking()
	w.mu.Lock()
	switch {
	case w.closed:
		w.mu.Unlock()
		return ErrClosed
	case w.stop != nil:
		w.mu.Unlock()
		return ErrRunning
	}
	done := make(chan struct{})
	w.stop, w.done = stopTaking, done
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.stop, w.done = nil, nil
		w.mu.Unlock()
		close(done)
	}()

	if !w.startup(takeCtx) {
		return nil
	}

	// The consumer lives until it is closed, not until taking stops: a
	// broker may tie its own work to Consume's context (the list broker's
	// heartbeats, which keep its tasks from being redelivered), and the
	// tasks still running while the worker drains need that work.
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	interrupt := context.AfterFunc(takeCtx, endLife) // a Shutdown while opening
	consumer := w.consume(takeCtx, life)
	if !interrupt() || consumer == nil {
		// Taking ended before the consumer was ready to use.
		if consumer != nil {
			w.closeConsumer(consumer)
		}
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
		acks:     &acker{wake: make(chan struct{}, 1)},
	}
	if h, ok := w.b.(broker.ResultHolder); ok {
		r.results = h.ResultBackend()
	}
	r.taskCtx, r.cancelTasks = context.WithCancelCause(life)
	defer r.cancelTasks(nil)
	r.settleCtx, r.abandon = context.WithCancel(life)
	defer r.abandon()
	r.run(takeCtx)
	return nil
}

// startup runs the broker's Startup, retrying with backoff while it fails
// (Redis not up yet is an outage like any other: the worker waits for it),
// until it succeeds (true) or takeCtx ends (false).
func (w *Worker) startup(takeCtx context.Context) bool {
	var bo backoff
	for {
		err := w.b.Startup(takeCtx)
		if err == nil {
			w.failures.ok("startup")
			return true
		}
		if takeCtx.Err() != nil {
			return false
		}
		w.failures.failed("startup", err)
		if !bo.wait(takeCtx, w.opts.ErrorBackoff) {
			return false
		}
	}
}

// consume opens the consumer, retrying with backoff until it opens or
// takeCtx ends (nil).
func (w *Worker) consume(takeCtx, life context.Context) broker.Consumer {
	var bo backoff
	for {
		c, err := w.b.Consume(life, broker.ConsumeOptions{Queues: w.opts.Queues, Prefetch: w.opts.Prefetch})
		if err == nil {
			w.failures.ok("consume")
			return c
		}
		if takeCtx.Err() != nil {
			return nil
		}
		w.failures.failed("consume", err)
		if !bo.wait(takeCtx, w.opts.ErrorBackoff) {
			return nil
		}
	}
}

func (w *Worker) closeConsumer(c broker.Consumer) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		w.log.Warn("kiq: closing the consumer failed; the broker delivers what it held again", slog.Any("error", err))
	}
}

// run is the state of one Run.
type run struct {
	w        *Worker
	consumer broker.Consumer
	chain    *middleware.Chain
	registry *broker.Registry
	results  broker.ResultBackend // nil: results are not stored

	slots   chan struct{}         // one token per delivery held
	work    chan *broker.Delivery // fetched, not started
	stopped chan struct{}         // closed when taking stops
	acks    *acker

	// taskCtx is the context of the middleware hooks and the parent of the
	// handlers'; cancelled with ErrShutdownTimeout when the shutdown timeout
	// passes.
	taskCtx     context.Context
	cancelTasks context.CancelCauseFunc
	// settleCtx is the context of settling calls and their retries;
	// cancelled when the shutdown gives up on them.
	settleCtx context.Context
	abandon   context.CancelFunc
}

func (r *run) run(takeCtx context.Context) {
	w := r.w
	var pool sync.WaitGroup
	for range w.opts.Concurrency {
		pool.Go(r.execLoop)
	}
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); r.ackLoop() }()

	r.fetchLoop(takeCtx)
	close(r.stopped)
	deadline := time.Now().Add(w.opts.ShutdownTimeout)

	// Hand back at once what was fetched but not started; the execution
	// loops hand back what they take from now on themselves.
	var unstarted []*broker.Delivery
	for drained := false; !drained; {
		select {
		case d := <-r.work:
			unstarted = append(unstarted, d)
		default:
			drained = true
		}
	}
	r.handBack(unstarted...)

	// Wait for the running tasks, then cancel them.
	poolDone := make(chan struct{})
	go func() { pool.Wait(); close(poolDone) }()
	wait := time.NewTimer(w.opts.ShutdownTimeout)
	defer wait.Stop()
	select {
	case <-poolDone:
	case <-wait.C:
		w.log.Warn("kiq: shutdown timeout passed; cancelling the running tasks",
			slog.Int64("tasks", w.stats.running.Load()), slog.Duration("timeout", w.opts.ShutdownTimeout))
		r.cancelTasks(ErrShutdownTimeout)
		select {
		case <-poolDone:
		case <-time.After(grace):
			w.log.Warn("kiq: tasks still running after cancellation are left to the broker, which delivers them again",
				slog.Int64("tasks", w.stats.running.Load()))
		}
	}

	// Flush the acknowledgements.
	r.acks.close()
	select {
	case <-ackDone:
	case <-time.After(max(time.Until(deadline), grace)):
		w.log.Warn("kiq: acknowledgements still failing at shutdown; the broker delivers those tasks again",
			slog.Int("tasks", r.acks.held()))
	}
	r.abandon()
	<-ackDone
	if w.stats.running.Load() == 0 {
		// Only settling calls remain, and they stop now.
		<-poolDone
	}
	w.closeConsumer(r.consumer)
}

// fetchLoop takes deliveries while slots are free, until ctx ends.
func (r *run) fetchLoop(ctx context.Context) {
	w := r.w
	var bo backoff
	for {
		// Wait for one free slot, then claim every other free one.
		select {
		case <-ctx.Done():
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
		ds, err := r.consumer.Fetch(ctx, n)
		if len(ds) > n {
			// The broker broke its contract; keep the bound.
			w.log.Error("kiq: the broker returned more deliveries than asked; handing back the rest",
				slog.Int("asked", n), slog.Int("got", len(ds)))
			r.handBackUnheld(ds[n:])
			ds = ds[:n]
		}
		for range n - len(ds) {
			<-r.slots
		}
		for _, d := range ds {
			r.work <- d // never blocks: work holds at most one per slot
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.failures.failed("fetch", err)
			if !bo.wait(ctx, w.opts.ErrorBackoff) {
				return
			}
			continue
		}
		bo.reset()
		w.failures.ok("fetch")
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
				r.handBack(d)
				return
			default:
			}
			r.execute(d) // frees d's slot once it is settled
		}
	}
}

// execute runs one delivery and settles it. It is kept lean, its cold
// paths in functions of their own: its frame stays on the stack while the
// task runs, and with ten thousand tasks in flight every byte counts (a
// goroutine that uses under a quarter of its stack is shrunk by the GC).
func (r *run) execute(d *broker.Delivery) {
	if d.Message == nil {
		r.undecodable(d)
		return
	}
	h, ok := r.registry.Lookup(d.Message.TaskName)
	if !ok {
		r.unknownTask(d)
		return
	}
	r.w.stats.running.Add(1)
	res := r.executeChain(d.Message, h)
	interrupted := res.HandedBack
	if r.results != nil && !interrupted && (res.Err == nil || !res.Retry) {
		r.saveResult(d.Message, res)
	}
	r.w.stats.running.Add(-1)
	if res.Err == nil {
		r.acks.add(d)
		r.w.stats.done.Add(1) // after add: a task counted done has its ack under way
		return
	}
	r.failed(d, res, interrupted)
}

// undecodable dead-letters a delivery whose message did not decode.
func (r *run) undecodable(d *broker.Delivery) {
	reason := "undecodable message"
	if d.Err != nil {
		reason += ": " + d.Err.Error()
	}
	r.saveFailure(&broker.TaskResult{TaskID: d.ID, Error: reason, ErrorKind: "malformed"}, 0)
	r.deadLetter(d, reason)
}

// unknownTask dead-letters a delivery of a task no handler is registered
// for.
func (r *run) unknownTask(d *broker.Delivery) {
	msg := d.Message
	reason := fmt.Sprintf("unknown task %q", msg.TaskName)
	r.saveFailure(&broker.TaskResult{TaskID: msg.TaskID, TaskName: msg.TaskName, Attempt: msg.Attempt,
		Error: reason, ErrorKind: "unknown_task"}, resultTTL(msg))
	r.deadLetter(d, reason)
}

// failed settles a delivery whose task failed: it is handed back when the
// shutdown interrupted it, retried when the chain decided so, and
// dead-lettered otherwise.
func (r *run) failed(d *broker.Delivery, res *middleware.Result, interrupted bool) {
	w, msg := r.w, d.Message
	if pe, ok := errors.AsType[*PanicError](res.Err); ok {
		w.log.Error("kiq: task panicked", slog.String("task_name", msg.TaskName), slog.String("task_id", msg.TaskID),
			slog.Any("panic", pe.Value), slog.String("stack", string(pe.Stack)))
	} else if mp, ok := errors.AsType[*middleware.PanicError](res.Err); ok {
		w.log.Error("kiq: middleware hook panicked", slog.String("task_name", msg.TaskName), slog.String("task_id", msg.TaskID),
			slog.String("middleware", mp.Middleware), slog.String("hook", mp.Hook), slog.Any("panic", mp.Value), slog.String("stack", string(mp.Stack)))
	}
	switch {
	case interrupted:
		// Cancelled by the shutdown timeout: not the task's failure.
		w.log.Info("kiq: task interrupted by the shutdown; handing it back", slog.String("task_name", msg.TaskName),
			slog.String("task_id", msg.TaskID), slog.Any("error", res.Err))
		r.handBack(d)
	case res.Retry:
		w.stats.failed.Add(1)
		next := *msg
		next.Attempt++
		next.Lock, next.Unlock = nil, nil
		if _, err := w.b.Formatter().EncodeMessage(&next); err != nil {
			// Retrying could never succeed: this failure is final.
			if r.results != nil {
				r.saveResult(msg, res)
			}
			r.deadLetter(d, fmt.Sprintf("%v (cannot retry: %v)", res.Err, err))
			return
		}
		if r.settle("retry", func(ctx context.Context) error { return r.consumer.Retry(ctx, d, &next, res.RetryDelay) }) {
			w.stats.retried.Add(1)
		}
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

// executeChain runs the middleware chain around h, under the task's
// timeout label if it has one. The chain recovers its hooks' panics itself
// (the handler's are recovered by call); any other panic fails the task
// with a *PanicError, without a retry, instead of crashing the worker.
func (r *run) executeChain(msg *broker.Message, h broker.Handler) (res *middleware.Result) {
	defer func() {
		if p := recover(); p != nil {
			res = &middleware.Result{Err: &PanicError{Value: p, Stack: debug.Stack()}}
		}
	}()
	return r.chain.Execute(r.taskCtx, msg, func(ctx context.Context) (any, error) {
		if timeout, _ := msg.Labels.Duration(broker.LabelTimeout); timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return call(ctx, h, msg)
	})
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

// saveResult stores the final outcome of msg in the broker's result
// backend, then runs the PostSave hooks. A storage error is logged and the
// PostSave hooks are skipped; the task is settled all the same (running it
// again to store its result would be worse).
func (r *run) saveResult(msg *broker.Message, res *middleware.Result) {
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
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.taskCtx), callTimeout)
	defer cancel()
	if err := r.results.Store(ctx, tr, resultTTL(msg)); err != nil {
		r.w.log.Warn("kiq: could not store a task's result", slog.String("task_name", msg.TaskName),
			slog.String("task_id", msg.TaskID), slog.Any("error", err))
		return
	}
	r.chain.PostSave(ctx, msg, res)
}

// saveFailure stores the result of a task dead-lettered before the
// middleware chain ran, when the broker has a result backend and the task
// id is known, so that its Wait ends. A storage error is logged.
func (r *run) saveFailure(tr *broker.TaskResult, ttl time.Duration) {
	if r.results == nil || tr.TaskID == "" {
		return
	}
	tr.FinishedAt = time.Now()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.taskCtx), callTimeout)
	defer cancel()
	if err := r.results.Store(ctx, tr, ttl); err != nil {
		r.w.log.Warn("kiq: could not store a dead-lettered task's result", slog.String("task_id", tr.TaskID),
			slog.Any("error", err))
	}
}

// resultTTL is msg's result_ttl label, or 0 for the backend's default.
func resultTTL(msg *broker.Message) time.Duration {
	ttl, _ := msg.Labels.Duration(broker.LabelResultTTL)
	return ttl
}

// errorKind classifies a task's error for its stored result.
func errorKind(err error) string {
	switch {
	case errors.As(err, new(*PanicError)), errors.As(err, new(*middleware.PanicError)):
		return "panic"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, broker.ErrMalformed):
		return "bad_arguments"
	}
	return "error"
}

// deadLetter moves d to its queue's dead-letter list, logging it once, and
// frees its slot.
func (r *run) deadLetter(d *broker.Delivery, reason string) {
	attrs := []any{slog.String("queue", d.Queue), slog.String("task_id", d.ID), slog.String("reason", reason)}
	if d.Message != nil {
		attrs = append(attrs, slog.String("task_name", d.Message.TaskName), slog.Int("attempt", d.Message.Attempt))
	}
	r.w.log.Warn("kiq: task moved to the dead-letter list", attrs...)
	if r.settle("dead-letter", func(ctx context.Context) error { return r.consumer.DeadLetter(ctx, d, reason) }) {
		r.w.stats.dead.Add(1)
	}
	<-r.slots
}

// handBack returns ds, not started or interrupted at shutdown, to their
// queue in one call, and frees their slots. A failed hand-back is logged,
// not retried: the broker delivers those tasks again.
func (r *run) handBack(ds ...*broker.Delivery) {
	if len(ds) == 0 {
		return
	}
	r.handBackUnheld(ds)
	for range ds {
		<-r.slots
	}
}

// handBackUnheld hands ds back without freeing slots.
func (r *run) handBackUnheld(ds []*broker.Delivery) {
	ctx, cancel := context.WithTimeout(r.settleCtx, callTimeout)
	defer cancel()
	if err := r.consumer.HandBack(ctx, ds...); err != nil {
		r.w.log.Warn("kiq: hand-back failed; the broker delivers those tasks again",
			slog.Int("tasks", len(ds)), slog.Any("error", err))
		return
	}
	r.w.stats.handedBack.Add(int64(len(ds)))
}

// settle makes a settling call, retrying it with backoff until it succeeds
// (true) or the shutdown gives up on it (false: the broker delivers the
// task again).
func (r *run) settle(what string, f func(context.Context) error) bool {
	var bo backoff
	for {
		if r.settleCtx.Err() != nil {
			return false
		}
		err := f(r.settleCtx)
		if err == nil {
			r.w.failures.ok(what)
			return true
		}
		if r.settleCtx.Err() != nil {
			return false
		}
		r.w.failures.failed(what, err)
		if !bo.wait(r.settleCtx, r.w.opts.ErrorBackoff) {
			return false
		}
	}
}

// acker coalesces acknowledgements: one goroutine (ackLoop) sends, in one
// Ack call, whatever finished while the previous call was in flight.
type acker struct {
	mu      sync.Mutex
	pending []*broker.Delivery
	sending int // deliveries in the Ack call in flight
	closed  bool
	wake    chan struct{} // holds a signal whenever pending may have grown
}

func (a *acker) add(d *broker.Delivery) {
	a.mu.Lock()
	a.pending = append(a.pending, d)
	a.mu.Unlock()
	a.signal()
}

func (a *acker) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// close makes the loop return once pending is empty.
func (a *acker) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.signal()
}

// held counts the deliveries not yet acknowledged.
func (a *acker) held() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending) + a.sending
}

// ackLoop sends the batches until the acker is closed and drained.
func (r *run) ackLoop() {
	a := r.acks
	var spare []*broker.Delivery // the previous batch's array, reused
	for range a.wake {
		a.mu.Lock()
		batch, closed := a.pending, a.closed
		if len(batch) > 0 {
			a.pending, a.sending = spare[:0], len(batch)
		}
		a.mu.Unlock()
		if len(batch) == 0 {
			if closed {
				return
			}
			continue
		}
		r.settle("ack", func(ctx context.Context) error { return r.consumer.Ack(ctx, batch...) })
		for range batch {
			<-r.slots
		}
		clear(batch)
		spare = batch
		a.mu.Lock()
		a.sending = 0
		drained := a.closed && len(a.pending) == 0
		a.mu.Unlock()
		if drained {
			return
		}
	}
}

// backoff paces the retries of one failing call: exponential from 50 ms up
// to a maximum, with jitter (each wait is between half and all of the
// current delay).
type backoff struct{ delay time.Duration }

// wait sleeps the next delay, at most most; false means ctx ended first.
func (b *backoff) wait(ctx context.Context, most time.Duration) bool {
	if b.delay == 0 {
		b.delay = min(initialBackoff, most)
	} else {
		b.delay = min(2*b.delay, most)
	}
	t := time.NewTimer(b.delay/2 + rand.N(b.delay/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (b *backoff) reset() { b.delay = 0 }

// failureLog keeps the log of failing broker calls short across all the
// worker's goroutines: one line when a kind of call starts failing, one
// every 30 s while it goes on failing, one when it succeeds again.
type failureLog struct {
	log     *slog.Logger
	failing atomic.Int32 // kinds of call failing now; 0 lets ok skip the lock
	mu      sync.Mutex
	calls   map[string]*failingCall
}

type failingCall struct {
	since, logged time.Time
	failures      int
}

func (f *failureLog) failed(call string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	c := f.calls[call]
	switch {
	case c == nil:
		if f.calls == nil {
			f.calls = make(map[string]*failingCall)
		}
		c = &failingCall{since: now, logged: now}
		f.calls[call] = c
		f.failing.Add(1)
		f.log.Warn("kiq: broker call failed; retrying with backoff", slog.String("call", call), slog.Any("error", err))
	case now.Sub(c.logged) >= failureLogEvery:
		c.logged = now
		f.log.Warn("kiq: broker call still failing; retrying with backoff", slog.String("call", call),
			slog.Int("failures", c.failures+1), slog.Duration("for", now.Sub(c.since).Round(time.Millisecond)),
			slog.Any("error", err))
	}
	c.failures++
}

func (f *failureLog) ok(call string) {
	if f.failing.Load() == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls[call]
	if c == nil {
		return
	}
	delete(f.calls, call)
	f.failing.Add(-1)
	f.log.Info("kiq: broker call recovered", slog.String("call", call), slog.Int("failures", c.failures),
		slog.Duration("after", time.Since(c.since).Round(time.Millisecond)))
}
