package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
	"github.com/stretchr/testify/require"
)

// tracer records every hook it sees as "name.Hook".
type tracer struct {
	middleware.Base
	name  string
	trace *[]string
	fail  map[string]error // hook -> error to return
}

func (m *tracer) log(hook string) error {
	*m.trace = append(*m.trace, m.name+"."+hook)
	return m.fail[hook]
}

func (m *tracer) PreSend(ctx context.Context, msg *broker.Message) error { return m.log("PreSend") }
func (m *tracer) PostSend(ctx context.Context, msg *broker.Message)      { m.log("PostSend") }
func (m *tracer) OnSendError(ctx context.Context, msg *broker.Message, err error) {
	m.log("OnSendError")
}
func (m *tracer) PreExecute(ctx context.Context, msg *broker.Message) (context.Context, error) {
	return context.WithValue(ctx, ctxKey(m.name), true), m.log("PreExecute")
}
func (m *tracer) OnError(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	m.log(fmt.Sprintf("OnError(retry=%v)", res.Retry))
}
func (m *tracer) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	m.log("PostExecute")
}
func (m *tracer) PostSave(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	m.log("PostSave")
}

type ctxKey string

func newTracers(trace *[]string, names ...string) []broker.Middleware {
	var mws []broker.Middleware
	for _, n := range names {
		mws = append(mws, &tracer{name: n, trace: trace, fail: map[string]error{}})
	}
	return mws
}

// The order of the hooks around a kick and an execution, for two middlewares
// registered as m1, m2.
func ExampleChain() {
	var trace []string
	chain := middleware.NewChain(newTracers(&trace, "m1", "m2"))
	msg := &broker.Message{TaskID: "id", TaskName: "demo"}
	ctx := context.Background()

	_ = chain.Send(ctx, msg, func(context.Context, *broker.Message) error {
		trace = append(trace, "broker.Kick")
		return nil
	})
	fmt.Println(strings.Join(trace, " -> "))

	trace = nil
	res := chain.Execute(ctx, msg, func(context.Context) (any, error) {
		trace = append(trace, "task")
		return nil, nil
	})
	chain.PostSave(ctx, msg, res)
	fmt.Println(strings.Join(trace, " -> "))
	// Output:
	// m1.PreSend -> m2.PreSend -> broker.Kick -> m2.PostSend -> m1.PostSend
	// m1.PreExecute -> m2.PreExecute -> task -> m2.PostExecute -> m1.PostExecute -> m2.PostSave -> m1.PostSave
}

func TestSendErrorRunsOnSendErrorInReverse(t *testing.T) {
	var trace []string
	chain := middleware.NewChain(newTracers(&trace, "m1", "m2"))
	sendErr := errors.New("boom")
	err := chain.Send(context.Background(), &broker.Message{}, func(context.Context, *broker.Message) error {
		trace = append(trace, "broker.Kick")
		return sendErr
	})
	require.ErrorIs(t, err, sendErr)
	require.Equal(t, []string{"m1.PreSend", "m2.PreSend", "broker.Kick", "m2.OnSendError", "m1.OnSendError"}, trace)
}

func TestPreSendErrorStopsTheSend(t *testing.T) {
	var trace []string
	mws := newTracers(&trace, "m1", "m2", "m3")
	hookErr := errors.New("rejected")
	mws[1].(*tracer).fail["PreSend"] = hookErr
	chain := middleware.NewChain(mws)
	sent := false
	err := chain.Send(context.Background(), &broker.Message{}, func(context.Context, *broker.Message) error {
		sent = true
		return nil
	})
	require.ErrorIs(t, err, hookErr)
	require.False(t, sent)
	// m2 failed: only m1, whose PreSend succeeded, hears of it; m3 never ran.
	require.Equal(t, []string{"m1.PreSend", "m2.PreSend", "m1.OnSendError"}, trace)
}

func TestPreExecuteErrorSkipsTheTaskButNotThePostHooks(t *testing.T) {
	var trace []string
	mws := newTracers(&trace, "m1", "m2")
	hookErr := errors.New("not now")
	mws[0].(*tracer).fail["PreExecute"] = hookErr
	chain := middleware.NewChain(mws)
	ran := false
	res := chain.Execute(context.Background(), &broker.Message{}, func(context.Context) (any, error) {
		ran = true
		return nil, nil
	})
	require.False(t, ran)
	require.ErrorIs(t, res.Err, hookErr)
	require.Equal(t, []string{"m1.PreExecute", "m2.OnError(retry=false)", "m1.OnError(retry=false)", "m2.PostExecute", "m1.PostExecute"}, trace)
}

func TestPreExecuteContextReachesTheTask(t *testing.T) {
	var trace []string
	chain := middleware.NewChain(newTracers(&trace, "m1", "m2"))
	chain.Execute(context.Background(), &broker.Message{}, func(ctx context.Context) (any, error) {
		require.Equal(t, true, ctx.Value(ctxKey("m1")))
		require.Equal(t, true, ctx.Value(ctxKey("m2")))
		return nil, nil
	})
}

type retrier struct {
	middleware.Base
	delay time.Duration
}

func (r retrier) RetryDelay(msg *broker.Message, err error) (time.Duration, bool) {
	return r.delay, msg.Attempt < 2
}

func TestRetryIsDecidedBeforeEveryPostHook(t *testing.T) {
	var trace []string
	// The retrier is registered last, yet m1's OnError already sees its verdict.
	mws := append(newTracers(&trace, "m1"), retrier{delay: time.Second})
	chain := middleware.NewChain(mws)
	taskErr := errors.New("flaky")
	res := chain.Execute(context.Background(), &broker.Message{Attempt: 0}, func(context.Context) (any, error) {
		return nil, taskErr
	})
	require.True(t, res.Retry)
	require.Equal(t, time.Second, res.RetryDelay)
	require.Contains(t, trace, "m1.OnError(retry=true)")

	res = chain.Execute(context.Background(), &broker.Message{Attempt: 2}, func(context.Context) (any, error) {
		return nil, taskErr
	})
	require.False(t, res.Retry)
}

type clearer struct{ middleware.Base }

func (clearer) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	res.Err = nil
	res.Value = "recovered"
}

func TestPostExecuteMayChangeTheResult(t *testing.T) {
	chain := middleware.NewChain([]broker.Middleware{clearer{}})
	res := chain.Execute(context.Background(), &broker.Message{}, func(context.Context) (any, error) {
		return nil, errors.New("x")
	})
	require.NoError(t, res.Err)
	require.Equal(t, "recovered", res.Value)
}

func TestPostExecuteSeesTheDuration(t *testing.T) {
	var seen time.Duration
	chain := middleware.NewChain([]broker.Middleware{durationSpy{seen: &seen}})
	chain.Execute(context.Background(), &broker.Message{}, func(context.Context) (any, error) {
		time.Sleep(20 * time.Millisecond)
		return nil, nil
	})
	require.GreaterOrEqual(t, seen, 20*time.Millisecond)
}

type durationSpy struct {
	middleware.Base
	seen *time.Duration
}

func (d durationSpy) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	*d.seen = res.Duration
}
