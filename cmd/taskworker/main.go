// Command taskworker runs a Kiq worker.
//
// With no flags it starts on an embedded, in-process Redis with the demo
// tasks below and a producer kicking them, so a first run shows tasks kicked,
// deduplicated, run and acknowledged within seconds:
//
//	go run ./cmd/taskworker
//
// With --redis-url it consumes a real Redis (the demo producer stays off):
//
//	go run ./cmd/taskworker --redis-url redis://localhost:6379 --concurrency 64
//
// Run it with -h for every flag, and see package worker/cli to give a
// program of your own the same command line.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker/cli"
)

func main() {
	cli.Main(cli.App{Name: "taskworker", Setup: setup, Demo: demo})
}

// WelcomeArgs are the arguments of send_welcome: one welcome per user at a
// time, whatever the locale.
type WelcomeArgs struct {
	task.Meta `deduplication_key_fields:"user_id" deduplication_ttl:"60"`
	// UserID is the user to welcome.
	UserID int `msgpack:"user_id"`
	// Locale is the welcome's language.
	Locale string `msgpack:"locale"`
}

// ResizeArgs are the arguments of resize_image.
type ResizeArgs struct {
	// ImageID is the image to resize.
	ImageID int `msgpack:"image_id"`
	// Width is the width to resize it to; not positive fails the task.
	Width int `msgpack:"width"`
}

var (
	sendWelcome *task.Task[WelcomeArgs]
	resizeImage *task.Task[ResizeArgs]
)

// setup registers the deduplication middleware, its locks under
// --dedup-prefix, and the demo tasks.
func setup(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
	mw, err := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix(s.DedupPrefix))
	if err != nil {
		return err
	}
	b.WithMiddlewares(mw)
	sendWelcome = task.Define(b, "send_welcome", func(ctx context.Context, a WelcomeArgs) error {
		return pause(ctx, time.Duration(5+rand.IntN(20))*time.Millisecond)
	})
	resizeImage = task.Define(b, "resize_image", func(ctx context.Context, a ResizeArgs) error {
		if a.Width <= 0 {
			return fmt.Errorf("image %d: width %d is not positive", a.ImageID, a.Width)
		}
		return pause(ctx, time.Duration(1+rand.IntN(10))*time.Millisecond)
	}, task.WithLabels(task.Labels{"deduplication": false}))
	return nil
}

func pause(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// demo kicks a steady stream of tasks: welcomes for 1000 users (so some are
// duplicates of welcomes still queued or running), and image resizes of which
// one in fifty has a bad width and fails.
func demo(ctx context.Context, b *broker.ListQueue) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	dups := 0
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, err := sendWelcome.Kiq(ctx, WelcomeArgs{UserID: rand.IntN(1000), Locale: "en"})
		var dup *dedup.DuplicateTaskError
		switch {
		case errors.As(err, &dup):
			dups++
			if dups%20 == 1 {
				slog.Info("demo: duplicate rejected", slog.String("key", dup.Key), slog.String("holder", dup.HolderTaskID), slog.Int("so_far", dups))
			}
		case err != nil && ctx.Err() == nil:
			return err
		}
		width := 640
		if i%50 == 0 {
			width = 0
		}
		if _, err := resizeImage.Kiq(ctx, ResizeArgs{ImageID: i, Width: width}); err != nil && ctx.Err() == nil {
			return err
		}
	}
}
