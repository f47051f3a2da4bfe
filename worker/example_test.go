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

// Define a task, kick it, and run a worker until the task ran.
func Example() {
	b := broker.NewInMemory()
	ctx, stop := context.WithCancel(context.Background())
	greet := task.Define(b, "greet", func(ctx context.Context, a GreetArgs) error {
		fmt.Println("hello,", a.Name)
		stop() // the worker drains and returns
		return nil
	})

	if _, err := greet.Kiq(ctx, GreetArgs{Name: "Kiq"}); err != nil {
		panic(err)
	}
	if err := worker.New(b, worker.Options{Concurrency: 4}).Run(ctx); err != nil {
		panic(err)
	}
	// Output: hello, Kiq
}
