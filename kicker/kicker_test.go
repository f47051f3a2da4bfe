package kicker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/kicker"
	"github.com/kiq-go/kiq/middleware"
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
