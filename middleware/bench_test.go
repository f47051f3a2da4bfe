package middleware_test

import (
	"context"
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
)

// noop implements every send and execute hook and does nothing: the cost
// measured is the chain's own.
type noop struct{ middleware.Base }

func (noop) PreSend(context.Context, *broker.Message) error                   { return nil }
func (noop) PostSend(context.Context, *broker.Message)                        {}
func (noop) OnSendError(context.Context, *broker.Message, error)              {}
func (noop) PostExecute(context.Context, *broker.Message, *middleware.Result) {}
func (noop) PreExecute(ctx context.Context, _ *broker.Message) (context.Context, error) {
	return ctx, nil
}

func benchChain() *middleware.Chain {
	return middleware.NewChain([]broker.Middleware{noop{}, noop{}, noop{}, middleware.NewRetry(middleware.RetryOptions{})})
}

// BenchmarkChainSend measures the send hooks of four middlewares around a
// send that does nothing.
func BenchmarkChainSend(b *testing.B) {
	c := benchChain()
	ctx := context.Background()
	msg := &broker.Message{TaskID: "id", TaskName: "t"}
	send := func(context.Context, *broker.Message) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send(ctx, msg, send); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkChainExecute measures the execute hooks of four middlewares
// around a task that does nothing.
func BenchmarkChainExecute(b *testing.B) {
	c := benchChain()
	ctx := context.Background()
	msg := &broker.Message{TaskID: "id", TaskName: "t"}
	run := func(context.Context) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		if res := c.Execute(ctx, msg, run); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}
