package kicker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
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
