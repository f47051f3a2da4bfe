package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/broker/brokertest"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/redis/go-redis/v9"
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

func kick(t *testing.T, b broker.Broker, name string) *broker.Message {
	t.Helper()
	m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: name, Args: []byte{0x80}}
	require.NoError(t, b.Kick(context.Background(), m))
	return m
}

func fetchAll(t *testing.T, c broker.Consumer, n int) []*broker.Delivery {
	t.Helper()
	var out []*broker.Delivery
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(out) < n {
		ds, err := c.Fetch(ctx, n-len(out))
		require.NoError(t, err)
		out = append(out, ds...)
	}
	return out
}

func TestDeadConsumersTasksAreDeliveredAgain(t *testing.T) {
	b := newListQueue(t, broker.WithHeartbeat(50*time.Millisecond, 300*time.Millisecond))
	m1, m2 := kick(t, b, "a"), kick(t, b, "b")
	// A consumer takes both tasks and dies: its context ends without Close,
	// so it stops heartbeating and hands nothing back.
	dyingCtx, die := context.WithCancel(context.Background())
	dying, err := b.Consume(dyingCtx, broker.ConsumeOptions{})
	require.NoError(t, err)
	require.Len(t, fetchAll(t, dying, 2), 2)
	die()

	c, err := b.Consume(context.Background(), broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(context.Background())
	start := time.Now()
	ds := fetchAll(t, c, 2)
	require.Equal(t, []string{m1.TaskID, m2.TaskID}, []string{ds[0].ID, ds[1].ID}, "redelivered in their order, at the head")
	require.Less(t, time.Since(start), 3*time.Second)
	require.GreaterOrEqual(t, b.RedeliveryTimeout(), 300*time.Millisecond)
}

func TestRedisOutage(t *testing.T) {
	srv := redistest.Start(t)
	b, err := broker.NewListQueue(srv.URL(), broker.WithHeartbeat(50*time.Millisecond, 500*time.Millisecond),
		broker.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	kick(t, b, "before")
	require.Len(t, fetchAll(t, c, 1), 1)

	srv.Kill(t)
	m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "during", Args: []byte{0x80}}
	require.Error(t, b.Kick(ctx, m))
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = c.Fetch(fctx, 1)
	cancel()
	require.Error(t, err)

	srv.Revive(t)
	require.Eventually(t, func() bool { return b.Kick(ctx, m) == nil }, 5*time.Second, 20*time.Millisecond)
	ds := fetchAll(t, c, 1)
	require.Equal(t, m.TaskID, ds[0].ID, "the same broker and consumer work again")
	require.NoError(t, c.Ack(ctx, ds...))
}

func TestBadURLs(t *testing.T) {
	for _, u := range []string{"http://localhost", "redis://:s3cret@localhost:6379/notadb", "redis://user:s3cret@[::1", ""} {
		_, err := broker.NewListQueue(u)
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), "s3cret", u)
	}
	_, err := broker.NewListQueue("redis://localhost", broker.WithHeartbeat(time.Second, time.Second))
	require.Error(t, err, "a heartbeat TTL must exceed its interval")
}

func TestEveryKeySharesTheQueueHashTag(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	for i := range 4 {
		labels := broker.Labels{}
		if i%2 == 1 {
			labels[broker.LabelQueue] = "other"
		}
		if i == 2 {
			labels[broker.LabelDelay] = 60
		}
		require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Labels: labels, Args: []byte{0x80}}))
	}
	c, err := b.Consume(ctx, broker.ConsumeOptions{Queues: []string{broker.DefaultQueue, "other"}})
	require.NoError(t, err)
	ds := fetchAll(t, c, 2)
	require.NoError(t, c.DeadLetter(ctx, ds[0], "x"))
	keys, err := b.Client().Keys(ctx, b.KeyPrefix()+":*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		require.Regexp(t, `^`+regexp.QuoteMeta(b.KeyPrefix())+`:\{(taskiq|other)\}:`, k)
	}
	require.NoError(t, c.Close(ctx))
}

// roundTrips counts the calls a client sends: a command or a pipeline each.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { r.n.Add(1); return next(ctx, cmd) }
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { r.n.Add(1); return next(ctx, cmds) }
}

func TestBatchesCostOneRoundTrip(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	for range 101 {
		kick(t, b, "t")
	}
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	require.NoError(t, c.Ack(ctx, fetchAll(t, c, 1)...)) // loads the scripts
	rt := &roundTrips{}
	client.AddHook(rt)
	ds, err := c.Fetch(ctx, 100)
	require.NoError(t, err)
	require.Len(t, ds, 100)
	require.Equal(t, int64(1), rt.n.Load(), "taking 100 tasks is one round trip")
	require.NoError(t, c.Ack(ctx, ds...))
	require.Equal(t, int64(2), rt.n.Load(), "acking 100 tasks is one round trip")
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Consumers: 1}, stats)
}

func TestLockTakenInTheKickScript(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	other := srv.Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	require.True(t, b.LocksAtomically(client))
	require.True(t, b.LocksAtomically(other), "another client of the same server and database")
	require.False(t, b.LocksAtomically(redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: 3})))
	require.False(t, b.LocksAtomically(redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}})))

	ctx := context.Background()
	key := b.KeyPrefix() + ":lock"
	held := func(holder string) error { return fmt.Errorf("held by %s", holder) }
	first := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
		Lock: &broker.Lock{Client: other, Key: key, TTL: time.Minute, Held: held}}
	require.NoError(t, b.Kick(ctx, first))
	require.Equal(t, first.TaskID, client.Get(ctx, key).Val())
	require.InDelta(t, time.Minute, client.PTTL(ctx, key).Val(), float64(time.Second))

	second := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
		Lock: &broker.Lock{Client: other, Key: key, TTL: time.Minute, Held: held}}
	require.EqualError(t, b.Kick(ctx, second), "held by "+first.TaskID)
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(1), stats.Pending, "the duplicate was not queued")

	require.ErrorIs(t, b.Kick(ctx, &broker.Message{TaskID: first.TaskID, TaskName: "t"}), broker.ErrTaskExists)
	exists, err := b.TaskExists(ctx, broker.DefaultQueue, first.TaskID)
	require.NoError(t, err)
	require.True(t, exists)
}

func BenchmarkKick(b *testing.B) {
	srv := redistest.Shared(b)
	q, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(redistest.Prefix(b)))
	require.NoError(b, err)
	defer q.Shutdown(context.Background())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := q.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFetchAck(b *testing.B) {
	srv := redistest.Shared(b)
	q, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(redistest.Prefix(b)))
	require.NoError(b, err)
	defer q.Shutdown(context.Background())
	ctx := context.Background()
	c, err := q.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(b, err)
	defer c.Close(ctx)
	const batch = 64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for range batch {
			_ = q.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}})
		}
		b.StartTimer()
		ds, err := c.Fetch(ctx, batch)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Ack(ctx, ds...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(batch), "tasks/op")
}

func TestScheduledTaskWakesABlockedConsumerOnTime(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	got := make(chan time.Time, 1)
	go func() {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if ds, err := c.Fetch(fctx, 1); err == nil && len(ds) == 1 {
			got <- time.Now()
		}
	}()
	time.Sleep(100 * time.Millisecond) // the consumer is blocked, for up to a second
	kicked := time.Now()
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
		Labels: broker.Labels{broker.LabelDelay: 0.2}}))
	at := <-got
	late := at.Sub(kicked) - 200*time.Millisecond
	require.GreaterOrEqual(t, late, -5*time.Millisecond, "not early")
	require.Less(t, late, 100*time.Millisecond, "not a blocked second late")
}
