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

// A failure once the chain's own context ended is the shutdown's: handed
// back, never retried. One past a deadline a PreExecute hook set is the
// task's own, and is retried as any failure.
func TestHandedBackIsDecidedFromTheChainsContext(t *testing.T) {
	chain := middleware.NewChain([]broker.Middleware{retrier{delay: time.Second}})
	fail := func(ctx context.Context) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	res := chain.Execute(ended, &broker.Message{}, fail)
	require.True(t, res.HandedBack)
	require.False(t, res.Retry, "a handed-back task is not retried")

	chain = middleware.NewChain([]broker.Middleware{deadline{d: time.Millisecond}, retrier{delay: time.Second}})
	res = chain.Execute(context.Background(), &broker.Message{}, fail)
	require.ErrorIs(t, res.Err, context.DeadlineExceeded)
	require.False(t, res.HandedBack, "the hook's deadline is not the shutdown")
	require.True(t, res.Retry)

	res = chain.Execute(ended, &broker.Message{}, func(context.Context) (any, error) { return "ok", nil })
	require.False(t, res.HandedBack, "a task that succeeded is settled")
}

// deadline is a PreExecute hook that gives the task a deadline of its own.
type deadline struct {
	middleware.Base
	d time.Duration
}

func (m deadline) PreExecute(ctx context.Context, _ *broker.Message) (context.Context, error) {
	ctx, cancel := context.WithTimeout(ctx, m.d)
	context.AfterFunc(ctx, cancel) // its resources go when the deadline passes
	return ctx, nil
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

// nilCtx's PreExecute returns a nil context, with err.
type nilCtx struct {
	middleware.Base
	err error
}

func (n nilCtx) PreExecute(ctx context.Context, msg *broker.Message) (context.Context, error) {
	return nil, n.err
}

// ctxCheck records whether its OnError and PostExecute hooks got a context.
type ctxCheck struct {
	middleware.Base
	nils *[]string
}

func (c ctxCheck) OnError(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	if ctx == nil {
		*c.nils = append(*c.nils, "OnError")
	}
}

func (c ctxCheck) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	if ctx == nil {
		*c.nils = append(*c.nils, "PostExecute")
	}
}

func TestPreExecuteKeepsTheContextOnAnErrorOrANilContext(t *testing.T) {
	var nils []string
	hookErr := errors.New("not now")
	ctx := context.WithValue(context.Background(), ctxKey("outer"), true)
	chain := middleware.NewChain([]broker.Middleware{ctxCheck{nils: &nils}, nilCtx{err: hookErr}})
	res := chain.Execute(ctx, &broker.Message{}, func(context.Context) (any, error) { return nil, nil })
	require.ErrorIs(t, res.Err, hookErr)
	require.Empty(t, nils, "OnError and PostExecute get the context the failing hook was given")

	// (nil, nil): the task runs on the previous context, and can derive one.
	chain = middleware.NewChain([]broker.Middleware{nilCtx{}, ctxCheck{nils: &nils}})
	res = chain.Execute(ctx, &broker.Message{}, func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return ctx.Value(ctxKey("outer")), nil
	})
	require.NoError(t, res.Err)
	require.Equal(t, true, res.Value)
	require.Empty(t, nils)
}

// panicky panics in the hooks named in panics, and traces the others.
type panicky struct {
	middleware.Base
	name   string
	trace  *[]string
	panics map[string]bool
}

func (p panicky) hook(name string) {
	if p.panics[name] {
		panic(p.name + " " + name + " bug")
	}
	*p.trace = append(*p.trace, p.name+"."+name)
}

func (p panicky) PreExecute(ctx context.Context, msg *broker.Message) (context.Context, error) {
	p.hook("PreExecute")
	return ctx, nil
}
func (p panicky) OnError(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	p.hook("OnError")
}
func (p panicky) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	p.hook("PostExecute")
}
func (p panicky) PostSave(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	p.hook("PostSave")
}

func TestHookPanicsDoNotSkipTheOtherPostExecuteHooks(t *testing.T) {
	var trace []string
	chain := middleware.NewChain([]broker.Middleware{
		panicky{name: "m1", trace: &trace},
		panicky{name: "m2", trace: &trace, panics: map[string]bool{"OnError": true}},
		panicky{name: "m3", trace: &trace, panics: map[string]bool{"PostExecute": true}},
	})
	taskErr := errors.New("failed")
	res := chain.Execute(context.Background(), &broker.Message{}, func(context.Context) (any, error) { return nil, taskErr })
	require.Equal(t, []string{"m1.PreExecute", "m2.PreExecute", "m3.PreExecute",
		"m3.OnError", "m1.OnError", "m2.PostExecute", "m1.PostExecute"}, trace)
	require.ErrorIs(t, res.Err, taskErr)
	var pe *middleware.PanicError
	require.ErrorAs(t, res.Err, &pe)
	require.Equal(t, "kiq: middleware middleware_test.panicky OnError panicked: m2 OnError bug", pe.Error())
	require.Contains(t, res.Err.Error(), "kiq: middleware middleware_test.panicky PostExecute panicked: m3 PostExecute bug")
	require.Contains(t, string(pe.Stack), "chain_test.go")

	// A successful task whose PostExecute panicked failed, and is not retried.
	trace = nil
	chain = middleware.NewChain([]broker.Middleware{
		panicky{name: "m1", trace: &trace},
		panicky{name: "m2", trace: &trace, panics: map[string]bool{"PostExecute": true, "PostSave": true}},
		middleware.NewRetry(middleware.RetryOptions{Always: true}),
	})
	res = chain.Execute(context.Background(), &broker.Message{}, func(context.Context) (any, error) { return "ok", nil })
	require.ErrorAs(t, res.Err, &pe)
	require.False(t, res.Retry)
	require.Equal(t, []string{"m1.PreExecute", "m2.PreExecute", "m1.PostExecute"}, trace)
	require.ErrorAs(t, chain.PostSave(context.Background(), &broker.Message{}, res), &pe)
	require.Equal(t, "PostSave", pe.Hook)
	require.Contains(t, trace, "m1.PostSave", "a panicking PostSave does not skip the others")
}

func TestAPreExecutePanicIsTheTasksErrorAndIsNotRetried(t *testing.T) {
	var trace []string
	chain := middleware.NewChain([]broker.Middleware{
		panicky{name: "m1", trace: &trace},
		panicky{name: "m2", trace: &trace, panics: map[string]bool{"PreExecute": true}},
		panicky{name: "m3", trace: &trace},
		middleware.NewRetry(middleware.RetryOptions{Always: true}),
	})
	ran := false
	res := chain.Execute(context.Background(), &broker.Message{}, func(context.Context) (any, error) { ran = true; return nil, nil })
	require.False(t, ran)
	var pe *middleware.PanicError
	require.ErrorAs(t, res.Err, &pe)
	require.Equal(t, "PreExecute", pe.Hook)
	require.False(t, res.Retry)
	require.Equal(t, []string{"m1.PreExecute", "m3.OnError", "m2.OnError", "m1.OnError",
		"m3.PostExecute", "m2.PostExecute", "m1.PostExecute"}, trace)
}
