package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

type Args struct {
	N int `msgpack:"n"`
}

// start runs w until the test ends, and returns a function that stops it
// (as the end of Run's context does) and reports Run's error.
func start(t *testing.T, w *worker.Worker) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func newQuietWorker(b broker.Broker) *worker.Worker {
	return worker.New(b, worker.Options{Logger: quiet})
}

// recv receives from ch, failing the test after 10 s rather than hanging.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received in 10 s")
		panic("unreachable")
	}
}

func kick(t *testing.T, tk *task.Task[Args], n int) string {
	t.Helper()
	h, err := tk.Kiq(context.Background(), Args{N: n})
	require.NoError(t, err)
	return h.TaskID()
}

func deadLetters(t *testing.T, b *broker.InMemory) []broker.DeadLetter {
	t.Helper()
	dls, err := b.DeadLetters(context.Background(), broker.DefaultQueue, 0, 1000)
	require.NoError(t, err)
	return dls
}

func queueStats(t *testing.T, b *broker.InMemory) broker.QueueStats {
	t.Helper()
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	return s
}

// pending takes the messages waiting in b's default queue, in order.
func pending(t *testing.T, b *broker.InMemory) []*broker.Message {
	t.Helper()
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	var msgs []*broker.Message
	for queueStats(t, b).Pending > 0 {
		ds, err := c.Fetch(ctx, 100)
		require.NoError(t, err)
		for _, d := range ds {
			msgs = append(msgs, d.Message)
		}
	}
	return msgs
}

// trace records the steps of a test, from any goroutine.
type trace struct {
	mu    sync.Mutex
	steps []string
}

func (tr *trace) add(s string) {
	tr.mu.Lock()
	tr.steps = append(tr.steps, s)
	tr.mu.Unlock()
}

func (tr *trace) get() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.steps...)
}

// hooks records every execution hook of one middleware.
type hooks struct {
	middleware.Base
	name string
	tr   *trace
}

func (h hooks) PreExecute(ctx context.Context, m *broker.Message) (context.Context, error) {
	h.tr.add(h.name + ".PreExecute")
	return ctx, nil
}

func (h hooks) OnError(ctx context.Context, m *broker.Message, res *middleware.Result) {
	h.tr.add(h.name + ".OnError")
}

func (h hooks) PostExecute(ctx context.Context, m *broker.Message, res *middleware.Result) {
	h.tr.add(h.name + ".PostExecute")
}

func (h hooks) PostSave(ctx context.Context, m *broker.Message, res *middleware.Result) {
	h.tr.add(h.name + ".PostSave")
}

// tracedResults records the storing of results.
type tracedResults struct {
	broker.ResultBackend
	tr *trace
}

func (r tracedResults) Store(ctx context.Context, res *broker.TaskResult, ttl time.Duration) error {
	r.tr.add("store")
	return r.ResultBackend.Store(ctx, res, ttl)
}

func TestHookOrderAroundExecution(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fail    bool
		results bool
		want    []string
	}{
		{"success", false, true, []string{
			"m1.PreExecute", "m2.PreExecute", "task", "m2.PostExecute", "m1.PostExecute",
			"store", "m2.PostSave", "m1.PostSave", "ack"}},
		{"failure", true, true, []string{
			"m1.PreExecute", "m2.PreExecute", "task", "m2.OnError", "m1.OnError", "m2.PostExecute", "m1.PostExecute",
			"store", "m2.PostSave", "m1.PostSave", "dead-letter"}},
		{"no result backend", false, false, []string{
			"m1.PreExecute", "m2.PreExecute", "task", "m2.PostExecute", "m1.PostExecute", "ack"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &trace{}
			mem := broker.NewInMemory().WithMiddlewares(hooks{name: "m1", tr: tr}, hooks{name: "m2", tr: tr})
			if tc.results {
				mem.WithResultBackend(tracedResults{ResultBackend: broker.NewMemoryResults(0), tr: tr})
			}
			tb := newTestBroker(mem)
			settled := make(chan struct{})
			tb.onSettle = func(call string) { tr.add(call); close(settled) }
			tk := task.Define(mem, "t", func(ctx context.Context, a Args) error {
				tr.add("task")
				if tc.fail {
					return errors.New("failed")
				}
				return nil
			})
			kick(t, tk, 1)
			start(t, worker.New(tb, worker.Options{Logger: quiet}))
			recv(t, settled)
			require.Equal(t, tc.want, tr.get())
		})
	}
}

func TestPanicIsTheTasksErrorAndTheWorkerGoesOn(t *testing.T) {
	b := broker.NewInMemory()
	ran := make(chan int, 10)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error {
		if a.N == 1 {
			panic("boom")
		}
		ran <- a.N
		return nil
	})
	w := worker.New(b, worker.Options{Concurrency: 1, Logger: quiet})
	start(t, w)
	kick(t, tk, 1)
	kick(t, tk, 2)
	require.Equal(t, 2, recv(t, ran), "the worker goes on")
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 5*time.Second, time.Millisecond)
	dl := deadLetters(t, b)
	require.Len(t, dl, 1)
	require.Contains(t, dl[0].Reason, "kiq: task panicked: boom")
	require.Equal(t, int64(1), w.Stats().Failed)
}

type errorCatcher struct {
	middleware.Base
	got chan error
}

func (c errorCatcher) OnError(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	c.got <- res.Err
}

func TestPanicErrorCarriesTheStackAndTheValue(t *testing.T) {
	inner := errors.New("inner")
	catcher := errorCatcher{got: make(chan error, 1)}
	b := broker.NewInMemory().WithMiddlewares(catcher)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { panic(inner) })
	start(t, newQuietWorker(b))
	kick(t, tk, 0)
	err := recv(t, catcher.got)
	pe, ok := errors.AsType[*worker.PanicError](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, inner, pe.Value)
	require.Contains(t, string(pe.Stack), "worker_test.go", "the stack of the panicking task")
	require.ErrorIs(t, err, inner, "errors.Is sees through the panic")
	require.Equal(t, "kiq: task panicked: inner", pe.Error())
}

// panickyHook panics in its PostExecute hook.
type panickyHook struct{ middleware.Base }

func (panickyHook) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	panic("hook bug")
}

func TestAPanickingMiddlewareDoesNotCrashTheWorker(t *testing.T) {
	b := broker.NewInMemory().WithMiddlewares(panickyHook{})
	ran := make(chan int, 2)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- a.N; return nil })
	w := worker.New(b, worker.Options{Concurrency: 1, Logger: quiet})
	start(t, w)
	kick(t, tk, 1)
	kick(t, tk, 2)
	require.Equal(t, 1, recv(t, ran))
	require.Equal(t, 2, recv(t, ran), "the worker goes on")
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 2 }, 5*time.Second, time.Millisecond)
	require.Equal(t, "kiq: middleware worker_test.panickyHook PostExecute panicked: hook bug", deadLetters(t, b)[0].Reason)
}

// ctxSpy reports the context its PostExecute hook gets.
type ctxSpy struct {
	middleware.Base
	got chan error
}

func (s ctxSpy) PostExecute(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	s.got <- ctx.Err()
}

func TestTimeoutLabelIsTheHandlersDeadline(t *testing.T) {
	spy := ctxSpy{got: make(chan error, 1)}
	b := broker.NewInMemory().WithMiddlewares(spy)
	seen := make(chan error, 1)
	tk := task.Define(b, "slow", func(ctx context.Context, a Args) error {
		<-ctx.Done()
		seen <- ctx.Err()
		return ctx.Err()
	}, task.WithLabels(task.Labels{"timeout": 0.05}))
	w := newQuietWorker(b)
	start(t, w)
	begun := time.Now()
	kick(t, tk, 0)
	select {
	case err := <-seen:
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(begun), 2*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("the task's context had no deadline")
	}
	require.NoError(t, recv(t, spy.got), "the hooks' context is not the handler's deadline")
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 5*time.Second, time.Millisecond)
	require.Contains(t, deadLetters(t, b)[0].Reason, "context deadline exceeded")
}

func TestBadInputIsDeadLetteredAndTheWorkerGoesOn(t *testing.T) {
	b := broker.NewInMemory()
	ran := make(chan int, 1)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- a.N; return nil })
	ctx := context.Background()
	// A message that does not decode (no task name), an unknown task name,
	// and arguments of the wrong type.
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: "undecodable"}))
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: "unknown", TaskName: "nobody", Args: []byte{0x80}}))
	wrong, err := b.Formatter().EncodeArgs(map[string]any{"n": "not a number"})
	require.NoError(t, err)
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: "wrong", TaskName: "t", Args: wrong}))
	w := worker.New(b, worker.Options{Concurrency: 1, Logger: quiet})
	start(t, w)
	kick(t, tk, 7)
	require.Equal(t, 7, recv(t, ran), "the worker goes on")
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 3 }, 5*time.Second, time.Millisecond)

	dls := deadLetters(t, b)
	require.Len(t, dls, 3)
	// Newest first.
	require.Equal(t, "wrong", dls[0].TaskID)
	require.Contains(t, dls[0].Reason, "kiq: malformed message: arguments")
	require.Equal(t, "unknown", dls[1].TaskID)
	require.Equal(t, `unknown task "nobody"`, dls[1].Reason)
	require.Empty(t, dls[2].TaskID, "an undecodable message has no known id")
	require.Contains(t, dls[2].Reason, "kiq: malformed message")
	require.Contains(t, dls[2].Reason, "missing task_id or task_name")
	require.NotEmpty(t, dls[2].Raw, "the raw message is kept")

	require.Equal(t, worker.Stats{Done: 1, Failed: 1, DeadLettered: 3}, w.Stats(),
		"only the wrong arguments reached the task and failed")
}

func TestConcurrencyAndPrefetchBounds(t *testing.T) {
	mem := broker.NewInMemory()
	tb := newTestBroker(mem)
	var running, peak, done atomic.Int64
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error {
		n := running.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(time.Millisecond)
		running.Add(-1)
		done.Add(1)
		return nil
	})
	for i := range 300 {
		kick(t, tk, i)
	}
	start(t, worker.New(tb, worker.Options{Concurrency: 5, Prefetch: 8, Logger: quiet}))
	require.Eventually(t, func() bool { return done.Load() == 300 }, 20*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return queueStats(t, mem).InFlight == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, int64(5), peak.Load(), "Concurrency tasks at once, never more")
	tb.mu.Lock()
	defer tb.mu.Unlock()
	require.Equal(t, 8, tb.peak, "Prefetch deliveries held at once, never more")
	sum := 0
	for _, n := range tb.ackSizes {
		sum += n
	}
	require.Equal(t, 300, sum)
}

func TestDefaults(t *testing.T) {
	mem := broker.NewInMemory()
	tb := newTestBroker(mem)
	release := make(chan struct{})
	var running atomic.Int64
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error {
		running.Add(1)
		<-release
		return nil
	})
	for i := range 40 {
		kick(t, tk, i)
	}
	w := worker.New(tb, worker.Options{Logger: quiet})
	stop := start(t, w)
	require.Eventually(t, func() bool { return running.Load() == 16 }, 5*time.Second, time.Millisecond, "Concurrency 16")
	require.Eventually(t, func() bool { tb.mu.Lock(); defer tb.mu.Unlock(); return tb.held == 32 },
		5*time.Second, time.Millisecond, "Prefetch 2×16")
	time.Sleep(20 * time.Millisecond)
	require.Equal(t, int64(16), running.Load())
	close(release)
	require.NoError(t, stop())
}

func TestAcksAreCoalesced(t *testing.T) {
	mem := broker.NewInMemory()
	tb := newTestBroker(mem)
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error { return nil })
	entered, release := tb.gateAck()
	w := worker.New(tb, worker.Options{Concurrency: 10, Logger: quiet})
	start(t, w)
	kick(t, tk, 0)
	recv(t, entered) // the first Ack call is in flight, and held there
	for i := range 9 {
		kick(t, tk, i+1)
	}
	require.Eventually(t, func() bool { return w.Stats().Done == 10 }, 5*time.Second, time.Millisecond)
	release()
	require.Eventually(t, func() bool { return queueStats(t, mem).InFlight == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, []int{1, 9}, tb.acks(), "one call in flight, then one for all that finished meanwhile")
	require.Equal(t, 2, tb.count("ack"))
}

func TestFailedAcksAreRetriedNotDropped(t *testing.T) {
	mem := broker.NewInMemory()
	tb := newTestBroker(mem)
	tb.ackErrs = 5
	var runs atomic.Int64
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error { runs.Add(1); return nil })
	log, logs := newLogRecorder()
	w := worker.New(tb, worker.Options{ErrorBackoff: 5 * time.Millisecond, Logger: log})
	stop := start(t, w)
	for i := range 20 {
		kick(t, tk, i)
	}
	require.Eventually(t, func() bool {
		s := queueStats(t, mem)
		return s.InFlight == 0 && s.Pending == 0 && w.Stats().Done == 20
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, stop())
	require.Equal(t, int64(20), runs.Load(), "every task ran once")
	require.Equal(t, 5, tb.count("ack")-len(tb.acks()), "five failed calls, retried")
	require.Empty(t, deadLetters(t, mem))
	require.Equal(t, 1, logs.count("broker call failed"), "one line for the failures")
	require.Equal(t, 1, logs.count("broker call recovered"))
}

func TestFetchFailuresBackOffAndRecover(t *testing.T) {
	mem := broker.NewInMemory()
	tb := newTestBroker(mem)
	tb.fetchErrs = 30
	ran := make(chan struct{})
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error { close(ran); return nil })
	kick(t, tk, 0)
	log, logs := newLogRecorder()
	begun := time.Now()
	start(t, worker.New(tb, worker.Options{ErrorBackoff: 4 * time.Millisecond, Logger: log}))
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the worker did not recover from fetch failures")
	}
	// 30 waits of at least 2 ms (half of the 4 ms cap, with jitter).
	require.GreaterOrEqual(t, time.Since(begun), 30*time.Millisecond, "the worker backs off")
	require.GreaterOrEqual(t, tb.count("fetch"), 31)
	require.Eventually(t, func() bool { return logs.count("broker call recovered") == 1 }, time.Second, time.Millisecond)
	require.Equal(t, 1, logs.count("broker call failed"), "not one line per retry")
}

func TestConsumeIsRetried(t *testing.T) {
	mem := broker.NewInMemory()
	tb := newTestBroker(mem)
	tb.consumeErrs = 3
	ran := make(chan struct{})
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error { close(ran); return nil })
	kick(t, tk, 0)
	start(t, worker.New(tb, worker.Options{ErrorBackoff: time.Millisecond, Logger: quiet}))
	recv(t, ran)
	require.Equal(t, 4, tb.count("consume"))
}

// failingStartup fails its first failures Startup calls.
type failingStartup struct {
	middleware.Base
	failures atomic.Int64
}

func (f *failingStartup) Startup(ctx context.Context) error {
	if f.failures.Add(-1) >= 0 {
		return errors.New("no connection")
	}
	return nil
}

func TestStartupIsRetriedUntilItSucceeds(t *testing.T) {
	fs := &failingStartup{}
	fs.failures.Store(3)
	b := broker.NewInMemory().WithMiddlewares(fs)
	ran := make(chan struct{})
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { close(ran); return nil })
	kick(t, tk, 1)
	start(t, worker.New(b, worker.Options{ErrorBackoff: 20 * time.Millisecond, Logger: quiet}))
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the worker did not start after Startup recovered")
	}
	require.LessOrEqual(t, fs.failures.Load(), int64(-1))

	// A Startup that never succeeds keeps Run waiting until its context ends.
	never := &failingStartup{}
	never.failures.Store(1 << 40)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	require.NoError(t, worker.New(broker.NewInMemory().WithMiddlewares(never), worker.Options{ErrorBackoff: 20 * time.Millisecond, Logger: quiet}).Run(ctx))
	require.Less(t, never.failures.Load(), int64(1<<40-1), "retried")
}

func TestShutdownHandsBackTheUnstartedAndWaitsForTheRunning(t *testing.T) {
	b := broker.NewInMemory()
	started := make(chan int, 10)
	release := make(chan struct{})
	var finished atomic.Int64
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error {
		started <- a.N
		<-release
		finished.Add(1)
		return nil
	})
	for i := range 6 {
		kick(t, tk, i)
	}
	w := worker.New(b, worker.Options{Concurrency: 2, Prefetch: 6, Logger: quiet})
	stop := start(t, w)
	first := map[int]bool{recv(t, started): true, recv(t, started): true}
	require.Equal(t, int64(6), queueStats(t, b).InFlight, "all six fetched")
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	require.Eventually(t, func() bool { return queueStats(t, b).Pending == 4 }, 5*time.Second, time.Millisecond,
		"the four not started are handed back at once")
	select {
	case <-stopped:
		t.Fatal("Run returned while tasks were running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	require.NoError(t, recv(t, stopped))
	require.Equal(t, int64(2), finished.Load(), "the running tasks finished")
	require.Equal(t, worker.Stats{Done: 2, HandedBack: 4}, w.Stats())
	require.Empty(t, deadLetters(t, b))
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Pending: 4}, queueStats(t, b))
	back := pending(t, b)
	require.Len(t, back, 4)
	for _, m := range back {
		require.Equal(t, 0, m.Attempt, "a hand-back is not a failed attempt")
		var a Args
		require.NoError(t, b.Formatter().DecodeArgs(m.Args, &a))
		require.False(t, first[a.N], "task %d ran and was handed back", a.N)
	}
}

func TestShutdownTimeoutCancelsAStuckTask(t *testing.T) {
	b := broker.NewInMemory()
	cause := make(chan error, 1)
	tk := task.Define(b, "stuck", func(ctx context.Context, a Args) error {
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return ctx.Err()
	})
	kick(t, tk, 0)
	w := worker.New(b, worker.Options{ShutdownTimeout: 50 * time.Millisecond, Logger: quiet})
	stop := start(t, w)
	require.Eventually(t, func() bool { return w.Stats().Running == 1 }, 5*time.Second, time.Millisecond)
	begun := time.Now()
	require.NoError(t, stop())
	require.GreaterOrEqual(t, time.Since(begun), 50*time.Millisecond, "the shutdown waited")
	require.Less(t, time.Since(begun), time.Second, "and no longer than needed")
	require.ErrorIs(t, recv(t, cause), worker.ErrShutdownTimeout)
	require.Equal(t, worker.Stats{HandedBack: 1}, w.Stats(), "an interrupted task is not a failure")
	require.Empty(t, deadLetters(t, b))
	back := pending(t, b)
	require.Len(t, back, 1, "it is handed back, to run again")
	require.Equal(t, 0, back[0].Attempt)
}

func TestShutdownLeavesATaskThatIgnoresCancellationToTheBroker(t *testing.T) {
	b := broker.NewInMemory()
	release, returned := make(chan struct{}), make(chan struct{})
	tk := task.Define(b, "deaf", func(ctx context.Context, a Args) error {
		defer close(returned)
		<-release
		return nil
	})
	kick(t, tk, 0)
	log, logs := newLogRecorder()
	w := worker.New(b, worker.Options{ShutdownTimeout: 20 * time.Millisecond, Logger: log})
	stop := start(t, w)
	require.Eventually(t, func() bool { return w.Stats().Running == 1 }, 5*time.Second, time.Millisecond)
	begun := time.Now()
	require.NoError(t, stop())
	require.GreaterOrEqual(t, time.Since(begun), time.Second, "one second of grace after the cancellation")
	require.Equal(t, 1, logs.count("left to the broker"))
	require.Equal(t, int64(1), queueStats(t, b).Pending, "the consumer's close gave it back to the queue")
	close(release)
	recv(t, returned)
	require.Eventually(t, func() bool { return w.Stats().Running == 0 }, 5*time.Second, time.Millisecond)
}

func TestShutdownMethod(t *testing.T) {
	b := broker.NewInMemory()
	started, release := make(chan struct{}), make(chan struct{})
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error {
		close(started)
		<-release
		return nil
	})
	w := newQuietWorker(b)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background()) }()
	kick(t, tk, 0)
	recv(t, started)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, w.Shutdown(ctx), context.DeadlineExceeded, "the task still runs")
	close(release)
	require.NoError(t, w.Shutdown(context.Background()))
	require.NoError(t, recv(t, ran), "a graceful stop")
	require.Equal(t, int64(1), w.Stats().Done)
	require.ErrorIs(t, w.Run(context.Background()), worker.ErrClosed, "Shutdown is final")
}

func TestShutdownBeforeRun(t *testing.T) {
	w := newQuietWorker(broker.NewInMemory())
	require.NoError(t, w.Shutdown(context.Background()))
	require.ErrorIs(t, w.Run(context.Background()), worker.ErrClosed)
}

func TestRunTwiceIsAnError(t *testing.T) {
	b := broker.NewInMemory()
	ran := make(chan struct{})
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { close(ran); return nil })
	w := newQuietWorker(b)
	start(t, w)
	kick(t, tk, 0)
	recv(t, ran)
	require.ErrorIs(t, w.Run(context.Background()), worker.ErrRunning)
}

// retryTwice retries every failure twice, at once.
type retryTwice struct{ middleware.Base }

func (retryTwice) RetryDelay(msg *broker.Message, err error) (time.Duration, bool) {
	return 0, msg.Attempt < 2
}

type recorder struct {
	middleware.Base
	f func(*broker.Message)
}

func (r recorder) PreExecute(ctx context.Context, m *broker.Message) (context.Context, error) {
	r.f(m)
	return ctx, nil
}

func TestRetriesRedeliverWithTheAttemptRaised(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	var attempts []int
	b := broker.NewInMemory().WithMiddlewares(retryTwice{}, recorder{f: func(m *broker.Message) {
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, m.TaskID)
		attempts = append(attempts, m.Attempt)
	}})
	tk := task.Define(b, "flaky", func(ctx context.Context, a Args) error { return errors.New("nope") })
	id := kick(t, tk, 0)
	w := newQuietWorker(b)
	start(t, w)
	require.Eventually(t, func() bool { return w.Stats().DeadLettered == 1 }, 5*time.Second, time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{0, 1, 2}, attempts)
	require.Equal(t, []string{id, id, id}, ids, "a retry is the same task")
	dl := deadLetters(t, b)[0]
	require.Equal(t, 2, dl.Attempt)
	require.Equal(t, "nope", dl.Reason, "the task's error text")
	require.Equal(t, worker.Stats{Failed: 3, Retried: 2, DeadLettered: 1}, w.Stats())
}

func TestQueuesOption(t *testing.T) {
	b := broker.NewInMemory()
	ran := make(chan string, 2)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- fmt.Sprint(a.N); return nil })
	ctx := context.Background()
	_, err := tk.Kicker().WithLabels(task.Labels{"queue": "emails"}).Kiq(ctx, Args{N: 1})
	require.NoError(t, err)
	kick(t, tk, 2) // the default queue, not consumed
	start(t, worker.New(b, worker.Options{Queues: []string{"emails"}, Logger: quiet}))
	require.Equal(t, "1", recv(t, ran))
	require.Equal(t, int64(1), queueStats(t, b).Pending, "the default queue was not consumed")
}

// Options reports the options the worker runs with, each default filled in.
func TestOptionsFillsDefaults(t *testing.T) {
	o := worker.New(broker.NewInMemory(), worker.Options{}).Options()
	require.Equal(t, worker.DefaultConcurrency, o.Concurrency)
	require.Equal(t, 2*worker.DefaultConcurrency, o.Prefetch)
	require.Equal(t, worker.DefaultShutdownTimeout, o.ShutdownTimeout)
	o = worker.New(broker.NewInMemory(), worker.Options{Concurrency: 8, Prefetch: 4}).Options()
	require.Equal(t, 8, o.Concurrency)
	require.Equal(t, 8, o.Prefetch, "never below the concurrency")
}
