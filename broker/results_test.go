package broker_test

import (
	"context"
	"strings"
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
