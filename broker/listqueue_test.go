package broker_test

import (
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/broker/brokertest"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/internal/testlog"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// newListQueue returns a list broker on the shared private Redis, with a key
// prefix of the test's own.
func newListQueue(t testing.TB, opts ...broker.ListQueueOption) *broker.ListQueue {
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
	err = b.Kick(ctx, m)
	require.ErrorContains(t, err, "kiq: ")
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = c.Fetch(fctx, 1)
	cancel()
	require.ErrorContains(t, err, "kiq: ")
	require.ErrorContains(t, b.Startup(ctx), "kiq: ")
	_, err = b.Stats(ctx, broker.DefaultQueue)
	require.ErrorContains(t, err, "kiq: ")
	time.Sleep(150 * time.Millisecond) // a few failed heartbeats

	srv.Revive(t)
	require.Eventually(t, func() bool { return b.Kick(ctx, m) == nil }, 5*time.Second, 20*time.Millisecond)
	ds := fetchAll(t, c, 1)
	require.Equal(t, m.TaskID, ds[0].ID, "the same broker and consumer work again")
	require.NoError(t, c.Ack(ctx, ds...))
	require.Eventually(t, func() bool {
		s, err := b.Stats(ctx, broker.DefaultQueue)
		return err == nil && s.Consumers == 1
	}, 2*time.Second, 20*time.Millisecond, "the heartbeat registers the consumer again on the empty server")
	require.NoError(t, c.Close(ctx))
}

// A kick honours its caller's deadline while Redis does not answer: its
// batch is sent under that deadline (the latest of its callers'), not the
// client's read timeout and retries.
func TestKickHonoursItsDeadlineWhileRedisIsPaused(t *testing.T) {
	proxy := redistest.NewProxy(t, redistest.Shared(t).Addr())
	b, err := broker.NewListQueue("redis://"+proxy.Addr(), broker.WithKeyPrefix(redistest.Prefix(t)),
		broker.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	kick(t, b, "loads the script")
	proxy.Pause()
	defer proxy.Resume()

	var wg sync.WaitGroup
	for range 8 { // one batch in flight, the others queued behind it
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err := b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "paused", Args: []byte{0x80}})
			require.ErrorIs(t, err, context.DeadlineExceeded, "not held until the pause ends")
		})
	}
	wg.Wait()
}

func TestBadURLs(t *testing.T) {
	for _, u := range []string{
		"http://localhost",
		"redis://:s3cret@localhost:6379/notadb",
		"redis://user:s3cret@[::1",
		"redis://user:s3cret@local host:6379",
		"redis://user:s3cret@localhost:port",
		"redis://us\"er:s3\"cret@[::1",           // quoted by url.Parse's message
		"redis://user:s3%63ret@localhost:6379/x", // escaped
		"redis://user:s3cret@localhost:6379/0?dial_timeout=x",
		"unix://user:s3cret@",
		"",
		"   ",
	} {
		_, err := broker.NewListQueue(u)
		require.Error(t, err, u)
		require.Contains(t, err.Error(), "kiq: ", u)
		require.NotContains(t, err.Error(), "s3cret", u)
		require.NotContains(t, err.Error(), `s3\"cret`, u)
		require.NotContains(t, err.Error(), "s3%63ret", u)
	}
	for name, opt := range map[string]broker.ListQueueOption{
		"heartbeat TTL not above its interval": broker.WithHeartbeat(time.Second, time.Second),
		"zero heartbeat interval":              broker.WithHeartbeat(0, time.Second),
		"empty queue name":                     broker.WithQueueName(""),
		"no dead letters":                      broker.WithDeadLetterLimit(0),
		"nil formatter":                        broker.WithFormatter(nil),
	} {
		_, err := broker.NewListQueue("redis://localhost", opt)
		require.Error(t, err, name)
	}
	b, err := broker.NewListQueue("redis://user:s3cret@127.0.0.1:1/2")
	require.NoError(t, err, "no I/O in the constructor")
	require.NoError(t, b.Shutdown(context.Background()))
}

func TestEveryKeySharesTheQueueHashTag(t *testing.T) {
	b := newListQueue(t, broker.WithHeartbeat(20*time.Millisecond, 100*time.Millisecond))
	ctx := context.Background()
	for i := range 6 {
		labels := broker.Labels{}
		if i%2 == 1 {
			labels[broker.LabelQueue] = "other"
		}
		if i == 2 {
			labels[broker.LabelDelay] = 60
		}
		require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Labels: labels, Args: []byte{0x80}}))
	}
	lock := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
		Lock: &broker.Lock{Client: b.Client(), Key: "lock-" + b.KeyPrefix(), TTL: time.Minute}}
	require.NoError(t, b.Kick(ctx, lock))
	c, err := b.Consume(ctx, broker.ConsumeOptions{Queues: []string{broker.DefaultQueue, "other"}})
	require.NoError(t, err)
	ds := fetchAll(t, c, 4)
	require.NoError(t, c.DeadLetter(ctx, ds[0], "x"))
	require.NoError(t, c.Retry(ctx, ds[1], ds[1].Message, time.Minute))
	require.NoError(t, c.Ack(ctx, ds[2]))
	// a consumer that dies, to be reaped by c
	dyingCtx, die := context.WithCancel(ctx)
	dying, err := b.Consume(dyingCtx, broker.ConsumeOptions{Queues: []string{"other"}})
	require.NoError(t, err)
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
		Labels: broker.Labels{broker.LabelQueue: "other"}}))
	fetchAll(t, dying, 1)
	die()
	time.Sleep(200 * time.Millisecond)

	var keys []string
	iter := b.Client().Scan(ctx, 0, b.KeyPrefix()+":*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	require.NoError(t, iter.Err())
	require.GreaterOrEqual(t, len(keys), 8, "msg, pending, scheduled, dead, consumers, wip: %v", keys)
	for _, k := range keys {
		require.Regexp(t, `^`+regexp.QuoteMeta(b.KeyPrefix())+`:\{(taskiq|other)\}:(msg|pending|scheduled|dead|consumers|wip:[0-9a-f]+)$`, k)
	}
	require.NoError(t, c.Close(ctx))
}

// roundTrips counts the calls a client sends: a command or a pipeline each.
// roundTrips counts round trips; with a delay, each takes at least that
// long, so that concurrent callers overlap however busy the machine is.
type roundTrips struct {
	n     atomic.Int64
	delay time.Duration
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "hello" && cmd.Name() != "client" { // not a new connection's set-up
			r.n.Add(1)
			time.Sleep(r.delay)
		}
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() != "hello" && cmds[0].Name() != "client" { // not a new connection's set-up
			r.n.Add(1)
			time.Sleep(r.delay)
		}
		return next(ctx, cmds)
	}
}

func TestConcurrentKicksShareScriptCalls(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}})) // loads the script
	rt := &roundTrips{delay: time.Millisecond}
	client.AddHook(rt)
	const callers, each = 64, 20
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := range each {
				queue := []string{broker.DefaultQueue, "other"}[(g+i)%2]
				m := lockMsg(client, fmt.Sprintf("%s:lock:%d:%d", b.KeyPrefix(), g, i))
				m.Labels = broker.Labels{broker.LabelQueue: queue}
				require.NoError(t, b.Kick(ctx, m))
				exists, err := b.TaskExists(ctx, queue, m.TaskID)
				require.NoError(t, err)
				require.True(t, exists, "Kick returns once Redis has the message")
			}
		})
	}
	wg.Wait()
	kicks := rt.n.Load() - callers*each // TaskExists costs one round trip each
	require.Less(t, kicks, int64(callers*each/4), "concurrent kicks were coalesced")
	t.Logf("%d kicks in %d round trips", callers*each, kicks)
	for _, q := range []string{broker.DefaultQueue, "other"} {
		stats, err := b.Stats(ctx, q)
		require.NoError(t, err)
		require.Equal(t, int64(callers*each/2)+map[string]int64{broker.DefaultQueue: 1}[q], stats.Pending, q)
	}
}

func TestBatchesCostOneRoundTrip(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	kickTo := func(queue string, n int) {
		for range n {
			require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
				Labels: broker.Labels{broker.LabelQueue: queue}}))
		}
	}
	kickTo(broker.DefaultQueue, 101)
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	require.NoError(t, c.Ack(ctx, fetchAll(t, c, 1)...)) // loads the scripts
	rt := &roundTrips{}
	client.AddHook(rt)
	count := func() int64 { return rt.n.Swap(0) }

	ds, err := c.Fetch(ctx, 100)
	require.NoError(t, err)
	require.Len(t, ds, 100)
	require.Equal(t, int64(1), count(), "taking 100 tasks is one round trip")
	require.NoError(t, c.Ack(ctx, ds...))
	require.Equal(t, int64(1), count(), "acking 100 tasks is one round trip")

	// Two queues: one round trip still, for hand-backs and acks.
	two, err := b.Consume(ctx, broker.ConsumeOptions{Queues: []string{broker.DefaultQueue, "other"}})
	require.NoError(t, err)
	defer two.Close(ctx)
	kickTo(broker.DefaultQueue, 3)
	kickTo("other", 3)
	mixed := append(fetchAll(t, two, 3), fetchAll(t, two, 3)...)
	require.NotEqual(t, mixed[0].Queue, mixed[3].Queue)
	require.NoError(t, two.HandBack(ctx, mixed...)) // loads the script
	mixed = append(fetchAll(t, two, 3), fetchAll(t, two, 3)...)
	count()
	require.NoError(t, two.HandBack(ctx, mixed...))
	require.Equal(t, int64(1), count(), "handing back to two queues is one round trip")
	mixed = append(fetchAll(t, two, 3), fetchAll(t, two, 3)...)
	count()
	require.NoError(t, two.Ack(ctx, mixed...))
	require.Equal(t, int64(1), count(), "acking on two queues is one round trip")
	require.NoError(t, two.Close(ctx))

	for _, q := range []string{broker.DefaultQueue, "other"} {
		stats, err := b.Stats(ctx, q)
		require.NoError(t, err)
		want := broker.QueueStats{Queue: q}
		if q == broker.DefaultQueue {
			want.Consumers = 1
		}
		require.Equal(t, want, stats)
	}
}

// lockMsg is a message asking for the lock key, held in client.
func lockMsg(client redis.UniversalClient, key string) *broker.Message {
	return &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
		Lock: &broker.Lock{Client: client, Key: key, TTL: time.Minute, TakeOver: true, Grace: 10 * time.Second,
			Held: func(_ *broker.Message, holder string) error { return &heldError{holder} }}}
}

// statements records the text of every command, as a tracing hook shows it.
type statements struct {
	mu   sync.Mutex
	cmds []string
}

func (s *statements) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s *statements) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		s.mu.Lock()
		s.cmds = append(s.cmds, cmd.String())
		s.mu.Unlock()
		return err
	}
}
func (s *statements) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// The kick script's arguments are passed as pointers into the kick (no
// allocation); a hook that shows the command, as a tracer does, still reads
// their values, not addresses.
func TestAKickReadsAsItsArgumentsInATrace(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	seen := &statements{}
	client.AddHook(seen)
	p := redistest.Prefix(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(p))
	require.NoError(t, err)
	msg := lockMsg(client, p+":lock")
	require.NoError(t, b.Kick(context.Background(), msg))
	var kick string
	for _, c := range seen.cmds {
		if strings.HasPrefix(c, "evalsha ") {
			kick = c
		}
	}
	raw, err := broker.Msgpack.EncodeMessage(msg)
	require.NoError(t, err)
	require.Contains(t, kick, " 5 "+msg.TaskID+" "+string(raw)+" 0 60000 10000", "five arguments: id, message, delay, TTL and grace")
	require.NotContains(t, kick, "0xc")

	// A message without a lock or a delay goes as its id and itself.
	plain := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
	require.NoError(t, b.Kick(context.Background(), plain))
	raw, err = broker.Msgpack.EncodeMessage(plain)
	require.NoError(t, err)
	last := seen.cmds[len(seen.cmds)-1]
	require.Contains(t, last, " 2 "+plain.TaskID+" "+string(raw))
	require.NotContains(t, last, string(raw)+" 0 0 -1")
}

type heldError struct{ holder string }

func (e *heldError) Error() string { return "held by " + e.holder }

func TestLocksAtomically(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client))
	require.NoError(t, err)
	require.True(t, b.LocksAtomically(client), "the broker's own client")
	require.True(t, b.LocksAtomically(srv.Client(t)), "another client of the same server and database")
	for name, c := range map[string]redis.UniversalClient{
		"another database":    redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: 3}),
		"another user":        redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "bob"}),
		"another server":      redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}),
		"a cluster":           redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}}),
		"a ring":              redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": srv.Addr()}}),
		"a failover client":   redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "m", SentinelAddrs: []string{"127.0.0.1:1"}}),
		"no client":           nil,
		"a nil *redis.Client": (*redis.Client)(nil),
	} {
		require.False(t, b.LocksAtomically(c), name)
		if c != nil && c != redis.UniversalClient((*redis.Client)(nil)) {
			require.NoError(t, c.Close())
		}
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": srv.Addr()}})
	defer ring.Close()
	rb, err := broker.NewListQueue("", broker.WithClient(ring))
	require.NoError(t, err)
	require.False(t, rb.LocksAtomically(ring), "a ring shards the lock and the queue apart")
	require.ErrorIs(t, rb.Kick(context.Background(), lockMsg(ring, "k")), broker.ErrLockUnsupported)
}

func TestLockTakenInTheKickScript(t *testing.T) {
	srv := redistest.Shared(t)
	client := srv.Client(t)
	other := srv.Client(t) // a different client of the same server still locks atomically
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	key := b.KeyPrefix() + ":lock"

	require.NoError(t, b.Kick(ctx, lockMsg(other, key+"-warm-up"))) // loads the script
	first := lockMsg(other, key)
	rt := &roundTrips{}
	client.AddHook(rt)
	require.NoError(t, b.Kick(ctx, first))
	require.Equal(t, int64(1), rt.n.Load(), "a kick with a lock is one round trip")
	require.Equal(t, first.TaskID, client.Get(ctx, key).Val())
	require.InDelta(t, time.Minute, client.PTTL(ctx, key).Val(), float64(time.Second))
	rt.n.Store(0)
	second := lockMsg(other, key)
	var held *heldError
	require.ErrorAs(t, b.Kick(ctx, second), &held)
	require.Equal(t, first.TaskID, held.holder)
	require.Equal(t, int64(1), rt.n.Load(), "a duplicate costs one round trip")
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(2), stats.Pending, "the duplicate was not queued")
	exists, err := b.TaskExists(ctx, broker.DefaultQueue, second.TaskID)
	require.NoError(t, err)
	require.False(t, exists)

	require.ErrorIs(t, b.Kick(ctx, &broker.Message{TaskID: first.TaskID, TaskName: "t"}), broker.ErrTaskExists)
	require.Error(t, b.Kick(ctx, &broker.Message{TaskName: "t"}), "an empty task id")
	exists, err = b.TaskExists(ctx, broker.DefaultQueue, first.TaskID)
	require.NoError(t, err)
	require.True(t, exists)

	// The holder runs and finishes, but its lock outlives it (a crash before
	// the release): the next kick takes the lock over.
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds := fetchAll(t, c, 2)
	require.Equal(t, first.TaskID, ds[1].ID)
	require.ErrorAs(t, b.Kick(ctx, lockMsg(other, key)), &held, "in flight: still held")
	require.NoError(t, c.Ack(ctx, ds...))
	noTakeOver := lockMsg(other, key)
	noTakeOver.Lock.TakeOver = false
	require.ErrorAs(t, b.Kick(ctx, noTakeOver), &held, "without TakeOver a stale lock stays held")
	third := lockMsg(other, key)
	var stale string
	var reported *broker.Message
	third.Lock.TakenOver = func(msg *broker.Message, holder string) { reported, stale = msg, holder }
	require.NoError(t, b.Kick(ctx, third), "the holder exists nowhere in the queue")
	require.Equal(t, first.TaskID, stale, "the takeover is reported with the stale holder")
	require.Same(t, third, reported, "and with the message that took the lock over")
	require.Equal(t, third.TaskID, client.Get(ctx, key).Val())
	require.Equal(t, third.TaskID, fetchAll(t, c, 1)[0].ID)
}

// A kick whose task id exists already is refused and leaves the lock as it
// found it: a lock it took is deleted, a lock it took over goes back to
// its holder with the TTL that holder had left; a kick of the lock's own
// holder again is the task that exists.
func TestKickOfAnExistingIDLeavesItsLockAsItWas(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	queued := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
	require.NoError(t, b.Kick(ctx, queued), "queued without a lock")

	free := lockMsg(client, b.KeyPrefix()+":free")
	free.TaskID = queued.TaskID
	require.ErrorIs(t, b.Kick(ctx, free), broker.ErrTaskExists)
	require.Zero(t, client.Exists(ctx, free.Lock.Key).Val(), "the lock it took is deleted")

	stale, gone := b.KeyPrefix()+":stale", broker.NewTaskID() // held by a task that exists nowhere
	require.NoError(t, client.Set(ctx, stale, gone, 30*time.Second).Err())
	over := lockMsg(client, stale)
	over.TaskID = queued.TaskID
	over.Lock.TakenOver = func(*broker.Message, string) { t.Error("no takeover is reported") }
	require.ErrorIs(t, b.Kick(ctx, over), broker.ErrTaskExists)
	require.Equal(t, gone, client.Get(ctx, stale).Val(), "the lock goes back to its holder")
	require.InDelta(t, 30*time.Second, client.PTTL(ctx, stale).Val(), float64(time.Second), "with its TTL")

	holder := lockMsg(client, b.KeyPrefix()+":own")
	require.NoError(t, b.Kick(ctx, holder))
	again := lockMsg(client, holder.Lock.Key)
	again.TaskID = holder.TaskID
	require.ErrorIs(t, b.Kick(ctx, again), broker.ErrTaskExists, "its own lock: the task exists")
	require.Equal(t, holder.TaskID, client.Get(ctx, holder.Lock.Key).Val())

	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(2), stats.Pending, "nothing was queued twice")
}

// One KickMany batch that mixes every outcome of the kick script: each
// message gets its own, with its own lock's holder, and the messages sent
// are taken in the order of the batch.
func TestKickManyGivesEachMessageItsOutcome(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	p := b.KeyPrefix()
	holderA, holderB := broker.NewTaskID(), broker.NewTaskID()                 // exist nowhere on the queue
	require.NoError(t, client.Set(ctx, p+":a", holderA, 0).Err())              // no TTL: never taken over
	require.NoError(t, client.Set(ctx, p+":b", holderB, 30*time.Second).Err()) // stale: taken over
	existing := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
	require.NoError(t, b.Kick(ctx, existing))

	plain := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
	heldA := lockMsg(client, p+":a")
	fresh := lockMsg(client, p+":fresh")
	overB := lockMsg(client, p+":b")
	var tookFrom string
	overB.Lock.TakenOver = func(_ *broker.Message, holder string) { tookFrom = holder }
	dup := &broker.Message{TaskID: existing.TaskID, TaskName: "t", Args: []byte{0x80}}
	heldFresh := lockMsg(client, p+":fresh") // held by fresh, earlier in the same batch
	last := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
	errs := b.KickMany(ctx, []*broker.Message{plain, heldA, fresh, overB, dup, heldFresh, last})

	var held *heldError
	require.NoError(t, errs[0])
	require.ErrorAs(t, errs[1], &held)
	require.Equal(t, holderA, held.holder)
	require.NoError(t, errs[2])
	require.NoError(t, errs[3])
	require.Equal(t, holderB, tookFrom)
	require.ErrorIs(t, errs[4], broker.ErrTaskExists)
	require.ErrorAs(t, errs[5], &held)
	require.Equal(t, fresh.TaskID, held.holder)
	require.NoError(t, errs[6])

	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	var order []string
	for _, d := range fetchAll(t, c, 5) {
		order = append(order, d.ID)
	}
	require.Equal(t, []string{existing.TaskID, plain.TaskID, fresh.TaskID, overB.TaskID, last.TaskID}, order)
}

// A KickMany whose context has already ended sends nothing, as Kick.
func TestKickManyWithAnEndedContextSendsNothing(t *testing.T) {
	b := newListQueue(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msgs := []*broker.Message{
		{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}},
		{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}},
	}
	for _, err := range b.KickMany(ctx, msgs) {
		require.ErrorIs(t, err, context.Canceled)
	}
	stats, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, stats.Pending)
}

// A call whose messages are all plain sends two arguments per message; one
// delayed message among them makes it five for all: either way each is
// queued or scheduled as its own labels say.
func TestKickManyOfPlainAndDelayedMessages(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	msg := func(delay float64) *broker.Message {
		m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
		if delay > 0 {
			m.Labels = broker.Labels{broker.LabelDelay: delay}
		}
		return m
	}
	for _, batch := range [][]*broker.Message{
		{msg(0), msg(0), msg(0)},
		{msg(0), msg(3600), msg(0)},
	} {
		for _, err := range b.KickMany(ctx, batch) {
			require.NoError(t, err)
		}
	}
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Pending: 5, Scheduled: 1}, stats)
}

func TestLockWithinItsGraceIsNotTakenOver(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	client := b.Client()
	key := b.KeyPrefix() + ":lock"
	// Another producer's lock on the grace path: taken with the grace TTL,
	// its task not enqueued yet.
	sending := broker.NewTaskID()
	require.NoError(t, client.Set(ctx, key, sending, 5*time.Second).Err())
	var held *heldError
	require.ErrorAs(t, b.Kick(ctx, lockMsg(client, key)), &held)
	require.Equal(t, sending, held.holder)
	// Extended past the grace (its send completed, the task then vanished):
	// taken over.
	require.NoError(t, client.PExpire(ctx, key, time.Minute).Err())
	m := lockMsg(client, key)
	require.NoError(t, b.Kick(ctx, m))
	require.Equal(t, m.TaskID, client.Get(ctx, key).Val())
	// A lock without a TTL is never taken over.
	require.NoError(t, client.Set(ctx, key+"-forever", broker.NewTaskID(), 0).Err())
	require.ErrorAs(t, b.Kick(ctx, lockMsg(client, key+"-forever")), &held)
}

func TestOnlyLocksOfGeneratedIDsAreTakenOver(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	client := b.Client()
	for _, holder := range []string{
		"5f0c3a8e9b7d4e21a6c4d2b1e8f09a37",                      // Python Taskiq's uuid4().hex
		"order-42",                                              // a caller's WithTaskID
		strings.ToUpper(broker.NewTaskID()),                     // not the generated form
		broker.NewTaskID()[:31] + "g",                           // not hex
		broker.NewTaskID()[:16] + "c" + broker.NewTaskID()[17:], // wrong variant
	} {
		require.False(t, broker.IsGeneratedTaskID(holder), holder)
		key := b.KeyPrefix() + ":lock:" + holder
		require.NoError(t, client.Set(ctx, key, holder, time.Minute).Err())
		var held *heldError
		require.ErrorAs(t, b.Kick(ctx, lockMsg(client, key)), &held, "%s is not Kiq's to look for: respected", holder)
		require.Equal(t, holder, held.holder)
	}
	for range 100 {
		id := broker.NewTaskID()
		require.True(t, broker.IsGeneratedTaskID(id), id)
		key := b.KeyPrefix() + ":lock:" + id
		require.NoError(t, client.Set(ctx, key, id, time.Minute).Err())
		require.NoError(t, b.Kick(ctx, lockMsg(client, key)), "a vanished Kiq task's lock is taken over")
	}
}

func TestTaskIDsAreTimeOrderedUUIDv7(t *testing.T) {
	before := time.Now().UnixMilli()
	id := broker.NewTaskID()
	after := time.Now().UnixMilli()
	ms, err := strconv.ParseInt(id[:12], 16, 64)
	require.NoError(t, err)
	require.GreaterOrEqual(t, ms, before)
	require.LessOrEqual(t, ms, after)
	seen := map[string]bool{}
	for range 10000 {
		id := broker.NewTaskID()
		require.False(t, seen[id])
		seen[id] = true
	}
}

// The ack and dead-letter scripts report each lock they deleted through
// its Lock.Released, in one round trip, across queues; a lock gone or held
// by another task is not reported.
func TestSettlingReportsReleasedLocks(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	client := b.Client()
	var mu sync.Mutex
	released := map[string]int{}
	kick := func(queue, key string) {
		t.Helper()
		m := lockMsg(client, key)
		m.Labels = broker.Labels{broker.LabelQueue: queue}
		require.NoError(t, b.Kick(ctx, m))
	}
	p := b.KeyPrefix()
	kick("q1", p+":l1")
	kick("q1", p+":l2")
	kick("q2", p+":l3")
	kick("q2", p+":l4")
	kick("q2", p+":warm-up")
	c, err := b.Consume(ctx, broker.ConsumeOptions{Queues: []string{"q1", "q2"}})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds := fetchAll(t, c, 5)
	for i, d := range ds {
		if client.Get(ctx, p+":warm-up").Val() == d.ID {
			require.NoError(t, c.Ack(ctx, d)) // loads the ack script
			ds = append(ds[:i], ds[i+1:]...)
			break
		}
	}
	byKey := map[string]*broker.Delivery{}
	for _, d := range ds {
		for _, k := range []string{"l1", "l2", "l3", "l4"} {
			if client.Get(ctx, p+":"+k).Val() == d.ID {
				byKey[k] = d
				d.Message.Unlock = &broker.Lock{Client: client, Key: p + ":" + k, Released: func() {
					mu.Lock()
					released[k]++
					mu.Unlock()
				}}
			}
		}
	}
	require.Len(t, byKey, 4)
	require.NoError(t, client.Set(ctx, p+":l2", "another-task", time.Minute).Err())
	require.NoError(t, client.Del(ctx, p+":l3").Err())
	rt := &roundTrips{}
	client.AddHook(rt)
	require.NoError(t, c.Ack(ctx, byKey["l1"], byKey["l2"], byKey["l3"]))
	require.Equal(t, int64(1), rt.n.Load(), "two queues, one round trip")
	require.NoError(t, c.DeadLetter(ctx, byKey["l4"], "boom"))
	require.Equal(t, map[string]int{"l1": 1, "l4": 1}, released)
	require.Equal(t, "another-task", client.Get(ctx, p+":l2").Val())
	require.Zero(t, client.Exists(ctx, p+":l1", p+":l4").Val())
	require.NoError(t, c.Ack(ctx, byKey["l1"]))
	require.Equal(t, 1, released["l1"], "settling twice reports nothing")
}

func TestLockedKicksRaceToOneMessage(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	key := b.KeyPrefix() + ":lock"
	var wg sync.WaitGroup
	var won atomic.Int64
	errs := make(chan error, 200)
	for range 200 {
		wg.Go(func() {
			err := b.Kick(ctx, lockMsg(b.Client(), key))
			var held *heldError
			switch {
			case err == nil:
				won.Add(1)
			case !errors.As(err, &held):
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int64(1), won.Load())
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(1), stats.Pending)
	n, err := b.Client().HLen(ctx, b.KeyPrefix()+":{taskiq}:msg").Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
}

func TestFetchReturnsAtOnceWhenCancelled(t *testing.T) {
	b := newListQueue(t)
	c, err := b.Consume(context.Background(), broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(context.Background())
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		start := time.Now()
		_, err := c.Fetch(ctx, 1)
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(start), 200*time.Millisecond, "not after the BLMOVE's second")
	}
}

func TestFetchFailsOnceTheConsumeContextEnds(t *testing.T) {
	b := newListQueue(t)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = c.Fetch(context.Background(), 1)
	require.ErrorIs(t, err, broker.ErrConsumerClosed)
}

func TestAClientWithAShortReadTimeoutCanBlock(t *testing.T) {
	srv := redistest.Shared(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 100 * time.Millisecond})
	defer client.Close()
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)))
	require.NoError(t, err)
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	fctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err = c.Fetch(fctx, 1)
	require.ErrorIs(t, err, context.DeadlineExceeded, "not an i/o timeout")
	m := kick(t, b, "t")
	require.Equal(t, m.TaskID, fetchAll(t, c, 1)[0].ID)
}

func TestAConsumerTakenForDeadRegistersAgain(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	consumers := b.KeyPrefix() + ":{taskiq}:consumers"
	ids, err := b.Client().ZRange(ctx, consumers, 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, ids, 1)
	// Another consumer found it dead (its heartbeats lost) and reaped it.
	require.NoError(t, b.Client().ZRem(ctx, consumers, ids[0]).Err())
	kick(t, b, "t")
	fetchAll(t, c, 1)
	require.NoError(t, b.Client().ZScore(ctx, consumers, ids[0]).Err(), "holding a task, it is registered")
}

func BenchmarkKick(b *testing.B) {
	q := newListQueue(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := q.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFetchAck(b *testing.B) {
	q := newListQueue(b)
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
	require.Less(t, late, 30*time.Millisecond, "not a blocked second late, nor a Redis cron tick")
}

func TestScheduledTasksStartOnTime(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	due := map[string]time.Time{}
	for i := range 6 {
		d := time.Duration(50+67*i) * time.Millisecond
		m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}, Labels: broker.Labels{broker.LabelDelay: d.Seconds()}}
		due[m.TaskID] = time.Now().Add(d)
		require.NoError(t, b.Kick(ctx, m))
	}
	for range due {
		ds := fetchAll(t, c, 1)
		late := time.Since(due[ds[0].ID])
		require.Greater(t, late, -5*time.Millisecond, "not early")
		require.Less(t, late, 30*time.Millisecond, "on time")
	}
}

func TestWakeUpTokensAreNotTasks(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	for _, delay := range []float64{60, 30} { // each the earliest when kicked
		require.NoError(t, b.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
			Labels: broker.Labels{broker.LabelDelay: delay}}))
	}
	n, err := b.Client().LLen(ctx, b.KeyPrefix()+":{taskiq}:pending").Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "one token at the head of pending is enough")
	kick(t, b, "now")
	stats, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Pending: 1, Scheduled: 2}, stats)
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.Len(t, ds, 1, "a token does not count against the batch")
	require.Equal(t, "now", ds[0].Message.TaskName)
}

// BenchmarkKickToStart measures how long an idle consumer blocked in Fetch
// takes to receive a task after Kick returns: no polling, so well under a
// millisecond on a local Redis.
func BenchmarkKickToStart(b *testing.B) {
	q := newListQueue(b)
	ctx := context.Background()
	c, err := q.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(b, err)
	defer c.Close(ctx)
	got := make(chan time.Time)
	stop := make(chan struct{})
	go func() {
		for {
			ds, err := c.Fetch(ctx, 1)
			if err != nil {
				return
			}
			_ = c.Ack(ctx, ds...)
			select {
			case got <- time.Now():
			case <-stop:
				return
			}
		}
	}()
	defer close(stop)
	var total time.Duration
	b.ReportAllocs()
	for b.Loop() {
		time.Sleep(200 * time.Microsecond) // let the consumer block again
		start := time.Now()
		if err := q.Kick(ctx, &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}); err != nil {
			b.Fatal(err)
		}
		total += (<-got).Sub(start)
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs-kick-to-fetch")
}

func BenchmarkKickMany(b *testing.B) {
	q := newListQueue(b)
	ctx := context.Background()
	msgs := make([]*broker.Message, 1000)
	b.ReportAllocs()
	for b.Loop() {
		for i := range msgs {
			msgs[i] = &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
		}
		for _, err := range q.KickMany(ctx, msgs) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(msgs)*b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// The dead-letter list keeps WithDeadLetterLimit entries, newest first;
// when the cap drops the oldest, a warning says how many, once per trim.
func TestDeadLetterCapDropsAreLogged(t *testing.T) {
	prefix := redistest.Prefix(t)
	ctx := context.Background()
	deadLetterAll := func(b *broker.ListQueue, n int) {
		for range n {
			pushRaw(t, b, broker.DefaultQueue, []byte{0xc1})
		}
		c, err := b.Consume(ctx, broker.ConsumeOptions{})
		require.NoError(t, err)
		defer c.Close(ctx)
		for _, d := range fetchAll(t, c, n) {
			require.NoError(t, c.DeadLetter(ctx, d, "bad"))
		}
	}
	logs := &testlog.Buffer{}
	wide := newListQueue(t, broker.WithKeyPrefix(prefix), broker.WithDeadLetterLimit(10),
		broker.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	deadLetterAll(wide, 5)
	require.NotContains(t, logs.String(), "dead-letter list is full", "nothing dropped under the cap")

	narrow := newListQueue(t, broker.WithKeyPrefix(prefix), broker.WithDeadLetterLimit(2),
		broker.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	deadLetterAll(narrow, 2)
	dls, err := narrow.DeadLetters(ctx, broker.DefaultQueue, 0, 100)
	require.NoError(t, err)
	require.Len(t, dls, 2, "capped")
	lines := regexp.MustCompile(`dead-letter list is full.* dropped=(\d+) limit=2`).FindAllStringSubmatch(logs.String(), -1)
	require.Len(t, lines, 2, "one warning per trim:\n%s", logs.String())
	require.Equal(t, "4", lines[0][1], "five kept, one more, two allowed")
	require.Equal(t, "1", lines[1][1])
}

// soleConsumer starts the one consumer of b's default queue, closed with
// the test, and returns it with the key of its in-flight list.
func soleConsumer(t *testing.T, b *broker.ListQueue) (broker.Consumer, string) {
	t.Helper()
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(ctx) })
	ids := b.Client().ZRange(ctx, b.KeyPrefix()+":{taskiq}:consumers", 0, -1).Val()
	require.Len(t, ids, 1)
	return c, b.KeyPrefix() + ":{taskiq}:wip:" + ids[0]
}

// A take or BLMOVE whose reply is lost (the connection dropped after Redis
// ran it; go-redis may even retry it and move more) leaves ids in the
// consumer's in-flight list that no delivery holds. The live consumer
// delivers them again within a heartbeat interval (plus the one-second
// bound of a blocking wait) instead of keeping them in flight, never run,
// for as long as it lives.
func TestOrphansOfALostReplyAreDeliveredAgain(t *testing.T) {
	b := newListQueue(t, broker.WithHeartbeat(50*time.Millisecond, 300*time.Millisecond))
	ctx := context.Background()
	c, wip := soleConsumer(t, b)
	client, pending := b.Client(), b.KeyPrefix()+":{taskiq}:pending"

	lost := kick(t, b, "lost")
	// What take.lua does before its reply is lost, and a stray wake-up token.
	require.Equal(t, lost.TaskID, client.LMove(ctx, pending, wip, "RIGHT", "LEFT").Val())
	require.NoError(t, client.LPush(ctx, wip, "").Err())

	// Due in about a second; the margin is for a machine loaded by other
	// test binaries (without the recovery, it never comes).
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ds, err := c.Fetch(fctx, 10)
	require.NoError(t, err, "the orphan is delivered")
	require.Len(t, ds, 1)
	require.Equal(t, lost.TaskID, ds[0].ID)
	require.NoError(t, c.Ack(ctx, ds...))
	s, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.InFlight, "the token is gone too")

	// A held delivery is never taken for an orphan.
	held := kick(t, b, "held")
	ds, err = c.Fetch(fctx, 1)
	require.NoError(t, err)
	require.Equal(t, held.TaskID, ds[0].ID)
	time.Sleep(150 * time.Millisecond) // several recovery turns
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	again, err := c.Fetch(short, 1)
	require.ErrorIs(t, err, context.DeadlineExceeded, "got %v", again)
	require.NoError(t, c.Ack(ctx, ds...))
}

// A wake-up token alone in the in-flight list is no lost reply: the
// recovery drops it and delivers nothing, and the task waiting in pending
// comes by the normal take, without a warning. (A recovery that took from
// pending as well delivered it as an orphan, under that warning, whenever
// the orphans it found were gone by its take: settled meanwhile, or only
// a token.)
func TestAStrayTokenIsNoLostReply(t *testing.T) {
	var logs testlog.Buffer
	b := newListQueue(t, broker.WithHeartbeat(50*time.Millisecond, 300*time.Millisecond),
		broker.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	ctx := context.Background()
	c, wip := soleConsumer(t, b)
	require.NoError(t, b.Client().LPush(ctx, wip, "").Err())
	first, cancelFirst := context.WithTimeout(ctx, 10*time.Millisecond) // starts the recovery's clock
	defer cancelFirst()
	_, err := c.Fetch(first, 10)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	time.Sleep(300 * time.Millisecond) // the recovery is due, the abandoned BLMOVE is over
	fresh := kick(t, b, "fresh")

	fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ds, err := c.Fetch(fctx, 10)
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, fresh.TaskID, ds[0].ID)
	require.NotContains(t, logs.String(), "lost reply")
	require.NoError(t, c.Ack(ctx, ds...))
	s, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.InFlight, "the token is gone")
}

// scriptCalls counts the runs of one of the broker's scripts a client
// sends, alone or in a pipeline (not counting an EVALSHA refused with
// NOSCRIPT, which go-redis follows with an EVAL).
type scriptCalls struct {
	source, sha string
	n           atomic.Int64
}

// newScriptCalls counts the runs of lua/<name>.lua.
func newScriptCalls(t *testing.T, name string) *scriptCalls {
	src, err := os.ReadFile("lua/" + name + ".lua")
	require.NoError(t, err)
	return &scriptCalls{source: string(src), sha: fmt.Sprintf("%x", sha1.Sum(src))}
}

func (c *scriptCalls) count(cmd redis.Cmder, err error) {
	args := cmd.Args()
	if len(args) > 1 && (args[1] == c.sha || args[1] == c.source) && !redis.HasErrorPrefix(err, "NOSCRIPT") {
		c.n.Add(1)
	}
}

func (c *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.count(cmd, err)
		return err
	}
}
func (c *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			c.count(cmd, cmd.Err())
		}
		return err
	}
}

// Thousands of scheduled tasks that come due cost one take.lua call per
// thousand (each call queues up to 1000 due tasks, atomically), not one
// call per task.
func TestDueScheduledTasksMoveInBulk(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: redistest.Shared(t).Addr()})
	defer client.Close()
	calls := newScriptCalls(t, "take")
	client.AddHook(calls)
	b := newListQueue(t, broker.WithClient(client))
	ctx := context.Background()
	const n = 3000
	msgs := make([]*broker.Message, n)
	for i := range msgs {
		msgs[i] = &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80},
			Labels: broker.Labels{broker.LabelDelay: 0.2}}
	}
	for _, err := range b.KickMany(ctx, msgs) {
		require.NoError(t, err)
	}
	time.Sleep(300 * time.Millisecond) // all due
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	scheduled, pending := b.KeyPrefix()+":{taskiq}:scheduled", b.KeyPrefix()+":{taskiq}:pending"

	calls.n.Store(0)
	ds := fetchAll(t, c, 1)
	require.Equal(t, int64(1), calls.n.Load(), "one call")
	require.Equal(t, int64(n-1000), client.ZCard(ctx, scheduled).Val(), "moved a thousand due tasks")
	require.Contains(t, []int64{999, 1000}, client.LLen(ctx, pending).Val(), "queued, one delivered (and perhaps a wake-up token)")
	require.NoError(t, c.Ack(ctx, ds...))

	ds = fetchAll(t, c, n-1)
	require.NoError(t, c.Ack(ctx, ds...))
	require.LessOrEqual(t, calls.n.Load(), int64(n/1000+2), "%d calls for %d due tasks", calls.n.Load(), n)
	require.Zero(t, client.ZCard(ctx, scheduled).Val())
}

// blmoveWatch counts round trips, and signals each pipeline with a BLMOVE
// as it is sent.
type blmoveWatch struct {
	roundTrips
	sent chan struct{}
}

func (w *blmoveWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	counted := w.roundTrips.ProcessPipelineHook(next)
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "blmove" {
			select {
			case w.sent <- struct{}{}:
			default:
			}
		}
		return counted(ctx, cmds)
	}
}

// watchedConsumer is a consumer whose client is watched by a blmoveWatch
// (and the scriptCalls given), its scripts loaded, and a producer on its
// queue with a client of its own.
func watchedConsumer(t *testing.T, hooks ...redis.Hook) (broker.Consumer, *blmoveWatch, *broker.ListQueue) {
	t.Helper()
	client := redistest.Shared(t).Client(t)
	b, err := broker.NewListQueue("", broker.WithClient(client), broker.WithKeyPrefix(redistest.Prefix(t)),
		broker.WithHeartbeat(time.Minute, 3*time.Minute)) // no heartbeat during the test
	require.NoError(t, err)
	producer := newListQueue(t, broker.WithKeyPrefix(b.KeyPrefix()))
	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(ctx) })
	kick(t, producer, "warm-up")
	require.NoError(t, c.Ack(ctx, fetchAll(t, c, 1)...)) // loads the scripts
	w := &blmoveWatch{sent: make(chan struct{}, 1)}
	client.AddHook(w)
	for _, h := range hooks {
		client.AddHook(h)
	}
	return c, w, producer
}

// awaitBlocked returns once the consumer's BLMOVE is sent, and likely
// blocked.
func (w *blmoveWatch) awaitBlocked(t *testing.T) {
	t.Helper()
	select {
	case <-w.sent:
	case <-time.After(5 * time.Second):
		t.Fatal("the consumer never blocked")
	}
	time.Sleep(20 * time.Millisecond)
}

// An idle consumer blocks in BLMOVE with take.lua behind it in one
// pipeline: the task that wakes it is delivered in the round trip that
// waited for it, with no second one for its message.
func TestAnIdleConsumerIsServedInTheRoundTripThatWaited(t *testing.T) {
	c, w, producer := watchedConsumer(t)
	ctx := context.Background()
	for range 3 {
		got := make(chan []*broker.Delivery, 1)
		go func() {
			ds, err := c.Fetch(ctx, 10)
			if err != nil {
				t.Error(err)
			}
			got <- ds
		}()
		w.awaitBlocked(t)
		w.n.Store(0)
		m := kick(t, producer, "wakes it")
		ds := <-got
		require.Len(t, ds, 1)
		require.Equal(t, m.TaskID, ds[0].ID)
		require.NoError(t, ds[0].Err)
		require.Zero(t, w.n.Load(), "no round trip after the blocking one")
		require.NoError(t, c.Ack(ctx, ds...))
	}
}

// A Fetch that gives up while its pipeline is blocked leaves it to hand
// back everything its take takes, in order.
func TestAnAbandonedBlockHandsBackAllItTook(t *testing.T) {
	handBacks := newScriptCalls(t, "handback")
	c, w, producer := watchedConsumer(t, handBacks)
	ctx := context.Background()
	fctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Fetch(fctx, 10)
		errc <- err
	}()
	w.awaitBlocked(t)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)

	msgs := make([]*broker.Message, 5)
	for i := range msgs {
		msgs[i] = &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Args: []byte{0x80}}
	}
	for _, err := range producer.KickMany(ctx, msgs) {
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return handBacks.n.Load() == 1 }, 3*time.Second, 5*time.Millisecond,
		"the abandoned pipeline took the tasks and handed them back")
	s, err := producer.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(5), s.Pending)
	require.Zero(t, s.InFlight)
	ds := fetchAll(t, c, 5)
	for i, d := range ds {
		require.Equal(t, msgs[i].TaskID, d.ID, "in their order")
	}
	require.NoError(t, c.Ack(ctx, ds...))
}

// An id a BLMOVE moved into the consumer's land list, where the take.lua
// behind it never ran (its pipeline's connection dropped), is delivered by
// the next take; and a closing consumer hands back what landed for it.
func TestLandedIDsAreNeverStranded(t *testing.T) {
	b := newListQueue(t)
	ctx := context.Background()
	c, wip := soleConsumer(t, b)
	land := strings.Replace(wip, ":wip:", ":land:", 1)
	client, pending := b.Client(), b.KeyPrefix()+":{taskiq}:pending"

	landed := kick(t, b, "landed")
	require.Equal(t, landed.TaskID, client.LMove(ctx, pending, land, "RIGHT", "LEFT").Val())
	ds := fetchAll(t, c, 1)
	require.Equal(t, landed.TaskID, ds[0].ID)
	require.NoError(t, c.Ack(ctx, ds...))
	require.Zero(t, client.Exists(ctx, land).Val())

	closing := kick(t, b, "closing")
	require.Equal(t, closing.TaskID, client.LMove(ctx, pending, land, "RIGHT", "LEFT").Val())
	require.NoError(t, c.Close(ctx))
	require.Equal(t, []string{closing.TaskID}, client.LRange(ctx, pending, 0, -1).Val())
	require.Zero(t, client.Exists(ctx, land).Val())
}

// A server that forgot the scripts while a consumer was blocked (a restart,
// SCRIPT FLUSH) refuses the take behind the BLMOVE with NOSCRIPT: the next
// round's take loads the script and delivers the landed task, and Fetch
// reports no error.
func TestABlockedTakeSurvivesAForgottenScript(t *testing.T) {
	c, w, producer := watchedConsumer(t)
	ctx := context.Background()
	got := make(chan error, 1)
	var ds []*broker.Delivery
	go func() {
		var err error
		ds, err = c.Fetch(ctx, 10)
		got <- err
	}()
	w.awaitBlocked(t)
	require.NoError(t, producer.Client().ScriptFlush(ctx).Err())
	m := kick(t, producer, "after the flush")
	require.NoError(t, <-got)
	require.Len(t, ds, 1)
	require.Equal(t, m.TaskID, ds[0].ID)
	require.NoError(t, c.Ack(ctx, ds...))
}
