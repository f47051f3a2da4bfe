package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
)

// benchArgs are the arguments of the bench's no-op task. N makes every task
// distinct (dedup and Unique need distinct payloads); SentAt is the
// producer's clock just before the send, in Unix ns, for the latency
// scenario. asynq gets the same struct as JSON, as its docs suggest.
type benchArgs struct {
	N      int64 `msgpack:"n" json:"n"`
	SentAt int64 `msgpack:"t" json:"t"`
}

// system is one queue under test, as a producer and a consumer on the same
// Redis. Each run makes a new one and closes it.
type system interface {
	// send enqueues one task.
	send(ctx context.Context, a benchArgs) error
	// startWorker starts consuming with the given concurrency, calling
	// onRun at the start of each task's handler, and returns once the
	// worker has been started (not necessarily connected).
	startWorker(concurrency int, onRun func(benchArgs)) error
	// stopWorker stops the worker and waits for it.
	stopWorker()
	// close releases the producer.
	close()
}

// maker makes a fresh system connected to url.
type maker func(url string) (system, error)

const taskName = "bench_noop"

// ---- Kiq ----

type kiqSys struct {
	b     *broker.ListQueue
	t     *task.Task[benchArgs]
	onRun func(benchArgs)

	cancel context.CancelFunc
	done   chan error
}

// newKiq returns a maker of a Kiq ListQueue broker, with the dedup
// middleware sharing the broker's client when withDedup.
func newKiq(withDedup bool) maker {
	return func(url string) (system, error) {
		b, err := broker.NewListQueue(url)
		if err != nil {
			return nil, err
		}
		if withDedup {
			mw, err := dedup.New("", dedup.WithClient(b.Client()))
			if err != nil {
				return nil, err
			}
			b.WithMiddlewares(mw)
		}
		k := &kiqSys{b: b}
		k.t = task.Define(b, taskName, func(_ context.Context, a benchArgs) error {
			k.onRun(a)
			return nil
		})
		return k, nil
	}
}

func (k *kiqSys) send(ctx context.Context, a benchArgs) error {
	_, err := k.t.Kiq(ctx, a)
	return err
}

// sendMany kicks args in one bulk call (task.KiqMany).
func (k *kiqSys) sendMany(ctx context.Context, args []benchArgs) error {
	_, errs := k.t.KiqMany(ctx, args)
	return errors.Join(errs...)
}

func (k *kiqSys) startWorker(concurrency int, onRun func(benchArgs)) error {
	k.onRun = onRun
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel, k.done = cancel, make(chan error, 1)
	w := worker.New(k.b, worker.Options{Concurrency: concurrency, ShutdownTimeout: 5 * time.Second})
	go func() { k.done <- w.Run(ctx) }()
	return nil
}

func (k *kiqSys) stopWorker() {
	if k.cancel == nil {
		return
	}
	k.cancel()
	if err := <-k.done; err != nil {
		warnf("kiq worker: %v", err)
	}
	k.cancel = nil
}

func (k *kiqSys) close() {
	k.stopWorker()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.b.Shutdown(ctx); err != nil {
		warnf("kiq shutdown: %v", err)
	}
}

// ---- asynq ----

type asynqSys struct {
	opt           asynq.RedisConnOpt
	c             *asynq.Client
	unique        bool
	checkInterval time.Duration // Config.TaskCheckInterval; 0 is asynq's default (1 s)
	srv           *asynq.Server
}

// newAsynq returns a maker of an asynq client (enqueueing with
// asynq.Unique(time.Hour) when unique) and server on the default queue.
func newAsynq(unique bool, checkInterval time.Duration) maker {
	return func(url string) (system, error) {
		opt, err := asynq.ParseRedisURI(url)
		if err != nil {
			return nil, err
		}
		return &asynqSys{opt: opt, c: asynq.NewClient(opt), unique: unique, checkInterval: checkInterval}, nil
	}
}

func (s *asynqSys) send(ctx context.Context, a benchArgs) error {
	payload, err := json.Marshal(a)
	if err != nil {
		return err
	}
	var opts []asynq.Option
	if s.unique {
		opts = append(opts, asynq.Unique(time.Hour))
	}
	_, err = s.c.EnqueueContext(ctx, asynq.NewTask(taskName, payload), opts...)
	return err
}

func (s *asynqSys) startWorker(concurrency int, onRun func(benchArgs)) error {
	s.srv = asynq.NewServer(s.opt, asynq.Config{
		Concurrency:       concurrency,
		TaskCheckInterval: s.checkInterval,
		LogLevel:          asynq.WarnLevel,
		ShutdownTimeout:   5 * time.Second,
	})
	mux := asynq.HandlerFunc(func(_ context.Context, t *asynq.Task) error {
		var a benchArgs
		if err := json.Unmarshal(t.Payload(), &a); err != nil {
			return fmt.Errorf("bad payload: %w", err)
		}
		onRun(a)
		return nil
	})
	return s.srv.Start(mux)
}

func (s *asynqSys) stopWorker() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv = nil
}

func (s *asynqSys) close() {
	s.stopWorker()
	if err := s.c.Close(); err != nil && !errors.Is(err, context.Canceled) {
		warnf("asynq client close: %v", err)
	}
}
