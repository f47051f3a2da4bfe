package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/stretchr/testify/require"
)

func TestInspection(t *testing.T) {
	b := newListQueue(t)
	b.WithResultBackend(broker.NewRedisResults(b.Client(), b.KeyPrefix(), 0))
	ctx := context.Background()
	mk := func(name string, labels broker.Labels) *broker.Message {
		m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: name, Labels: labels, Args: []byte{0x80}}
		require.NoError(t, b.Kick(ctx, m))
		return m
	}
	running := mk("running", nil)
	pending := mk("pending", nil)
	scheduled := mk("scheduled", broker.Labels{broker.LabelDelay: 60})
	mk("mail", broker.Labels{broker.LabelQueue: "emails"})

	queues, err := b.Queues(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"emails", "taskiq"}, queues)

	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, running.TaskID, ds[0].ID)

	for m, state := range map[*broker.Message]string{running: "in_flight", pending: "pending", scheduled: "scheduled"} {
		info, err := b.Task(ctx, broker.DefaultQueue, m.TaskID)
		require.NoError(t, err)
		require.Equal(t, state, info.State, m.TaskName)
		require.Equal(t, m.TaskName, info.Message.TaskName)
	}
	_, err = b.Task(ctx, broker.DefaultQueue, "nope")
	require.ErrorIs(t, err, broker.ErrNotFound)

	// Dead-letter the running task after two attempts, then look at it.
	ds[0].Message.Attempt = 2
	require.NoError(t, c.DeadLetter(ctx, ds[0], "it broke"))
	info, err := b.Task(ctx, broker.DefaultQueue, running.TaskID)
	require.NoError(t, err)
	require.Equal(t, "dead", info.State)
	require.Equal(t, "it broke", info.Reason)
	dl, err := b.DeadLetter(ctx, broker.DefaultQueue, running.TaskID)
	require.NoError(t, err)
	require.Equal(t, "running", dl.TaskName)

	// Requeue it: back on the queue, attempts reset.
	n, err := b.RequeueDead(ctx, broker.DefaultQueue, running.TaskID)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = b.RequeueDead(ctx, broker.DefaultQueue, running.TaskID)
	require.ErrorIs(t, err, broker.ErrNotFound)
	got, err := c.Fetch(ctx, 5)
	require.NoError(t, err)
	var requeued *broker.Delivery
	for _, d := range got {
		if d.ID == running.TaskID {
			requeued = d
		}
	}
	require.NotNil(t, requeued)
	require.Equal(t, 0, requeued.Message.Attempt)

	// Done tasks are found through their results.
	require.NoError(t, c.Ack(ctx, got...))
	require.NoError(t, b.ResultBackend().Store(ctx, &broker.TaskResult{TaskID: pending.TaskID, TaskName: "pending"}, time.Minute))
	info, err = b.Task(ctx, broker.DefaultQueue, pending.TaskID)
	require.NoError(t, err)
	require.Equal(t, "done", info.State)

	// Purge.
	m := mk("doomed", nil)
	ds, err = c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, m.TaskID, ds[0].ID)
	require.NoError(t, c.DeadLetter(ctx, ds[0], "x"))
	purged, err := b.PurgeDead(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(1), purged)
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, stats.Dead)
}

// A dead letter whose task id a live task took meanwhile is kept by a
// requeue, which says why instead of "not found"; the others are requeued.
func TestRequeueKeepsADeadLetterWhoseIDIsTaken(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	taken, free := broker.NewTaskID(), broker.NewTaskID()
	for _, id := range []string{taken, free} {
		require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: id, TaskName: "t", Args: []byte{0x80}}))
	}
	for _, d := range fetchAll(t, c, 2) {
		require.NoError(t, c.DeadLetter(ctx, d, "it broke"))
	}
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: taken, TaskName: "t", Args: []byte{0x80}}), "a new task under the old id")

	_, err = b.RequeueDead(ctx, broker.DefaultQueue, taken)
	require.ErrorIs(t, err, broker.ErrTaskExists)
	require.NotErrorIs(t, err, broker.ErrNotFound)
	_, err = b.DeadLetter(ctx, broker.DefaultQueue, taken)
	require.NoError(t, err, "kept")

	n, err := b.RequeueDead(ctx, broker.DefaultQueue, "")
	require.ErrorIs(t, err, broker.ErrTaskExists, "all: one kept")
	require.Equal(t, 1, n, "the free one requeued")
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(2), stats.Pending, "the new task and the requeued one")
}
