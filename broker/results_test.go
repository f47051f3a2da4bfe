package broker_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/broker/brokertest"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestMemoryResultsConformance(t *testing.T) {
	brokertest.RunResults(t, func(t *testing.T) broker.ResultBackend { return broker.NewMemoryResults(0) })
}

func TestRedisResultsConformance(t *testing.T) {
	brokertest.RunResults(t, func(t *testing.T) broker.ResultBackend {
		rb := broker.NewRedisResults(redistest.Shared(t).Client(t), redistest.Prefix(t), 0)
		t.Cleanup(func() { require.NoError(t, rb.Close()) })
		return rb
	})
}

// readCounter counts GET commands.
type readCounter struct{ n atomic.Int64 }

func (r *readCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *readCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (r *readCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.EqualFold(cmd.Name(), "get") {
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func TestRedisWaitDoesNotPoll(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	reads := &readCounter{}
	client.AddHook(reads)
	rb := broker.NewRedisResults(client, redistest.Prefix(t), time.Minute)
	defer rb.Close()
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		_, err := rb.Wait(ctx, "slow")
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond)
	require.LessOrEqual(t, reads.n.Load(), int64(1), "one read before the result, none while waiting")
	require.NoError(t, rb.Store(ctx, &broker.TaskResult{TaskID: "slow"}, 0))
	require.NoError(t, <-done)
	require.Equal(t, int64(2), reads.n.Load(), "one read after the notification")
}

// A TTL under a millisecond is stored as one millisecond: Redis refuses
// PX 0.
func TestRedisResultTTLUnderAMillisecond(t *testing.T) {
	rb := broker.NewRedisResults(redistest.Shared(t).Client(t), redistest.Prefix(t), 0)
	defer rb.Close()
	require.NoError(t, rb.Store(context.Background(), &broker.TaskResult{TaskID: "brief"}, 500*time.Microsecond))
}

// gatedDialer holds every new connection's dial while its gate is closed.
type gatedDialer struct {
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

func (g *gatedDialer) close() { g.mu.Lock(); g.gate = make(chan struct{}); g.mu.Unlock() }
func (g *gatedDialer) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

func (g *gatedDialer) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		g.mu.Lock()
		gate := g.gate
		g.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return next(ctx, network, addr)
	}
}

func (g *gatedDialer) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (g *gatedDialer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// While one Wait opens the backend's subscription (its connection slow to
// dial), another Wait still ends with its context, and a result stored
// meanwhile is not lost to the first.
func TestRedisWaitIsNotStalledByASubscriptionBeingOpened(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	gate := &gatedDialer{}
	client.AddHook(gate)
	ctx := context.Background()
	require.NoError(t, client.Ping(ctx).Err()) // a pooled connection for Get
	prefix := redistest.Prefix(t)
	rb := broker.NewRedisResults(client, prefix, time.Minute)
	defer rb.Close()

	gate.close()
	defer gate.open() // whatever happens, nothing stays stuck
	first := make(chan error, 1)
	go func() {
		res, err := rb.Wait(ctx, "slow")
		if err == nil && res.TaskID != "slow" {
			err = fmt.Errorf("got the result of %q", res.TaskID)
		}
		first <- err
	}()
	time.Sleep(50 * time.Millisecond) // the first Wait is dialling its subscription

	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	second := make(chan error, 1)
	go func() {
		_, err := rb.Wait(wctx, "other")
		second <- err
	}()
	select {
	case err := <-second:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(2 * time.Second):
		gate.open()
		t.Fatal("the second Wait was stalled by the first's dial, past its own context")
	}

	// The result lands before the first Wait's subscription is open.
	store := broker.NewRedisResults(srv.Client(t), prefix, time.Minute)
	defer store.Close()
	require.NoError(t, store.Store(ctx, &broker.TaskResult{TaskID: "slow"}, 0))
	gate.open()
	select {
	case err := <-first:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the first Wait missed the result stored while it subscribed")
	}
}
