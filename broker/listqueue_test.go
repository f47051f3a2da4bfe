package broker_test

import (
	"context"
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/broker/brokertest"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// newListQueue returns a list broker on the shared private Redis, with a key
// prefix of the test's own.
func newListQueue(t *testing.T, opts ...broker.ListQueueOption) *broker.ListQueue {
	t.Helper()
	srv := redistest.Shared(t)
	opts = append([]broker.ListQueueOption{broker.WithKeyPrefix(redistest.Prefix(t))}, opts...)
	b, err := broker.NewListQueue(srv.URL(), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Shutdown(context.Background())) })
	return b
}

// pushRaw stores raw as a message of queue, as Kick would.
func pushRaw(t *testing.T, b broker.Broker, queue string, raw []byte) {
	lq := b.(*broker.ListQueue)
	ctx := context.Background()
	id := broker.NewTaskID()
	prefix := lq.KeyPrefix()
	require.NoError(t, lq.Client().HSet(ctx, prefix+":{"+queue+"}:msg", id, raw).Err())
	require.NoError(t, lq.Client().LPush(ctx, prefix+":{"+queue+"}:pending", id).Err())
}

func TestListQueueConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Harness{
		New:     func(t *testing.T) broker.Broker { return newListQueue(t) },
		PushRaw: pushRaw,
	})
}
