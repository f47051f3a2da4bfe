// Command dedup shows deduplication end to end: the same task kicked twice is
// rejected the second time with a *dedup.DuplicateTaskError, the worker runs
// the first, and once it has run the lock is gone and the task can be kicked
// again.
//
//	go run ./examples/dedup                                   # embedded Redis
//	KIQ_REDIS_URL=redis://localhost:6379 go run ./examples/dedup
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
)

// WelcomeArgs are send_welcome's arguments.
type WelcomeArgs struct {
	// UserID is the user to welcome.
	UserID int `msgpack:"user_id"`
	// Locale is the welcome's language.
	Locale string `msgpack:"locale"`
}

func main() {
	url := os.Getenv("KIQ_REDIS_URL")
	if url == "" {
		mr, err := miniredis.Run()
		if err != nil {
			log.Fatal(err)
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
	}
	if err := run(context.Background(), url, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url string, out io.Writer) error {
	quiet := slog.New(slog.DiscardHandler)
	b, err := broker.NewListQueue(url, broker.WithKeyPrefix("example-dedup"), broker.WithLogger(quiet))
	if err != nil {
		return err
	}
	defer b.Shutdown(ctx)
	mw, err := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix("example:dedup"), dedup.WithLogger(quiet))
	if err != nil {
		return err
	}
	b.WithMiddlewares(mw)

	ran := make(chan WelcomeArgs, 1)
	sendWelcome := task.Define(b, "send_welcome", func(ctx context.Context, a WelcomeArgs) error {
		ran <- a
		return nil
	})

	first, err := sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "kicked send_welcome(user_id=42)")

	_, err = sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
	var dup *dedup.DuplicateTaskError
	if !errors.As(err, &dup) {
		return fmt.Errorf("expected a duplicate, got %v", err)
	}
	fmt.Fprintf(out, "duplicate rejected: task=%s key=%s holder is the first task: %t\n",
		dup.TaskName, dup.Key, dup.HolderTaskID == first.TaskID())

	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.New(b, worker.Options{Concurrency: 4, Logger: quiet}).Run(wctx) }()
	a := <-ran
	fmt.Fprintf(out, "worker ran send_welcome(user_id=%d)\n", a.UserID)

	// The lock is released right after the task; kick again until it is.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err = sendWelcome.Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
		if !errors.Is(err, dedup.ErrDuplicateTask) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		stop()
		<-done
		return err
	}
	fmt.Fprintln(out, "lock released: kicked send_welcome(user_id=42) again")
	<-ran
	stop()
	return <-done
}
