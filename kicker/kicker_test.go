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
	"go.uber.org/goleak"
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

// WithDelay, WithETA and a delay label in WithLabels set the same thing:
// the last one called wins, whatever the order.
func TestDelayAndETALastCallWins(t *testing.T) {
	k := kicker.New[Args](&kicker.Target{Broker: broker.NewInMemory(), Name: "t", Labels: broker.Labels{broker.LabelDelay: 7}})
	eta := time.Now().Add(time.Hour)
	delayOf := func(k *kicker.Kicker[Args]) time.Duration {
		t.Helper()
		m, err := k.Message(Args{})
		require.NoError(t, err)
		d, ok := m.Labels.Duration(broker.LabelDelay)
		require.True(t, ok)
		return d
	}
	require.Equal(t, 2*time.Second, delayOf(k.WithETA(eta).WithDelay(2*time.Second)), "WithDelay after WithETA")
	require.InDelta(t, time.Hour, delayOf(k.WithDelay(2*time.Second).WithETA(eta)), float64(time.Second), "WithETA after WithDelay")
	require.Equal(t, 3*time.Second, delayOf(k.WithETA(eta).WithLabels(broker.Labels{broker.LabelDelay: 3})), "a delay label after WithETA")
	require.InDelta(t, time.Hour, delayOf(k.WithETA(eta).WithLabels(broker.Labels{"queue": "q"})), float64(time.Second), "other labels leave the ETA")
	require.Zero(t, delayOf(k.WithDelay(2*time.Second).WithETA(time.Time{})), "the zero time is in the past: now")
	require.Equal(t, 7*time.Second, delayOf(k), "the task-level delay without either")

	// The kickers they were made from are unchanged.
	base := k.WithDelay(2 * time.Second)
	_ = base.WithETA(eta)
	require.Equal(t, 2*time.Second, delayOf(base))
}

// With WithTaskID, KiqMany sends one task under the id as given, and
// several under id-0, id-1, ... in the order of the arguments.
func TestKiqManyTaskIDs(t *testing.T) {
	k := kicker.New[Args](&kicker.Target{Broker: broker.NewInMemory(), Name: "t"}).WithTaskID("job")
	handles, errs := k.KiqMany(context.Background(), []Args{{N: 1}})
	require.NoError(t, errs[0])
	require.Equal(t, "job", handles[0].TaskID())
	handles, errs = k.KiqMany(context.Background(), []Args{{N: 1}, {N: 2}, {N: 3}})
	for i, h := range handles {
		require.NoError(t, errs[i])
		require.Equal(t, fmt.Sprintf("job-%d", i), h.TaskID())
	}
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

// recording counts the send hooks that ran.
type recording struct {
	middleware.Base
	mu       sync.Mutex
	preSends int
}

func (r *recording) PreSend(context.Context, *broker.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.preSends++
	return nil
}

// A Kiq whose context has already ended sends nothing and runs no send
// hook (a deduplication lock, say, is not taken); its error wraps ctx's.
func TestKiqWithAnEndedContextRunsNoHook(t *testing.T) {
	b := broker.NewInMemory()
	mw := &recording{}
	b.WithMiddlewares(mw)
	k := kicker.New[Args](&kicker.Target{Broker: b, Name: "t"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h, err := k.Kiq(ctx, Args{N: 1})
	require.ErrorIs(t, err, context.Canceled)
	require.EqualError(t, err, "kiq: kick t: context canceled")
	require.Nil(t, h)
	require.Zero(t, mw.preSends, "no send hook ran")
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.Pending, "nothing was sent")

	_, errs := k.KiqMany(ctx, []Args{{N: 3}, {N: 4}})
	for _, err := range errs {
		require.EqualError(t, err, "kiq: kick t: context canceled")
	}
	require.Zero(t, mw.preSends, "KiqMany runs no send hook either")

	_, err = k.Kiq(context.Background(), Args{N: 2})
	require.NoError(t, err)
	require.Equal(t, 1, mw.preSends, "a live context runs the hooks")
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

// hook logs the send hooks of the first and last message of each chunk,
// and fails the messages for which fail is true.
type hook struct {
	middleware.Base
	b    *slowFirstSend
	fail func(n int) bool
}

func (h hook) PreSend(_ context.Context, m *broker.Message) error {
	var a Args
	if err := broker.Msgpack.DecodeArgs(m.Args, &a); err != nil {
		return err
	}
	switch a.N % kicker.ManyChunk {
	case 0:
		h.b.record(fmt.Sprintf("hook %d", a.N))
	case kicker.ManyChunk - 1:
		h.b.record(fmt.Sprintf("last hook %d", a.N))
	}
	if a.N == kicker.ManyChunk {
		close(h.b.ahead)
	}
	if h.fail(a.N) {
		return fmt.Errorf("refused %d", a.N)
	}
	return nil
}

// kiqMany kicks Args{0} to Args{n-1} to b in one KiqMany, under task ids
// job-0 to job-(n-1).
func kiqMany(ctx context.Context, b broker.Broker, n int) ([]*kicker.Handle, []error) {
	args := make([]Args, n)
	for i := range args {
		args[i] = Args{N: i}
	}
	return kicker.New[Args](&kicker.Target{Broker: b, Name: "t"}).WithTaskID("job").KiqMany(ctx, args)
}

// queued returns the N of every task pending on b, in the order they come.
func queued(t *testing.T, b *slowFirstSend) []int {
	ctx := context.Background()
	s, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	c, err := b.Consume(ctx, broker.ConsumeOptions{})
	require.NoError(t, err)
	defer c.Close(ctx)
	var got []int
	for int64(len(got)) < s.Pending {
		ds, err := c.Fetch(ctx, 1000)
		require.NoError(t, err)
		for _, d := range ds {
			var a Args
			require.NoError(t, broker.Msgpack.DecodeArgs(d.Message.Args, &a))
			got = append(got, a.N)
		}
	}
	return got
}

// A KiqMany of more than one chunk queues its tasks in the order of its
// arguments, though the next chunk is built and its hooks run while the
// chunk before is sent; the hooks of one chunk run after the chunk
// before's; each error and handle is at its task's place.
func TestKiqManyChunksAreSentInOrderAndBuiltAhead(t *testing.T) {
	b := &slowFirstSend{InMemory: broker.NewInMemory(), ahead: make(chan struct{})}
	n := 2*kicker.ManyChunk + 7
	fail := map[int]bool{0: true, kicker.ManyChunk - 1: true, kicker.ManyChunk: true, n - 1: true}
	b.WithMiddlewares(hook{b: b, fail: func(n int) bool { return fail[n] }})
	handles, errs := kiqMany(context.Background(), b, n)
	for i := range n {
		if fail[i] {
			require.ErrorContains(t, errs[i], fmt.Sprintf("kiq: kick t: refused %d", i))
			require.Nil(t, handles[i])
			continue
		}
		require.NoError(t, errs[i])
		require.Equal(t, fmt.Sprintf("job-%d", i), handles[i].TaskID())
	}
	sends := slices.DeleteFunc(slices.Clone(b.log), func(e string) bool { return strings.Contains(e, "hook ") })
	require.Equal(t, []string{fmt.Sprintf("send %d", kicker.ManyChunk-2), "sent", fmt.Sprintf("send %d", kicker.ManyChunk-1), "sent", "send 6", "sent"}, sends, "one send after the other")
	before := func(first, then string) {
		t.Helper()
		i, j := slices.Index(b.log, first), slices.Index(b.log, then)
		require.True(t, i >= 0 && j >= 0 && i < j, "%q before %q: %v", first, then, b.log)
	}
	before(fmt.Sprintf("last hook %d", kicker.ManyChunk-1), fmt.Sprintf("hook %d", kicker.ManyChunk)) // a chunk's hooks after the chunk before's
	before(fmt.Sprintf("hook %d", kicker.ManyChunk), "sent")                                          // built while the first is sent
	before(fmt.Sprintf("last hook %d", 2*kicker.ManyChunk-1), fmt.Sprintf("hook %d", 2*kicker.ManyChunk))
	before("sent", fmt.Sprintf("hook %d", 2*kicker.ManyChunk)) // two chunks at most under way
	got := queued(t, b)
	require.Len(t, got, n-len(fail))
	require.True(t, slices.IsSorted(got), "queued in the order of the arguments")
}

// A chunk none of whose tasks passed its send hooks sends nothing, and
// the chunks after it are sent all the same.
func TestKiqManyAfterAChunkThatSentNothing(t *testing.T) {
	b := &slowFirstSend{InMemory: broker.NewInMemory(), ahead: make(chan struct{})}
	n := 3 * kicker.ManyChunk
	b.WithMiddlewares(hook{b: b, fail: func(n int) bool { return n < kicker.ManyChunk }})
	handles, errs := kiqMany(context.Background(), b, n)
	for i := range n {
		require.Equal(t, i < kicker.ManyChunk, errs[i] != nil, i)
		require.Equal(t, i < kicker.ManyChunk, handles[i] == nil, i)
	}
	got := queued(t, b)
	require.Len(t, got, 2*kicker.ManyChunk)
	require.True(t, slices.IsSorted(got))
}

// cancelling cancels its context in the send hook of the task at.
type cancelling struct {
	middleware.Base
	at     int
	cancel context.CancelFunc
	mu     sync.Mutex
	last   int // the highest N whose hook ran
}

func (c *cancelling) PreSend(_ context.Context, m *broker.Message) error {
	var a Args
	if err := broker.Msgpack.DecodeArgs(m.Args, &a); err != nil {
		return err
	}
	c.mu.Lock()
	c.last = max(c.last, a.N)
	c.mu.Unlock()
	if a.N == c.at {
		c.cancel()
	}
	return nil
}

// Once the context of a KiqMany ends, the chunks not started yet are not
// built: their tasks get its error, and no hook runs for them.
func TestKiqManyStopsBuildingChunksWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := broker.NewInMemory()
	mw := &cancelling{at: kicker.ManyChunk + 5, cancel: cancel}
	b.WithMiddlewares(mw)
	n := 4 * kicker.ManyChunk
	handles, errs := kiqMany(ctx, b, n)
	for i := 2 * kicker.ManyChunk; i < n; i++ {
		require.ErrorIs(t, errs[i], context.Canceled, i)
		require.Nil(t, handles[i])
	}
	require.Less(t, mw.last, 2*kicker.ManyChunk, "no hook ran for the chunks after the one that saw the end")
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

// A send hook's panic in any chunk reaches KiqMany's caller, with its own
// value, once the chunks under way are done; the chunks before it were
// sent, none after it is, and no goroutine is left.
func TestKiqManyPanicsInAChunkReachTheCaller(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, c := range []int{0, 1, 2} {
		b := broker.NewInMemory()
		b.WithMiddlewares(panicking{at: c*kicker.ManyChunk + 1})
		require.PanicsWithValue(t, "hook panicked", func() { kiqMany(context.Background(), b, 3*kicker.ManyChunk) }, "chunk %d", c)
		s, err := b.Stats(context.Background(), broker.DefaultQueue)
		require.NoError(t, err)
		require.Equal(t, int64(c*kicker.ManyChunk), s.Pending, "chunk %d", c)
	}
}
