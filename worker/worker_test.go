package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
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

// spy wraps a broker's consumers to count calls and inject failures.
type spy struct {
	broker.Broker
	mu         sync.Mutex
	fetchErrs  int // the next Fetch calls that fail
	ackCalls   int
	acked      int
	held, peak int
}

func (s *spy) Consume(ctx context.Context, opts broker.ConsumeOptions) (broker.Consumer, error) {
	c, err := s.Broker.Consume(ctx, opts)
	return &spyConsumer{Consumer: c, s: s}, err
}

type spyConsumer struct {
	broker.Consumer
	s *spy
}

func (c *spyConsumer) Fetch(ctx context.Context, limit int) ([]*broker.Delivery, error) {
	c.s.mu.Lock()
	if c.s.fetchErrs > 0 {
		c.s.fetchErrs--
		c.s.mu.Unlock()
		return nil, errors.New("injected fetch failure")
	}
	c.s.mu.Unlock()
	ds, err := c.Consumer.Fetch(ctx, limit)
	c.s.mu.Lock()
	c.s.held += len(ds)
	c.s.peak = max(c.s.peak, c.s.held)
	c.s.mu.Unlock()
	return ds, err
}

func (c *spyConsumer) settled(n int) {
	c.s.mu.Lock()
	c.s.held -= n
	c.s.mu.Unlock()
}

func (c *spyConsumer) Ack(ctx context.Context, ds ...*broker.Delivery) error {
	c.s.mu.Lock()
	c.s.ackCalls++
	c.s.acked += len(ds)
	c.s.mu.Unlock()
	c.settled(len(ds))
	return c.Consumer.Ack(ctx, ds...)
}

func (c *spyConsumer) Retry(ctx context.Context, d *broker.Delivery, m *broker.Message, delay time.Duration) error {
	c.settled(1)
	return c.Consumer.Retry(ctx, d, m, delay)
}

func (c *spyConsumer) DeadLetter(ctx context.Context, d *broker.Delivery, reason string) error {
	c.settled(1)
	return c.Consumer.DeadLetter(ctx, d, reason)
}

func (c *spyConsumer) HandBack(ctx context.Context, ds ...*broker.Delivery) error {
	c.settled(len(ds))
	return c.Consumer.HandBack(ctx, ds...)
}

type Args struct {
	N int `msgpack:"n"`
}

// start runs w until the test ends (or the returned stop is called) and
// returns a function that stops it and reports Run's error.
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

func deadLetters(t *testing.T, b *broker.InMemory) []broker.DeadLetter {
	dls, err := b.DeadLetters(context.Background(), broker.DefaultQueue, 0, 100)
	require.NoError(t, err)
	return dls
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
	ctx := context.Background()
	_, err := tk.Kiq(ctx, Args{N: 1})
	require.NoError(t, err)
	_, err = tk.Kiq(ctx, Args{N: 2})
	require.NoError(t, err)
	require.Equal(t, 2, <-ran)
	require.Eventually(t, func() bool { return len(deadLetters(t, b)) == 1 }, time.Second, 5*time.Millisecond)
	require.Contains(t, deadLetters(t, b)[0].Reason, "kiq: task panicked: boom")
	require.Equal(t, int64(1), w.Stats().Failed)
}

type panicCatcher struct {
	middleware.Base
	got chan error
}

func (p panicCatcher) OnError(ctx context.Context, msg *broker.Message, res *middleware.Result) {
	p.got <- res.Err
}

func TestPanicErrorCarriesTheStack(t *testing.T) {
	catcher := panicCatcher{got: make(chan error, 1)}
	b := broker.NewInMemory().WithMiddlewares(catcher)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { panic(errors.New("inner")) })
	start(t, worker.New(b, worker.Options{Logger: quiet}))
	_, err := tk.Kiq(context.Background(), Args{})
	require.NoError(t, err)
	got := <-catcher.got
	var pe *worker.PanicError
	require.ErrorAs(t, got, &pe)
	require.Contains(t, string(pe.Stack), "worker_test.go")
}

func TestTimeoutLabelIsTheTasksDeadline(t *testing.T) {
	b := broker.NewInMemory()
	got := make(chan error, 1)
	tk := task.Define(b, "slow", func(ctx context.Context, a Args) error {
		<-ctx.Done()
		got <- ctx.Err()
		return ctx.Err()
	}, task.WithLabels(task.Labels{"timeout": 0.05}))
	start(t, worker.New(b, worker.Options{Logger: quiet}))
	_, err := tk.Kiq(context.Background(), Args{})
	require.NoError(t, err)
	select {
	case err := <-got:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(2 * time.Second):
		t.Fatal("the task's context had no deadline")
	}
}

func TestBadInputIsDeadLettered(t *testing.T) {
	b := broker.NewInMemory()
	ran := make(chan int, 1)
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { ran <- a.N; return nil })
	ctx := context.Background()
	// An unknown task name, and arguments of the wrong type.
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: "unknown", TaskName: "nobody", Args: []byte{0x80}}))
	wrong, err := b.Formatter().EncodeArgs(map[string]any{"n": "not a number"})
	require.NoError(t, err)
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: "wrong", TaskName: "t", Args: wrong}))
	start(t, worker.New(b, worker.Options{Logger: quiet}))
	_, err = tk.Kiq(ctx, Args{N: 7})
	require.NoError(t, err)
	require.Equal(t, 7, <-ran, "the worker goes on")
	require.Eventually(t, func() bool { return len(deadLetters(t, b)) == 2 }, time.Second, 5*time.Millisecond)
	reasons := map[string]string{}
	for _, dl := range deadLetters(t, b) {
		reasons[dl.TaskID] = dl.Reason
	}
	require.Equal(t, `unknown task "nobody"`, reasons["unknown"])
	require.True(t, strings.HasPrefix(reasons["wrong"], "bad arguments: "), reasons["wrong"])
}

func TestConcurrencyAndPrefetchBounds(t *testing.T) {
	mem := broker.NewInMemory()
	s := &spy{Broker: mem}
	var running, peak atomic.Int64
	var done atomic.Int64
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
		running.Add(-1)
		done.Add(1)
		return nil
	})
	ctx := context.Background()
	for i := range 300 {
		_, err := tk.Kiq(ctx, Args{N: i})
		require.NoError(t, err)
	}
	start(t, worker.New(s, worker.Options{Concurrency: 5, Prefetch: 8, Logger: quiet}))
	require.Eventually(t, func() bool { return done.Load() == 300 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, int64(5), peak.Load(), "exactly Concurrency tasks at once at the peak")
	s.mu.Lock()
	defer s.mu.Unlock()
	require.LessOrEqual(t, s.peak, 8, "never more than Prefetch deliveries held")
	require.Equal(t, 300, s.acked)
	require.Less(t, s.ackCalls, 300, "acks are batched")
}

func TestShutdownHandsBackAndWaits(t *testing.T) {
	b := broker.NewInMemory()
	started := make(chan struct{}, 10)
	release := make(chan struct{})
	var finished atomic.Int64
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error {
		started <- struct{}{}
		<-release
		finished.Add(1)
		return nil
	})
	ctx := context.Background()
	for i := range 6 {
		_, err := tk.Kiq(ctx, Args{N: i})
		require.NoError(t, err)
	}
	w := worker.New(b, worker.Options{Concurrency: 2, Prefetch: 6, Logger: quiet})
	stop := start(t, w)
	<-started
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-stopped:
		t.Fatal("Run returned while tasks were running")
	default:
	}
	close(release)
	require.NoError(t, <-stopped)
	require.Equal(t, int64(2), finished.Load(), "the running tasks finished")
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(4), stats.Pending, "the four not started are back on the queue")
	require.Equal(t, int64(4), w.Stats().HandedBack)
	require.Empty(t, deadLetters(t, b))
}

func TestShutdownTimeoutCancelsStuckTasks(t *testing.T) {
	b := broker.NewInMemory()
	cancelled := make(chan struct{})
	tk := task.Define(b, "stuck", func(ctx context.Context, a Args) error {
		<-ctx.Done()
		close(cancelled)
		return ctx.Err()
	})
	_, err := tk.Kiq(context.Background(), Args{})
	require.NoError(t, err)
	w := worker.New(b, worker.Options{ShutdownTimeout: 100 * time.Millisecond, Logger: quiet})
	stop := start(t, w)
	require.Eventually(t, func() bool { return w.Stats().Running == 1 }, time.Second, time.Millisecond)
	require.NoError(t, stop())
	select {
	case <-cancelled:
	default:
		t.Fatal("the stuck task's context was not cancelled")
	}
}

// retryTwice retries every failure twice, at once.
type retryTwice struct{ middleware.Base }

func (retryTwice) RetryDelay(msg *broker.Message, err error) (time.Duration, bool) {
	return 0, msg.Attempt < 2
}

func TestRetriesRaiseTheAttemptThenDeadLetter(t *testing.T) {
	b := broker.NewInMemory().WithMiddlewares(retryTwice{})
	var mu sync.Mutex
	var ids []string
	var attempts []int
	tk := task.Define(b, "flaky", func(ctx context.Context, a Args) error { return errors.New("nope") })
	b2 := b.WithMiddlewares(recorder{f: func(m *broker.Message) {
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, m.TaskID)
		attempts = append(attempts, m.Attempt)
	}})
	h, err := tk.Kiq(context.Background(), Args{})
	require.NoError(t, err)
	w := worker.New(b2, worker.Options{Logger: quiet})
	start(t, w)
	require.Eventually(t, func() bool { return len(deadLetters(t, b)) == 1 }, 2*time.Second, 5*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{0, 1, 2}, attempts)
	require.Equal(t, []string{h.TaskID(), h.TaskID(), h.TaskID()}, ids, "a retry is the same task")
	dl := deadLetters(t, b)[0]
	require.Equal(t, 2, dl.Attempt)
	require.Equal(t, "nope", dl.Reason)
	require.Equal(t, worker.Stats{Failed: 3, Retried: 2, DeadLettered: 1}, w.Stats())
}

type recorder struct {
	middleware.Base
	f func(*broker.Message)
}

func (r recorder) PreExecute(ctx context.Context, m *broker.Message) (context.Context, error) {
	r.f(m)
	return ctx, nil
}

func TestFetchFailuresBackOffAndRecover(t *testing.T) {
	mem := broker.NewInMemory()
	s := &spy{Broker: mem, fetchErrs: 4}
	ran := make(chan struct{}, 1)
	tk := task.Define(mem, "t", func(ctx context.Context, a Args) error { ran <- struct{}{}; return nil })
	_, err := tk.Kiq(context.Background(), Args{})
	require.NoError(t, err)
	start(t, worker.New(s, worker.Options{ErrorBackoff: 20 * time.Millisecond, Logger: quiet}))
	select {
	case <-ran:
	case <-time.After(3 * time.Second):
		t.Fatal("the worker did not recover from fetch failures")
	}
}

func TestRunTwiceIsAnError(t *testing.T) {
	b := broker.NewInMemory()
	ran := make(chan struct{})
	tk := task.Define(b, "t", func(ctx context.Context, a Args) error { close(ran); return nil })
	w := worker.New(b, worker.Options{Logger: quiet})
	start(t, w)
	_, err := tk.Kiq(context.Background(), Args{})
	require.NoError(t, err)
	<-ran
	require.ErrorIs(t, w.Run(context.Background()), worker.ErrRunning)
}

func BenchmarkExecute(b *testing.B) {
	mem := broker.NewInMemory()
	done := make(chan struct{}, 1024)
	tk := task.Define(mem, "noop", func(ctx context.Context, a Args) error { done <- struct{}{}; return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := worker.New(mem, worker.Options{Concurrency: 8, Logger: quiet})
	stopped := make(chan struct{})
	go func() { _ = w.Run(ctx); close(stopped) }()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tk.Kiq(ctx, Args{N: 1}); err != nil {
			b.Fatal(err)
		}
		<-done
	}
	cancel()
	<-stopped
}

func newQuietWorker(b broker.Broker) *worker.Worker {
	return worker.New(b, worker.Options{Logger: quiet})
}
