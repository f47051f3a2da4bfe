package middleware

import (
	"context"
	"log/slog"

	"github.com/kiq-go/kiq/broker"
)

// Logging is the logging middleware: it logs every send and every
// execution of a task with the task's name, id and attempt.
//
//   - a task sent: Debug "kiq: task sent";
//   - a send that failed (the broker's error, or a later middleware's
//     PreSend, such as a duplicate rejected): Warn "kiq: task not sent",
//     with the error;
//   - a task started: Debug "kiq: task started";
//   - a task done: Debug "kiq: task done", with its duration;
//   - a task failed that will be retried: Warn "kiq: task failed; will
//     retry", with the error, the duration and the retry's delay;
//   - a task failed for good: Error "kiq: task failed", with the error and
//     the duration.
//
// Register it first to log what every other middleware decided, the
// duplicate rejections of the deduplication middleware included:
//
//	b.WithMiddlewares(middleware.NewLogging(nil), dedupMiddleware)
type Logging struct {
	Base
	log *slog.Logger
}

// NewLogging returns the logging middleware writing to log; nil means
// slog.Default() at the time of each record, so that a later
// slog.SetDefault (as the worker's command line makes) is followed.
func NewLogging(log *slog.Logger) *Logging { return &Logging{log: log} }

func (l *Logging) logger() *slog.Logger {
	if l.log != nil {
		return l.log
	}
	return slog.Default()
}

func taskAttrs(msg *broker.Message, extra ...slog.Attr) []slog.Attr {
	return append([]slog.Attr{slog.String("task_name", msg.TaskName), slog.String("task_id", msg.TaskID),
		slog.Int("attempt", msg.Attempt)}, extra...)
}

// PostSend logs the sent task at Debug level.
func (l *Logging) PostSend(ctx context.Context, msg *broker.Message) {
	l.logger().LogAttrs(ctx, slog.LevelDebug, "kiq: task sent", taskAttrs(msg)...)
}

// OnSendError logs the failed send at Warn level.
func (l *Logging) OnSendError(ctx context.Context, msg *broker.Message, err error) {
	l.logger().LogAttrs(ctx, slog.LevelWarn, "kiq: task not sent", taskAttrs(msg, slog.Any("error", err))...)
}

// PreExecute logs the task's start at Debug level.
func (l *Logging) PreExecute(ctx context.Context, msg *broker.Message) (context.Context, error) {
	l.logger().LogAttrs(ctx, slog.LevelDebug, "kiq: task started", taskAttrs(msg)...)
	return ctx, nil
}

// PostExecute logs the outcome: Debug for a success, Warn for a failure
// that will be retried, Error for a final failure.
func (l *Logging) PostExecute(ctx context.Context, msg *broker.Message, res *Result) {
	d := slog.Duration("duration", res.Duration)
	switch {
	case res.Err == nil:
		l.logger().LogAttrs(ctx, slog.LevelDebug, "kiq: task done", taskAttrs(msg, d)...)
	case res.Retry:
		l.logger().LogAttrs(ctx, slog.LevelWarn, "kiq: task failed; will retry",
			taskAttrs(msg, slog.Any("error", res.Err), d, slog.Duration("retry_in", res.RetryDelay))...)
	default:
		l.logger().LogAttrs(ctx, slog.LevelError, "kiq: task failed", taskAttrs(msg, slog.Any("error", res.Err), d)...)
	}
}
