package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/broker/brokertest"
	"github.com/stretchr/testify/require"
)

func TestInMemoryConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Harness{
		New: func(t *testing.T) broker.Broker { return broker.NewInMemory() },
	})
}

// A task id exists, as on ListQueue, from its kick while the task is
// scheduled, in flight, handed back or awaiting a retry, and is free again
// once the task is dead-lettered; ids are per queue.
func TestInMemoryTaskIDExistsUntilDeadLettered(t *testing.T) {
	ctx := context.Background()
	b := broker.NewInMemory()
	id := broker.NewTaskID()
	kick := func(name string, labels broker.Labels) error {
		return b.Kick(ctx, &broker.Message{TaskID: id, TaskName: name, Labels: labels, Args: []byte{0x80}})
	}
	fetch := func(c broker.Consumer) *broker.Delivery {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ds, err := c.Fetch(fctx, 10)
		require.NoError(t, err)
		require.Len(t, ds, 1)
		return ds[0]
	}

	require.NoError(t, kick("t", broker.Labels{broker.LabelDelay: 0.1}))
	require.ErrorIs(t, kick("dup", nil), broker.ErrTaskExists, "scheduled")
	require.NoError(t, kick("t", broker.Labels{broker.LabelQueue: "other"}), "another queue's id")

	c1, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	d := fetch(c1)
	require.ErrorIs(t, kick("dup", nil), broker.ErrTaskExists, "in flight")
	require.NoError(t, c1.HandBack(ctx, d))
	require.ErrorIs(t, kick("dup", nil), broker.ErrTaskExists, "handed back")
	fetch(c1)
	require.NoError(t, c1.Close(ctx))
	require.ErrorIs(t, kick("dup", nil), broker.ErrTaskExists, "handed back by Close")

	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(ctx) })
	d = fetch(c)
	next := *d.Message
	next.Attempt++
	require.NoError(t, c.Retry(ctx, d, &next, 100*time.Millisecond))
	require.ErrorIs(t, kick("dup", nil), broker.ErrTaskExists, "awaiting a retry")
	d = fetch(c)
	require.Equal(t, 1, d.Message.Attempt)
	require.ErrorIs(t, kick("dup", nil), broker.ErrTaskExists, "retried, in flight")
	require.NoError(t, c.DeadLetter(ctx, d, "failed"))

	require.NoError(t, kick("again", nil), "dead-lettered: the id is free")
	d = fetch(c)
	require.Equal(t, id, d.ID)
	require.Equal(t, "again", d.Message.TaskName)
	require.NoError(t, c.Ack(ctx, d))

	// A message that does not decode is known by the id it was kicked with.
	require.NoError(t, kick("", nil))
	require.ErrorIs(t, kick("", nil), broker.ErrTaskExists)
	d = fetch(c)
	require.Nil(t, d.Message)
	require.NoError(t, c.DeadLetter(ctx, d, "malformed"))
	require.NoError(t, kick("t", nil), "dead-lettered: the id is free")
}
