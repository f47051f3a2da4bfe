package kicker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/kicker"
	"github.com/kiq-go/kiq/middleware"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

type Args struct {
	N int `msgpack:"n"`
}

func TestDelayAndETABecomeTheDelayLabel(t *testing.T) {
	k := kicker.New[Args](&kicker.Target{Broker: broker.NewInMemory(), Name: "t"})
	m, err := k.WithDelay(1500 * time.Millisecond).Message(Args{})
	require.NoError(t, err)
	d, _ := m.Labels.Duration(broker.LabelDelay)
	require.Equal(t, 1500*time.Millisecond, d)

	m, err = k.WithETA(time.Now().Add(time.Minute)).Message(Args{})
	require.NoError(t, err)
	d, _ = m.Labels.Duration(broker.LabelDelay)
	require.InDelta(t, time.Minute, d, float64(time.Second))

	m, err = k.WithETA(time.Now().Add(-time.Hour)).Message(Args{})
	require.NoError(t, err)
	d, _ = m.Labels.Duration(broker.LabelDelay)
	require.Zero(t, d, "an ETA in the past is now")
}

type failing struct {
	middleware.Base
	err error
}

func (f failing) PreSend(context.Context, *broker.Message) error { return f.err }

func TestKiqWrapsTheCauseAndTheChainIsFrozenOnFirstUse(t *testing.T) {
	b := broker.NewInMemory()
	target := &kicker.Target{Broker: b, Name: "t"}
	k := kicker.New[Args](target)
	_, err := k.Kiq(context.Background(), Args{})
	require.NoError(t, err)

	cause := errors.New("refused")
	b.WithMiddlewares(failing{err: cause})
	_, err = k.Kiq(context.Background(), Args{})
	require.NoError(t, err, "middlewares added after a task's first kick do not run for it (documented)")

	fresh := kicker.New[Args](&kicker.Target{Broker: b, Name: "u"})
	_, err = fresh.Kiq(context.Background(), Args{})
	require.ErrorIs(t, err, cause)
	require.Contains(t, err.Error(), "kiq: kick u: refused")
}

func TestKiqManyWithoutABulkBroker(t *testing.T) {
	b := broker.NewInMemory()
	k := kicker.New[Args](&kicker.Target{Broker: b, Name: "t", Labels: broker.Labels{}})
	handles, errs := k.WithLabels(broker.Labels{"timeout": "later"}).KiqMany(context.Background(), []Args{{N: 1}})
	require.ErrorIs(t, errs[0], broker.ErrBadLabel)
	require.Nil(t, handles[0])
	handles, errs = k.KiqMany(context.Background(), []Args{{N: 1}, {N: 2}, {N: 3}})
	for i := range 3 {
		require.NoError(t, errs[i])
		require.NotEmpty(t, handles[i].TaskID())
	}
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	require.Equal(t, int64(3), s.Pending)
}

// deadClient is a client of a local port nothing listens on, that fails
// fast.
func deadClient(t *testing.T) *redis.Client {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestKickErrorsReadOnce(t *testing.T) {
	// The Redis broker names the kick itself: the kicker does not repeat it.
	b, err := broker.NewListQueue("", broker.WithClient(deadClient(t)))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	_, err = kicker.New[Args](&kicker.Target{Broker: b, Name: "t"}).Kiq(context.Background(), Args{})
	require.Error(t, err)
	require.Equal(t, 1, strings.Count(err.Error(), "kiq: kick t:"), err.Error())
	require.True(t, strings.HasPrefix(err.Error(), "kiq: kick t: "), err.Error())
	var opErr *net.OpError
	require.ErrorAs(t, err, &opErr, "errors.As reaches the cause")

	// Any other cause gets the prefix once, without a second "kiq: ".
	mem := broker.NewInMemory()
	mem.WithMiddlewares(failing{err: fmt.Errorf("kiq: dedup: %w", errors.ErrUnsupported)})
	_, err = kicker.New[Args](&kicker.Target{Broker: mem, Name: "u"}).Kiq(context.Background(), Args{})
	require.EqualError(t, err, "kiq: kick u: dedup: unsupported operation")
	require.ErrorIs(t, err, errors.ErrUnsupported)

	_, errs := kicker.New[Args](&kicker.Target{Broker: b, Name: "t"}).KiqMany(context.Background(), []Args{{N: 1}})
	require.Error(t, errs[0])
	require.Equal(t, 1, strings.Count(errs[0].Error(), "kiq: kick t:"), errs[0].Error())
}

// slowFirstSend is an in-memory broker whose first bulk send waits until
// the second chunk's first send hook ran (for up to ten seconds), and that
// logs when each bulk send starts and ends and when the first send hook of
// each chunk ran.
type slowFirstSend struct {
	*broker.InMemory
	ahead chan struct{} // closed by the second chunk's first send hook
	mu    sync.Mutex
	log   []string
	sends int
}

func (s *slowFirstSend) record(event string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, event)
}

func (s *slowFirstSend) KickMany(ctx context.Context, msgs []*broker.Message) []error {
	s.mu.Lock()
	s.sends++
	first := s.sends == 1
	s.mu.Unlock()
	s.record(fmt.Sprintf("send %d", len(msgs)))
	if first {
		select {
		case <-s.ahead:
		case <-time.After(10 * time.Second):
			s.record("the next chunk was not built meanwhile")
		}
	}
	errs := make([]error, len(msgs))
	for i, m := range msgs {
		errs[i] = s.Kick(ctx, m)
	}
	s.record("sent")
	return errs
}

// hook logs the send hook of the first message of each chunk, and fails
// the messages whose N is in fail.
type hook struct {
	middleware.Base
	b    *slowFirstSend
	fail map[int]bool
}

func (h hook) PreSend(_ context.Context, m *broker.Message) error {
	var a Args
	if err := broker.Msgpack.DecodeArgs(m.Args, &a); err != nil {
		return err
	}
	if a.N%kicker.ManyChunk == 0 {
		h.b.record(fmt.Sprintf("hook %d", a.N))
	}
	if a.N == kicker.ManyChunk {
		close(h.b.ahead)
	}
	if h.fail[a.N] {
		return fmt.Errorf("refused %d", a.N)
	}
	return nil
}

// A KiqMany of more than one chunk queues its tasks in the order of its
// arguments, though the next chunk is built and its hooks run while the
// chunk before is sent; each error and handle is at its task's place.
func TestKiqManyChunksAreSentInOrderAndBuiltAhead(t *testing.T) {
	b := &slowFirstSend{InMemory: broker.NewInMemory(), ahead: make(chan struct{})}
	n := 2*kicker.ManyChunk + 7
	fail := map[int]bool{0: true, kicker.ManyChunk - 1: true, kicker.ManyChunk: true, n - 1: true}
	b.WithMiddlewares(hook{b: b, fail: fail})
	args := make([]Args, n)
	for i := range args {
		args[i] = Args{N: i}
	}
	k := kicker.New[Args](&kicker.Target{Broker: b, Name: "t"}).WithTaskID("job")
	handles, errs := k.KiqMany(context.Background(), args)
	for i := range n {
		if fail[i] {
			require.ErrorContains(t, errs[i], fmt.Sprintf("kiq: kick t: refused %d", i))
			require.Nil(t, handles[i])
			continue
		}
		require.NoError(t, errs[i])
		require.Equal(t, fmt.Sprintf("job-%d", i), handles[i].TaskID())
	}
	// The two first chunks are built at once; the third once the first
	// was sent. The sends go one after the other.
	sends := slices.DeleteFunc(slices.Clone(b.log), func(e string) bool { return strings.HasPrefix(e, "hook ") })
	require.Equal(t, []string{fmt.Sprintf("send %d", kicker.ManyChunk-2), "sent", fmt.Sprintf("send %d", kicker.ManyChunk-1), "sent", "send 6", "sent"}, sends)
	firstSent := slices.Index(b.log, "sent")
	require.Less(t, slices.Index(b.log, fmt.Sprintf("hook %d", kicker.ManyChunk)), firstSent, b.log)
	require.Greater(t, slices.Index(b.log, fmt.Sprintf("hook %d", 2*kicker.ManyChunk)), firstSent, b.log)

	ctx := context.Background()
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	var got []int
	for len(got) < n-len(fail) {
		ds, err := c.Fetch(ctx, 1000)
		require.NoError(t, err)
		for _, d := range ds {
			var a Args
			require.NoError(t, broker.Msgpack.DecodeArgs(d.Message.Args, &a))
			got = append(got, a.N)
		}
	}
	require.True(t, slices.IsSorted(got), "queued in the order of the arguments")
}

type panicking struct {
	middleware.Base
	at int
}

func (p panicking) PreSend(_ context.Context, m *broker.Message) error {
	var a Args
	if err := broker.Msgpack.DecodeArgs(m.Args, &a); err == nil && a.N == p.at {
		panic("hook panicked")
	}
	return nil
}

// A send hook's panic in a later chunk, built on a goroutine of KiqMany's,
// reaches KiqMany's caller, as it does in the first; no goroutine is left.
func TestKiqManyPanicsInAChunkReachTheCaller(t *testing.T) {
	for _, at := range []int{1, kicker.ManyChunk + 1} {
		b := broker.NewInMemory()
		b.WithMiddlewares(panicking{at: at})
		args := make([]Args, 2*kicker.ManyChunk)
		for i := range args {
			args[i] = Args{N: i}
		}
		k := kicker.New[Args](&kicker.Target{Broker: b, Name: "t"})
		require.PanicsWithValue(t, "hook panicked", func() { k.KiqMany(context.Background(), args) }, "at %d", at)
	}
}
