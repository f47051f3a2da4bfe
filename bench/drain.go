package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// Scenario 1: drain n pre-enqueued no-op tasks with concurrency c.

// drain enqueues n tasks (64 callers, not timed), then starts the worker
// and returns the tasks run per second from the worker's start until the
// handler has run n times.
func drain(ctx context.Context, sys system, n, c int) (float64, error) {
	if _, err := sendN(ctx, sys, 64, n); err != nil {
		return 0, fmt.Errorf("enqueue: %w", err)
	}
	var ran atomic.Int64
	done := make(chan struct{})
	start := time.Now()
	err := sys.startWorker(c, func(benchArgs) {
		if ran.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return 0, fmt.Errorf("start worker: %w", err)
	}
	defer sys.stopWorker()
	select {
	case <-done:
	case <-time.After(5*time.Minute + time.Duration(n)*time.Millisecond):
		return 0, fmt.Errorf("drain: timed out after %d of %d tasks", ran.Load(), n)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
