package worker_test

import (
	"context"
	"fmt"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
)

type GreetArgs struct {
	Name string `msgpack:"name"`
}

// Define a task, kick it, and run a worker until the task has run. With
// Redis, only the broker changes: broker.NewListQueue("redis://...").
func Example() {
	b := broker.NewInMemory()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	greet := task.Define(b, "greet", func(ctx context.Context, a GreetArgs) error {
		fmt.Println("hello,", a.Name)
		stop() // the worker stops taking, drains and returns
		return nil
	})

	if _, err := greet.Kiq(ctx, GreetArgs{Name: "Kiq"}); err != nil {
		panic(err)
	}
	w := worker.New(b, worker.Options{Concurrency: 4})
	if err := w.Run(ctx); err != nil { // blocks until ctx ends, then drains
		panic(err)
	}
	fmt.Println("done:", w.Stats().Done)
	// Output:
	// hello, Kiq
	// done: 1
}
