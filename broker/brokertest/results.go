package brokertest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/stretchr/testify/require"
)

// RunResults runs the conformance suite of result backends against the
// backends newBackend makes (each empty, closed when the test ends).
func RunResults(t *testing.T, newBackend func(t *testing.T) broker.ResultBackend) {
	ctx := context.Background()

	t.Run("store then get", func(t *testing.T) {
		t.Parallel()
		rb := newBackend(t)
		_, err := rb.Get(ctx, "nope")
		require.ErrorIs(t, err, broker.ErrNoResult)
		in := &broker.TaskResult{TaskID: "a", TaskName: "t", Value: []byte{0x2a}, Attempt: 2,
			Duration: time.Second, FinishedAt: time.Now().Truncate(time.Millisecond)}
		require.NoError(t, rb.Store(ctx, in, 0))
		out, err := rb.Get(ctx, "a")
		require.NoError(t, err)
		require.Equal(t, in.TaskID, out.TaskID)
		require.Equal(t, []byte(in.Value), []byte(out.Value))
		require.Equal(t, 2, out.Attempt)
		require.Equal(t, time.Second, out.Duration)
		require.True(t, in.FinishedAt.Equal(out.FinishedAt))
	})

	t.Run("results expire", func(t *testing.T) {
		t.Parallel()
		rb := newBackend(t)
		require.NoError(t, rb.Store(ctx, &broker.TaskResult{TaskID: "a"}, 100*time.Millisecond))
		_, err := rb.Get(ctx, "a")
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, err := rb.Get(ctx, "a")
			return errors.Is(err, broker.ErrNoResult)
		}, 2*time.Second, 20*time.Millisecond)
	})

	t.Run("every waiter wakes when the result lands", func(t *testing.T) {
		t.Parallel()
		rb := newBackend(t)
		var wg sync.WaitGroup
		got := make(chan string, 5)
		for range 5 {
			wg.Go(func() {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if res, err := rb.Wait(wctx, "w"); err == nil {
					got <- res.Error
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		require.NoError(t, rb.Store(ctx, &broker.TaskResult{TaskID: "w", Error: "boom", ErrorKind: "error"}, 0))
		wg.Wait()
		require.Less(t, time.Since(start), time.Second, "woken, not found by a slow poll")
		require.Len(t, got, 5)
		require.Equal(t, "boom", <-got)
	})

	t.Run("wait returns a stored result at once", func(t *testing.T) {
		t.Parallel()
		rb := newBackend(t)
		require.NoError(t, rb.Store(ctx, &broker.TaskResult{TaskID: "done"}, 0))
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		res, err := rb.Wait(wctx, "done")
		require.NoError(t, err)
		require.Equal(t, "done", res.TaskID)
	})

	t.Run("wait ends with its context", func(t *testing.T) {
		t.Parallel()
		rb := newBackend(t)
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := rb.Wait(wctx, "never")
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}
