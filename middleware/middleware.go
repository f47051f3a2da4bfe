// Package middleware holds the hooks through which middlewares take part in a
// task's life, the [Chain] that runs them in order, and general middlewares.
//
// A middleware is any value registered with a broker's WithMiddlewares that
// embeds [Base] and implements the hook interfaces it needs. The hooks run in
// onion order: pre-hooks in registration order, post-hooks in reverse. With
// two middlewares registered as WithMiddlewares(m1, m2), a successful task
// is traced as
//
//	kick:    m1.PreSend -> m2.PreSend -> broker.Kick -> m2.PostSend -> m1.PostSend
//	execute: m1.PreExecute -> m2.PreExecute -> task -> m2.PostExecute -> m1.PostExecute
//	         -> result saved -> m2.PostSave -> m1.PostSave
//
// and a failing one as
//
//	kick:    m1.PreSend -> m2.PreSend -> broker.Kick fails -> m2.OnSendError -> m1.OnSendError
//	execute: m1.PreExecute -> m2.PreExecute -> task fails -> m2.OnError -> m1.OnError
//	         -> m2.PostExecute -> m1.PostExecute
//
// What each hook may do:
//
//   - PreSend may change the message (labels, arguments, its Lock). Its
//     error stops the send: later PreSend hooks and the broker are not
//     called, OnSendError runs for the middlewares whose PreSend had
//     succeeded, and Kiq returns the error wrapped.
//   - PostSend runs once the broker has the message; OnSendError runs when
//     the broker failed (or a later PreSend did), with that error. Neither
//     can fail the call: a middleware logs its own errors.
//   - PreExecute may replace the task's context (for tracing, deadlines).
//     Its error stops later PreExecute hooks and the task; the error becomes
//     the task's error, and OnError and PostExecute still run for all. A
//     context returned with an error, or a nil one, is ignored: the next
//     hooks get the context the hook was given.
//   - OnError runs when the task (or a PreExecute) failed; PostExecute runs
//     after every task. Both may change the [Result], for example clear
//     Result.Err. Result.Retry is already decided when they run, so every
//     middleware sees whether another attempt will follow, whatever the
//     registration order.
//   - PostSave runs after the result was stored in a result backend.
//   - A panic in PreExecute, OnError, PostExecute or PostSave is recovered
//     by the [Chain] as a [*PanicError], which becomes (or is joined to) the
//     task's error; the other hooks still run, so every middleware's
//     PostExecute sees every task it saw start. A PreExecute panic is not
//     retried; one in OnError or PostExecute leaves the retry decision as
//     the hooks before it saw it.
//   - Startup runs once from broker.Startup (and so worker.Run), in
//     registration order; its error stops the start. Shutdown runs from
//     broker.Shutdown in reverse order; all of them run and errors are
//     joined.
package middleware

import (
	"context"
	"time"

	"github.com/kiq-go/kiq/broker"
)

// Base is embedded by middlewares: it marks the type as a
// broker.Middleware. It has no hooks of its own.
type Base struct{}

// IsMiddleware returns true.
func (Base) IsMiddleware() bool { return true }

// PreSender is implemented by middlewares that act before a message is sent.
type PreSender interface {
	// PreSend may change msg; its error stops the send.
	PreSend(ctx context.Context, msg *broker.Message) error
}

// PostSender is implemented by middlewares that act after a message was sent.
type PostSender interface {
	// PostSend runs once the broker has msg.
	PostSend(ctx context.Context, msg *broker.Message)
}

// SendErrorHandler is implemented by middlewares that act when a send failed
// after their PreSend succeeded.
type SendErrorHandler interface {
	// OnSendError runs with the error of the broker or of a later PreSend.
	OnSendError(ctx context.Context, msg *broker.Message, err error)
}

// PreExecutor is implemented by middlewares that act before a task runs.
type PreExecutor interface {
	// PreExecute returns the task's context, ctx or one derived from it;
	// its error stops the task and becomes its error.
	PreExecute(ctx context.Context, msg *broker.Message) (context.Context, error)
}

// ErrorHandler is implemented by middlewares that act when a task failed.
type ErrorHandler interface {
	// OnError runs when the task failed; it may change res.
	OnError(ctx context.Context, msg *broker.Message, res *Result)
}

// PostExecutor is implemented by middlewares that act after every task.
type PostExecutor interface {
	// PostExecute runs after every execution; it may change res.
	PostExecute(ctx context.Context, msg *broker.Message, res *Result)
}

// PostSaver is implemented by middlewares that act after a result was stored.
type PostSaver interface {
	// PostSave runs after res was stored in a result backend.
	PostSave(ctx context.Context, msg *broker.Message, res *Result)
}

// Starter is implemented by middlewares with a start-up step, such as a
// connection check.
type Starter interface {
	// Startup runs from broker.Startup; its error stops the start.
	Startup(ctx context.Context) error
}

// Shutdowner is implemented by middlewares that hold resources to release.
type Shutdowner interface {
	// Shutdown runs from broker.Shutdown and releases the resources.
	Shutdown(ctx context.Context) error
}

// Retrier is implemented by middlewares that decide whether a failed task is
// tried again. The worker asks every Retrier, in registration order, before
// OnError runs; the first that answers retry=true sets Result.Retry.
type Retrier interface {
	// RetryDelay says whether msg, failed with err, is tried again, and
	// after what delay.
	RetryDelay(msg *broker.Message, err error) (delay time.Duration, retry bool)
}

// Result is the outcome of one execution of a task.
type Result struct {
	// Value is what the task returned (nil for tasks without a result).
	Value any
	// Err is the task's error, nil on success.
	Err error
	// Duration is how long the task ran.
	Duration time.Duration
	// Retry is true when the task failed and another attempt will follow,
	// after RetryDelay.
	Retry bool
	// RetryDelay is how long after this attempt the next one is due; it
	// means something only when Retry is true.
	RetryDelay time.Duration
	// HandedBack is true when the task failed after the context the chain
	// was given had ended: the worker's shutdown timeout interrupted it.
	// The worker then returns it to its queue, to run again, instead of
	// retrying or dead-lettering it, and Retry is false. A context that a
	// PreExecute hook derived (a deadline of its own) does not count.
	HandedBack bool
}
