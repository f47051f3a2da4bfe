package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/stretchr/testify/require"
)

type SumArgs struct {
	A int `msgpack:"a"`
	B int `msgpack:"b"`
}

type Sum struct {
	Total int    `msgpack:"total"`
	Note  string `msgpack:"note"`
}

func TestResultsOnRedis(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix))
	require.NoError(t, err)
	b.WithResultBackend(broker.NewRedisResults(b.Client(), prefix, 0))
	defer b.Shutdown(context.Background())
	release := make(chan struct{})
	sum := task.DefineResult(b, "sum", func(ctx context.Context, a SumArgs) (Sum, error) {
		<-release
		switch {
		case a.A < 0:
			return Sum{}, errors.New("negative")
		case a.A == 13:
			panic("unlucky")
		}
		return Sum{Total: a.A + a.B, Note: "ok"}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start(t, newQuietWorker(b))

	h, err := sum.Kiq(ctx, SumArgs{A: 2, B: 3})
	require.NoError(t, err)
	_, err = h.Result(ctx)
	require.ErrorIs(t, err, broker.ErrNoResult, "not finished yet")
	close(release)
	got, err := h.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, Sum{Total: 5, Note: "ok"}, got)

	h, err = sum.Kiq(ctx, SumArgs{A: -1})
	require.NoError(t, err)
	_, err = h.Wait(ctx)
	var te *task.TaskError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "error", te.Kind)
	require.Contains(t, te.Message, "negative")

	h, err = sum.Kiq(ctx, SumArgs{A: 13})
	require.NoError(t, err)
	_, err = sum.Handle(h.TaskID()).Wait(ctx) // a handle rebuilt from the id
	require.ErrorAs(t, err, &te)
	require.Equal(t, "panic", te.Kind)

	ttl := srv.Client(t).PTTL(ctx, prefix+":result:"+h.TaskID()).Val()
	require.InDelta(t, time.Hour, ttl, float64(time.Minute), "results expire after the default hour")
	kicked, err := sum.Kicker().WithLabels(task.Labels{"result_ttl": 5}).Kiq(ctx, SumArgs{A: 1, B: 1})
	require.NoError(t, err)
	h = sum.Handle(kicked.TaskID())
	_, err = h.Wait(ctx)
	require.NoError(t, err)
	require.InDelta(t, 5*time.Second, srv.Client(t).PTTL(ctx, prefix+":result:"+h.TaskID()).Val(), float64(time.Second))
}

func TestADuplicateWaitsForTheHoldersResult(t *testing.T) {
	b := broker.NewInMemory().WithResultBackend(broker.NewMemoryResults(0))
	mw, err := dedup.New("", dedup.WithClient(redistest.Shared(t).Client(t)), dedup.WithKeyPrefix(redistest.Prefix(t)), dedup.WithLogger(quiet))
	require.NoError(t, err)
	b.WithMiddlewares(mw)
	defer b.Shutdown(context.Background()) // stops the middleware's heartbeat
	release := make(chan struct{})
	report := task.DefineResult(b, "report", func(ctx context.Context, a SumArgs) (int, error) {
		<-release
		return a.A * 10, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := report.Kiq(ctx, SumArgs{A: 4})
	require.NoError(t, err)
	_, err = report.Kiq(ctx, SumArgs{A: 4})
	var dup *dedup.DuplicateTaskError
	require.ErrorAs(t, err, &dup)
	require.Equal(t, first.TaskID(), dup.HolderTaskID)

	start(t, newQuietWorker(b))
	close(release)
	v, err := report.Handle(dup.HolderTaskID).Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, 40, v, "the rejected caller gets the holder's result")
}

func TestWaitWithoutABackend(t *testing.T) {
	b := broker.NewInMemory()
	rt := task.DefineResult(b, "r", func(ctx context.Context, a SumArgs) (int, error) { return 0, nil })
	_, err := rt.Handle("x").Wait(context.Background())
	require.ErrorIs(t, err, task.ErrNoResultBackend)
}

// Tasks dead-lettered before the middleware chain runs (a message that does
// not decode but whose id is known, one over the size limit, an unknown
// task name) store a failed result, so that Wait returns their error at
// once instead of blocking until its context ends.
func TestWaitEndsForTasksDeadLetteredBeforeRunning(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := redistest.Prefix(t)
	b, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(prefix), broker.WithMaxMessageSize(1<<10),
		broker.WithLogger(quiet))
	require.NoError(t, err)
	b.WithResultBackend(broker.NewRedisResults(b.Client(), prefix, 0))
	defer b.Shutdown(context.Background())
	sum := task.DefineResult(b, "sum", func(ctx context.Context, a SumArgs) (Sum, error) { return Sum{}, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	unknown, err := sum.Kicker().Message(SumArgs{})
	require.NoError(t, err)
	unknown.TaskName = "nobody"
	require.NoError(t, b.Kick(ctx, unknown))
	pending, msgs := prefix+":{taskiq}:pending", prefix+":{taskiq}:msg"
	for id, raw := range map[string][]byte{"garbage": {0xc1, 0xff}, "huge": make([]byte, 2<<10)} {
		require.NoError(t, b.Client().HSet(ctx, msgs, id, raw).Err())
		require.NoError(t, b.Client().LPush(ctx, pending, id).Err())
	}
	start(t, newQuietWorker(b))

	for id, kind := range map[string]string{unknown.TaskID: "unknown_task", "garbage": "malformed", "huge": "malformed"} {
		began := time.Now()
		_, err := sum.Handle(id).Wait(ctx)
		var te *task.TaskError
		require.ErrorAs(t, err, &te, id)
		require.Equal(t, kind, te.Kind, id)
		require.Equal(t, id, te.TaskID)
		require.Less(t, time.Since(began), 5*time.Second, "%s: Wait returned promptly", id)
	}
	// The result is stored before the delivery is settled (as for a task
	// that ran), so the last dead letter may land just after its Wait.
	require.Eventually(t, func() bool {
		dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, 10)
		require.NoError(t, err)
		return len(dls) == 3
	}, 5*time.Second, 5*time.Millisecond, "all three are dead-lettered too")
}
