package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kiq-go/kiq/broker"
)

// errInjected is the error of the calls testBroker fails on purpose.
var errInjected = errors.New("injected failure")

// testBroker wraps a broker so that tests can count its consumers' calls,
// fail them on demand and pause them (asynq's internal/testbroker, for
// consumers).
type testBroker struct {
	broker.Broker

	mu          sync.Mutex
	consumeErrs int           // the next Consume calls that fail
	fetchErrs   int           // the next Fetch calls that fail
	ackErrs     int           // the next Ack calls that fail
	ackGate     chan struct{} // when set, the next Ack call waits for it to close
	ackEntered  chan struct{} // closed when the gated Ack call starts waiting
	onSettle    func(call string)
	calls       map[string]int
	ackSizes    []int // the number of deliveries of each successful Ack call
	held        int   // deliveries fetched and not yet settled
	peak        int   // the most held at once
}

func newTestBroker(b broker.Broker) *testBroker {
	return &testBroker{Broker: b, calls: map[string]int{}}
}

// ResultBackend returns the wrapped broker's result backend, if any.
func (tb *testBroker) ResultBackend() broker.ResultBackend {
	if h, ok := tb.Broker.(broker.ResultHolder); ok {
		return h.ResultBackend()
	}
	return nil
}

func (tb *testBroker) Consume(ctx context.Context, opts broker.ConsumeOptions) (broker.Consumer, error) {
	if tb.call("consume", &tb.consumeErrs) {
		return nil, errInjected
	}
	c, err := tb.Broker.Consume(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &testConsumer{Consumer: c, tb: tb}, nil
}

// gateAck makes the next Ack call wait until release is called; entered is
// closed once that call waits.
func (tb *testBroker) gateAck() (entered <-chan struct{}, release func()) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.ackGate, tb.ackEntered = make(chan struct{}), make(chan struct{})
	gate := tb.ackGate
	return tb.ackEntered, func() { close(gate) }
}

func (tb *testBroker) count(call string) int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.calls[call]
}

func (tb *testBroker) acks() []int {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return slices.Clone(tb.ackSizes)
}

// call counts a call and reports whether it must fail.
func (tb *testBroker) call(name string, fail *int) bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.calls[name]++
	if fail != nil && *fail > 0 {
		*fail--
		return true
	}
	return false
}

// settled records n deliveries leaving the consumer's hands.
func (tb *testBroker) settled(call string, n int) {
	tb.mu.Lock()
	tb.held -= n
	f := tb.onSettle
	tb.mu.Unlock()
	if f != nil {
		f(call)
	}
}

type testConsumer struct {
	broker.Consumer
	tb *testBroker
}

func (c *testConsumer) Fetch(ctx context.Context, limit int) ([]*broker.Delivery, error) {
	if c.tb.call("fetch", &c.tb.fetchErrs) {
		return nil, errInjected
	}
	ds, err := c.Consumer.Fetch(ctx, limit)
	c.tb.mu.Lock()
	c.tb.held += len(ds)
	c.tb.peak = max(c.tb.peak, c.tb.held)
	c.tb.mu.Unlock()
	return ds, err
}

func (c *testConsumer) Ack(ctx context.Context, ds ...*broker.Delivery) error {
	if c.tb.call("ack", &c.tb.ackErrs) {
		return errInjected
	}
	c.tb.mu.Lock()
	gate, entered := c.tb.ackGate, c.tb.ackEntered
	c.tb.ackGate, c.tb.ackEntered = nil, nil
	c.tb.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	if err := c.Consumer.Ack(ctx, ds...); err != nil {
		return err
	}
	c.tb.mu.Lock()
	c.tb.ackSizes = append(c.tb.ackSizes, len(ds))
	c.tb.mu.Unlock()
	c.tb.settled("ack", len(ds))
	return nil
}

func (c *testConsumer) Retry(ctx context.Context, d *broker.Delivery, m *broker.Message, delay time.Duration) error {
	c.tb.call("retry", nil)
	if err := c.Consumer.Retry(ctx, d, m, delay); err != nil {
		return err
	}
	c.tb.settled("retry", 1)
	return nil
}

func (c *testConsumer) DeadLetter(ctx context.Context, d *broker.Delivery, reason string) error {
	c.tb.call("dead-letter", nil)
	if err := c.Consumer.DeadLetter(ctx, d, reason); err != nil {
		return err
	}
	c.tb.settled("dead-letter", 1)
	return nil
}

func (c *testConsumer) HandBack(ctx context.Context, ds ...*broker.Delivery) error {
	c.tb.call("hand-back", nil)
	if err := c.Consumer.HandBack(ctx, ds...); err != nil {
		return err
	}
	c.tb.settled("hand-back", len(ds))
	return nil
}

func (c *testConsumer) Close(ctx context.Context) error {
	c.tb.call("close", nil)
	return c.Consumer.Close(ctx)
}

// logRecorder is a slog.Handler that keeps the messages logged, with their
// call attribute.
type logRecorder struct {
	mu   *sync.Mutex
	msgs *[]string
}

func newLogRecorder() (*slog.Logger, *logRecorder) {
	r := &logRecorder{mu: new(sync.Mutex), msgs: new([]string)}
	return slog.New(r), r
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	line := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "call" {
			line += " call=" + a.Value.String()
		}
		return true
	})
	*r.msgs = append(*r.msgs, line)
	return nil
}

// count returns how many logged lines contain s.
func (r *logRecorder) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range *r.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}
