package worker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

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
