package middleware

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/kiq-go/kiq/broker"
)

// Chain runs the hooks of a fixed list of middlewares in onion order (see
// the package documentation). It is built once, when a worker starts or a
// kicker first sends, and never changes: running it takes no lock. A Chain
// is safe for concurrent use.
type Chain struct {
	preSend   []PreSender
	postSend  []PostSender
	sendError []SendErrorHandler
	sendIndex []int // for each PreSender, the number of SendErrorHandlers registered before it
	preExec   []PreExecutor
	onError   []ErrorHandler
	postExec  []PostExecutor
	postSave  []PostSaver
	retriers  []Retrier
}

// NewChain returns the chain of mws, in registration order.
func NewChain(mws []broker.Middleware) *Chain {
	c := &Chain{}
	for _, mw := range mws {
		if h, ok := mw.(PreSender); ok {
			c.preSend = append(c.preSend, h)
			// OnSendError runs for every middleware registered up to this
			// one, including itself once its PreSend succeeded.
			c.sendIndex = append(c.sendIndex, len(c.sendError))
		}
		if h, ok := mw.(SendErrorHandler); ok {
			c.sendError = append(c.sendError, h)
		}
		if h, ok := mw.(PostSender); ok {
			c.postSend = append(c.postSend, h)
		}
		if h, ok := mw.(PreExecutor); ok {
			c.preExec = append(c.preExec, h)
		}
		if h, ok := mw.(ErrorHandler); ok {
			c.onError = append(c.onError, h)
		}
		if h, ok := mw.(PostExecutor); ok {
			c.postExec = append(c.postExec, h)
		}
		if h, ok := mw.(PostSaver); ok {
			c.postSave = append(c.postSave, h)
		}
		if h, ok := mw.(Retrier); ok {
			c.retriers = append(c.retriers, h)
		}
	}
	return c
}

// Send runs the PreSend hooks, then send, then PostSend or OnSendError, and
// returns the first error.
func (c *Chain) Send(ctx context.Context, msg *broker.Message, send func(context.Context, *broker.Message) error) error {
	if err := c.preSendOne(ctx, msg); err != nil {
		return err
	}
	err := send(ctx, msg)
	c.postSendOne(ctx, msg, err)
	return err
}

// SendMany is Send for a batch: the PreSend hooks of every message, then
// one sendMany call for the messages they let through, then PostSend or
// OnSendError for each. It returns one error per message (nil: sent).
func (c *Chain) SendMany(ctx context.Context, msgs []*broker.Message, sendMany func(context.Context, []*broker.Message) []error) []error {
	errs := make([]error, len(msgs))
	ready := make([]*broker.Message, 0, len(msgs))
	at := make([]int, 0, len(msgs))
	for i, m := range msgs {
		if errs[i] = c.preSendOne(ctx, m); errs[i] == nil {
			ready = append(ready, m)
			at = append(at, i)
		}
	}
	if len(ready) == 0 {
		return errs
	}
	sendErrs := sendMany(ctx, ready)
	for j, m := range ready {
		errs[at[j]] = sendErrs[j]
		c.postSendOne(ctx, m, sendErrs[j])
	}
	return errs
}

// preSendOne runs the PreSend hooks of msg; on a failure, the middlewares
// registered before the failing one, whose PreSend succeeded or who have
// none, hear of it.
func (c *Chain) preSendOne(ctx context.Context, msg *broker.Message) error {
	for i, h := range c.preSend {
		if err := h.PreSend(ctx, msg); err != nil {
			c.sendFailed(ctx, msg, err, c.sendIndex[i])
			return err
		}
	}
	return nil
}

// postSendOne runs the PostSend hooks after a send, or the OnSendError
// hooks after a failed one.
func (c *Chain) postSendOne(ctx context.Context, msg *broker.Message, err error) {
	if err != nil {
		c.sendFailed(ctx, msg, err, len(c.sendError))
		return
	}
	for i := len(c.postSend) - 1; i >= 0; i-- {
		c.postSend[i].PostSend(ctx, msg)
	}
}

func (c *Chain) sendFailed(ctx context.Context, msg *broker.Message, err error, n int) {
	for i := n - 1; i >= 0; i-- {
		c.sendError[i].OnSendError(ctx, msg, err)
	}
}

// Execute runs the PreExecute hooks, then run (unless a hook failed), then
// decides a retry for a failure, then the OnError and PostExecute hooks, and
// returns the result. A failure once ctx (the worker's context for its
// tasks) has ended is the shutdown's, not the task's: it is marked
// Result.HandedBack, and no retry is decided for it.
//
// A PreExecute hook that returns an error, or a nil context, leaves the
// context as it was: later hooks and the task never see a nil context.
//
// Every hook runs under its own recover: a panic becomes a [*PanicError]
// that is added to Result.Err (it fails a task that had succeeded), and the
// remaining hooks still run, so every middleware's PostExecute sees every
// task it saw start (a deduplication lock is always let go). A panic in
// PreExecute stops the PreExecute hooks and the task as an error would; a
// panic is never retried (PanicError says SkipRetry). One in OnError or
// PostExecute leaves the retry decision as it was: the hooks that ran
// before it already acted on it.
func (c *Chain) Execute(ctx context.Context, msg *broker.Message, run func(context.Context) (any, error)) *Result {
	res := &Result{}
	base := ctx
	for _, h := range c.preExec {
		var next context.Context
		var err error
		if p := guard(h, "PreExecute", func() { next, err = h.PreExecute(ctx, msg) }); p != nil {
			err = p
		}
		if err != nil {
			res.Err = err
			break
		}
		if next != nil {
			ctx = next
		}
	}
	if res.Err == nil {
		start := time.Now()
		res.Value, res.Err = run(ctx)
		res.Duration = time.Since(start)
	}
	// Decided once, here, for the worker and every hook alike.
	res.HandedBack = res.Err != nil && base.Err() != nil
	if res.Err != nil {
		for _, r := range c.retriers {
			if res.HandedBack {
				break // the task did not fail: it runs again from its queue
			}
			var delay time.Duration
			var retry bool
			if p := guard(r, "RetryDelay", func() { delay, retry = r.RetryDelay(msg, res.Err) }); p != nil {
				res.addPanic(p)
				break
			}
			if retry {
				res.Retry, res.RetryDelay = true, delay
				break
			}
		}
		for i := len(c.onError) - 1; i >= 0; i-- {
			h := c.onError[i]
			res.addPanic(guard(h, "OnError", func() { h.OnError(ctx, msg, res) }))
		}
	}
	for i := len(c.postExec) - 1; i >= 0; i-- {
		h := c.postExec[i]
		res.addPanic(guard(h, "PostExecute", func() { h.PostExecute(ctx, msg, res) }))
	}
	return res
}

// PostSave runs the PostSave hooks, each under its own recover, and
// returns the hooks' panics as [*PanicError] values joined (nil: none
// panicked). A panic does not stop the later hooks.
func (c *Chain) PostSave(ctx context.Context, msg *broker.Message, res *Result) error {
	var errs []error
	for i := len(c.postSave) - 1; i >= 0; i-- {
		h := c.postSave[i]
		if p := guard(h, "PostSave", func() { h.PostSave(ctx, msg, res) }); p != nil {
			errs = append(errs, p)
		}
	}
	return errors.Join(errs...)
}

// PanicError is a middleware hook's recovered panic. The [Chain] turns it
// into the task's error instead of letting it skip the other hooks.
type PanicError struct {
	// Middleware is the type of the panicking middleware, as %T prints it.
	Middleware string
	// Hook is the panicking hook: "PreExecute", "RetryDelay", "OnError",
	// "PostExecute" or "PostSave".
	Hook string
	// Value is what the hook panicked with.
	Value any
	// Stack is the panicking goroutine's stack.
	Stack []byte
}

// Error names the middleware, the hook and the panic's value.
func (e *PanicError) Error() string {
	return fmt.Sprintf("kiq: middleware %s %s panicked: %v", e.Middleware, e.Hook, e.Value)
}

// Unwrap returns the panic's value when it is an error, so that errors.Is
// and errors.As see through the panic.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// SkipRetry returns true: a middleware's bug is not retried (see [Retry]).
func (e *PanicError) SkipRetry() bool { return true }

// guard runs f, a hook of mw, and returns its panic as a *PanicError, or
// nil.
func guard(mw any, hook string, f func()) (pe *PanicError) {
	defer func() {
		if p := recover(); p != nil {
			pe = &PanicError{Middleware: fmt.Sprintf("%T", mw), Hook: hook, Value: p, Stack: debug.Stack()}
		}
	}()
	f()
	return nil
}

// addPanic adds p, when not nil, to the result's error.
func (r *Result) addPanic(p *PanicError) {
	switch {
	case p == nil:
	case r.Err == nil:
		r.Err = p
	default:
		r.Err = errors.Join(r.Err, p)
	}
}
