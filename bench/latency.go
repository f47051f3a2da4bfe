package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Scenario 4: enqueue-to-start latency at low load.

// latency starts an idle worker, kicks n tasks one every interval from a
// single caller, and returns the p50 and p99, in ms, of the time from just
// before the send to the start of the task's handler.
func latency(ctx context.Context, sys system, n int, interval time.Duration) (p50, p99 float64, err error) {
	var mu sync.Mutex
	lats := make([]float64, 0, n)
	done := make(chan struct{})
	err = sys.startWorker(64, func(a benchArgs) {
		d := time.Since(time.Unix(0, a.SentAt))
		mu.Lock()
		defer mu.Unlock()
		lats = append(lats, float64(d)/float64(time.Millisecond))
		if len(lats) == n {
			close(done)
		}
	})
	if err != nil {
		return 0, 0, fmt.Errorf("start worker: %w", err)
	}
	defer sys.stopWorker()
	time.Sleep(500 * time.Millisecond) // let the worker connect and go idle

	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range n {
		if err := sys.send(ctx, benchArgs{N: int64(i + 1), SentAt: time.Now().UnixNano()}); err != nil {
			return 0, 0, fmt.Errorf("send: %w", err)
		}
		<-tick.C
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		return 0, 0, fmt.Errorf("latency: only %d of %d tasks ran", len(lats), n)
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	mu.Lock()
	defer mu.Unlock()
	return percentile(lats, 50), percentile(lats, 99), nil
}
