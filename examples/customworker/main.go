// Command customworker is a worker binary of your own: your tasks, and the
// same command line as taskworker (flags, graceful shutdown, operator
// commands), with one call from main.
//
//	go run ./examples/customworker                      # embedded Redis, with a demo producer
//	go run ./examples/customworker --redis-url redis://localhost:6379 --concurrency 32
//	go run ./examples/customworker locks list --redis-url redis://localhost:6379
package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker/cli"
)

// ShoutArgs are the arguments of shout.
type ShoutArgs struct {
	// Text is what to shout.
	Text string `msgpack:"text"`
}

func main() { cli.Main(app()) }

// shout is the program's task, defined by Setup.
var shout *task.Task[ShoutArgs]

func app() cli.App {
	return cli.App{
		Name: "customworker",
		Setup: func(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
			mw, err := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix(s.DedupPrefix))
			if err != nil {
				return err
			}
			b.WithMiddlewares(mw)
			shout = task.Define(b, "shout", func(ctx context.Context, a ShoutArgs) error {
				slog.Info(strings.ToUpper(a.Text) + "!")
				return nil
			})
			return nil
		},
		Demo: func(ctx context.Context, b *broker.ListQueue) error {
			for i := range 3 {
				if _, err := shout.Kiq(ctx, ShoutArgs{Text: fmt.Sprint("hello ", i)}); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
