package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/kicker"
	"github.com/stretchr/testify/require"
)

// lifecycle records its Startup and Shutdown hooks in a shared trace.
type lifecycle struct {
	name        string
	trace       *[]string
	startErr    error
	shutdownErr error
	block       chan struct{} // Startup waits for it when set
	entered     chan struct{} // closed when Startup begins, when set
}

func (l *lifecycle) IsMiddleware() bool { return true }

func (l *lifecycle) Startup(ctx context.Context) error {
	*l.trace = append(*l.trace, l.name+".Startup")
	if l.entered != nil {
		close(l.entered)
	}
	if l.block != nil {
		<-l.block
	}
	return l.startErr
}

func (l *lifecycle) Shutdown(ctx context.Context) error {
	*l.trace = append(*l.trace, l.name+".Shutdown")
	return l.shutdownErr
}

func TestStartupRunsInRegistrationOrderAndStopsAtAnError(t *testing.T) {
	var trace []string
	boom := errors.New("boom")
	m1, m2, m3 := &lifecycle{name: "m1", trace: &trace}, &lifecycle{name: "m2", trace: &trace, startErr: boom},
		&lifecycle{name: "m3", trace: &trace}
	b := broker.NewInMemory().WithMiddlewares(m1, m2, m3)
	ctx := context.Background()
	err := b.Startup(ctx)
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, "kiq: middleware *broker_test.lifecycle startup: boom")
	require.Equal(t, []string{"m1.Startup", "m2.Startup"}, trace, "m3 never starts")

	// A failed start is tried again; a successful one only once.
	trace, m2.startErr = nil, nil
	require.NoError(t, b.Startup(ctx))
	require.NoError(t, b.Startup(ctx))
	require.Equal(t, []string{"m1.Startup", "m2.Startup", "m3.Startup"}, trace)
}

func TestShutdownRunsInReverseAndJoinsErrors(t *testing.T) {
	var trace []string
	e1, e3 := errors.New("first"), errors.New("third")
	b := broker.NewInMemory().WithMiddlewares(&lifecycle{name: "m1", trace: &trace, shutdownErr: e1},
		&lifecycle{name: "m2", trace: &trace}, &lifecycle{name: "m3", trace: &trace, shutdownErr: e3})
	err := b.Shutdown(context.Background())
	require.Equal(t, []string{"m3.Shutdown", "m2.Shutdown", "m1.Shutdown"}, trace, "all of them, in reverse")
	require.ErrorIs(t, err, e1)
	require.ErrorIs(t, err, e3)
}

func TestASlowStartupDoesNotBlockKicks(t *testing.T) {
	var trace []string
	slow := &lifecycle{name: "slow", trace: &trace, block: make(chan struct{}), entered: make(chan struct{})}
	b := broker.NewInMemory().WithMiddlewares(slow)
	started := make(chan error, 1)
	go func() { started <- b.Startup(context.Background()) }()
	<-slow.entered

	kicked := make(chan error, 1)
	go func() {
		_, err := kicker.New[struct{}](&kicker.Target{Broker: b, Name: "t"}).Kiq(context.Background(), struct{}{})
		kicked <- err
	}()
	select {
	case err := <-kicked:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("a kick waited for a middleware's Startup hook")
	}
	close(slow.block)
	require.NoError(t, <-started)
}
