package worker_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
)

// BenchmarkExecute measures the worker's dequeue-execute-ack cycle: b.N
// no-op tasks kicked beforehand, then drained, on the in-memory broker and
// on the Redis list broker (a private redis-server).
func BenchmarkExecute(b *testing.B) {
	brokers := map[string]func(b *testing.B) broker.Broker{
		"inmemory": func(*testing.B) broker.Broker { return broker.NewInMemory() },
		"redis": func(b *testing.B) broker.Broker {
			q, err := broker.NewListQueue(redistest.Shared(b).URL(), broker.WithKeyPrefix(redistest.Prefix(b)), broker.WithLogger(quiet))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = q.Shutdown(context.Background()) })
			return q
		},
	}
	for _, name := range []string{"inmemory", "redis"} {
		for _, conc := range []int{1, 64} {
			b.Run(fmt.Sprintf("broker=%s/concurrency=%d", name, conc), func(b *testing.B) {
				benchDrain(b, brokers[name](b), conc)
			})
		}
	}
}

func benchDrain(b *testing.B, br broker.Broker, conc int) {
	var left atomic.Int64
	left.Store(int64(b.N))
	drained := make(chan struct{})
	tk := task.Define(br, "noop", func(ctx context.Context, a Args) error {
		if left.Add(-1) == 0 {
			close(drained)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	args := make([]Args, b.N)
	for i := range args {
		args[i] = Args{N: i}
	}
	_, errs := tk.KiqMany(ctx, args)
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	w := worker.New(br, worker.Options{Concurrency: conc, Logger: quiet})
	stopped := make(chan struct{})
	b.ReportAllocs()
	b.ResetTimer()
	go func() { _ = w.Run(ctx); close(stopped) }()
	<-drained
	b.StopTimer()
	cancel()
	<-stopped
}

// BenchmarkInFlightMemory measures what a worker holds per task in flight:
// b.N tasks blocked in their handler on the Redis list broker, with
// Concurrency b.N, reported as goroutine stack and heap bytes per task. A
// task's goroutine keeps the stack of its deepest call so far, as long as
// it uses more than a quarter of it while blocked (past that, the GC
// halves it), so the worker's frames under the handler are kept small.
func BenchmarkInFlightMemory(b *testing.B) {
	q, err := broker.NewListQueue(redistest.Shared(b).URL(), broker.WithKeyPrefix(redistest.Prefix(b)), broker.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	defer q.Shutdown(context.Background())
	var running atomic.Int64
	block := make(chan struct{})
	tk := task.Define(q, "blocked", func(ctx context.Context, a SumArgs) error {
		running.Add(1)
		<-block
		return nil
	})
	args := make([]SumArgs, b.N)
	if _, errs := tk.KiqMany(context.Background(), args); errors.Join(errs...) != nil {
		b.Fatal(errors.Join(errs...))
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	w := worker.New(q, worker.Options{Concurrency: b.N, Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	for running.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/float64(b.N), "stack-B/task")
	b.ReportMetric((float64(after.HeapInuse)-float64(before.HeapInuse))/float64(b.N), "heap-B/task")
	close(block)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
