package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
	"github.com/stretchr/testify/require"
)

// withoutTime drops the time and the duration, which change from run to
// run, from log records.
func withoutTime(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey || a.Key == "duration" {
		return slog.Attr{}
	}
	return a
}

// The logging middleware around a send, a success, a failure that will be
// retried and a final failure.
func ExampleLogging() {
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: withoutTime}))
	chain := middleware.NewChain([]broker.Middleware{
		middleware.NewLogging(log),
		middleware.NewRetry(middleware.RetryOptions{Rand: func() float64 { return 0.5 }}),
	})
	ctx := context.Background()
	msg := &broker.Message{TaskID: "42", TaskName: "send_welcome", Labels: broker.Labels{"retry_on_error": true, "max_retries": 1}}

	_ = chain.Send(ctx, msg, func(context.Context, *broker.Message) error { return nil })
	chain.Execute(ctx, msg, func(context.Context) (any, error) { return nil, nil })
	chain.Execute(ctx, msg, func(context.Context) (any, error) { return nil, errors.New("smtp down") })
	msg.Attempt++
	chain.Execute(ctx, msg, func(context.Context) (any, error) { return nil, errors.New("smtp down") })
	// Output:
	// level=DEBUG msg="kiq: task sent" task_name=send_welcome task_id=42 attempt=0
	// level=DEBUG msg="kiq: task started" task_name=send_welcome task_id=42 attempt=0
	// level=DEBUG msg="kiq: task done" task_name=send_welcome task_id=42 attempt=0
	// level=DEBUG msg="kiq: task started" task_name=send_welcome task_id=42 attempt=0
	// level=WARN msg="kiq: task failed; will retry" task_name=send_welcome task_id=42 attempt=0 error="smtp down" retry_in=500ms
	// level=DEBUG msg="kiq: task started" task_name=send_welcome task_id=42 attempt=1
	// level=ERROR msg="kiq: task failed" task_name=send_welcome task_id=42 attempt=1 error="smtp down"
}

func TestLoggingLogsSendErrorsAndDurations(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rejected := errors.New("duplicate")
	// Registered first, it hears of a later middleware's refusal.
	chain := middleware.NewChain([]broker.Middleware{middleware.NewLogging(log), failingPreSend{err: rejected}})
	msg := &broker.Message{TaskID: "7", TaskName: "t", Attempt: 2}
	require.ErrorIs(t, chain.Send(context.Background(), msg, func(context.Context, *broker.Message) error { return nil }), rejected)
	require.Contains(t, buf.String(), `level=WARN msg="kiq: task not sent" task_name=t task_id=7 attempt=2 error=duplicate`)

	buf.Reset()
	chain = middleware.NewChain([]broker.Middleware{middleware.NewLogging(log)})
	chain.Execute(context.Background(), msg, func(context.Context) (any, error) {
		time.Sleep(10 * time.Millisecond)
		return nil, nil
	})
	require.Regexp(t, `msg="kiq: task done" task_name=t task_id=7 attempt=2 duration=[1-9][0-9.]*ms`, buf.String())
}

func TestLoggingDefaultsToTheDefaultLoggerOfTheMoment(t *testing.T) {
	mw := middleware.NewLogging(nil) // before SetDefault: still follows it
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	chain := middleware.NewChain([]broker.Middleware{mw})
	chain.Execute(context.Background(), &broker.Message{TaskID: "1", TaskName: "t"}, func(context.Context) (any, error) {
		return nil, errors.New("boom")
	})
	require.Contains(t, buf.String(), `level=ERROR msg="kiq: task failed" task_name=t task_id=1 attempt=0 error=boom`)
	require.NotContains(t, buf.String(), "task started", "Debug records stay below the default Info level")
}

type failingPreSend struct {
	middleware.Base
	err error
}

func (f failingPreSend) PreSend(context.Context, *broker.Message) error { return f.err }
