package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Scenarios 2, 3 and 5: enqueue rates.

// sendFor has callers goroutines send tasks back to back for d and returns
// the tasks sent per second. Every task gets a distinct N.
func sendFor(ctx context.Context, sys system, callers int, d time.Duration) (float64, error) {
	var next, sent atomic.Int64
	var firstErr error
	var once sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err := sys.send(ctx, benchArgs{N: next.Add(1)}); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, fmt.Errorf("send: %w", firstErr)
	}
	return float64(sent.Load()) / elapsed.Seconds(), nil
}

// bulkSender is a system with a bulk kick.
type bulkSender interface {
	sendMany(ctx context.Context, args []benchArgs) error
}

// bulkN kicks n tasks in one bulk call from one caller where the system
// has a bulk kick, else with 64 concurrent callers; tasks/s.
func bulkN(ctx context.Context, sys system, n int) (float64, error) {
	bs, ok := sys.(bulkSender)
	if !ok {
		return sendN(ctx, sys, 64, n)
	}
	start := time.Now()
	args := make([]benchArgs, n)
	for i := range args {
		args[i] = benchArgs{N: int64(i + 1)}
	}
	if err := bs.sendMany(ctx, args); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// sendN has callers goroutines send n tasks in all, as fast as they can, and
// returns the tasks sent per second.
func sendN(ctx context.Context, sys system, callers, n int) (float64, error) {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if err := sys.send(ctx, benchArgs{N: i}); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return 0, fmt.Errorf("send: %w", firstErr)
	}
	return float64(n) / elapsed.Seconds(), nil
}
