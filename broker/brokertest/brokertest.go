// Package brokertest is the conformance suite every Kiq broker passes: the
// in-memory and the Redis list broker run it in their tests, and a broker of
// your own can too:
//
//	func TestConformance(t *testing.T) {
//		brokertest.Run(t, brokertest.Harness{New: newMyBroker, PushRaw: pushRaw})
//	}
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/stretchr/testify/require"
)

// Harness makes brokers for the suite.
type Harness struct {
	// New returns an empty broker of its own (its own key prefix, say),
	// cleaned up when the test ends. Its default queue must be
	// broker.DefaultQueue.
	New func(t *testing.T) broker.Broker
	// PushRaw puts raw bytes on queue as if a message had been kicked with
	// them, to test undecodable input. Nil skips that test.
	PushRaw func(t *testing.T, b broker.Broker, queue string, raw []byte)
}

const wait = 5 * time.Second

func msg(name string, labels broker.Labels) *broker.Message {
	return &broker.Message{TaskID: broker.NewTaskID(), TaskName: name, Labels: labels, Args: []byte{0x80}}
}

func consume(t *testing.T, b broker.Broker, queues ...string) broker.Consumer {
	t.Helper()
	c, err := b.Consume(context.Background(), broker.ConsumeOptions{Queues: queues})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func fetch(t *testing.T, c broker.Consumer, limit int) []*broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ds, err := c.Fetch(ctx, limit)
	require.NoError(t, err)
	return ds
}

// fetchNone checks that nothing is delivered within d.
func fetchNone(t *testing.T, c broker.Consumer, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ds, err := c.Fetch(ctx, 10)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, ds)
}

// Run runs the suite against the brokers h makes.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()

	t.Run("round trip keeps everything", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("t", broker.Labels{"user": "x", broker.LabelMaxRetries: int64(3)})
		m.Args = []byte{0x81, 0xa1, 'a', 0x01}
		require.NoError(t, b.Kick(ctx, m))
		c := consume(t, b)
		ds := fetch(t, c, 10)
		require.Len(t, ds, 1)
		d := ds[0]
		require.NoError(t, d.Err)
		require.Equal(t, m.TaskID, d.ID)
		require.Equal(t, broker.DefaultQueue, d.Queue)
		require.Equal(t, m.TaskID, d.Message.TaskID)
		require.Equal(t, "t", d.Message.TaskName)
		require.Equal(t, []byte(m.Args), []byte(d.Message.Args))
		require.Equal(t, "x", d.Message.Labels["user"])
		n, _ := d.Message.Labels.Int(broker.LabelMaxRetries)
		require.Equal(t, int64(3), n)
		require.NoError(t, c.Ack(ctx, d))
		fetchNone(t, c, 100*time.Millisecond)
		require.NoError(t, c.Close(ctx))
		fetchNone(t, consume(t, b), 100*time.Millisecond) // acknowledged: gone for good
	})

	t.Run("FIFO", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		var ids []string
		for i := range 20 {
			m := msg(fmt.Sprint("t", i), nil)
			ids = append(ids, m.TaskID)
			require.NoError(t, b.Kick(ctx, m))
		}
		c := consume(t, b)
		var got []string
		for len(got) < 20 {
			for _, d := range fetch(t, c, 3) {
				got = append(got, d.ID)
				require.NoError(t, c.Ack(ctx, d))
			}
		}
		require.Equal(t, ids, got)
	})

	t.Run("fetch returns at most max and blocks until work arrives", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		for range 5 {
			require.NoError(t, b.Kick(ctx, msg("t", nil)))
		}
		c := consume(t, b)
		require.Len(t, fetch(t, c, 3), 3)
		require.Len(t, fetch(t, c, 3), 2)
		m := msg("late", nil)
		go func() {
			time.Sleep(100 * time.Millisecond)
			_ = b.Kick(ctx, m)
		}()
		start := time.Now()
		ds := fetch(t, c, 3)
		require.Len(t, ds, 1)
		require.Equal(t, m.TaskID, ds[0].ID)
		require.GreaterOrEqual(t, time.Since(start), 90*time.Millisecond)
	})

	t.Run("fetch ends when its context does", func(t *testing.T) {
		t.Parallel()
		c := consume(t, h.New(t))
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Fetch(cctx, 1)
			errc <- err
		}()
		time.Sleep(50 * time.Millisecond)
		cancel()
		select {
		case err := <-errc:
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(500 * time.Millisecond):
			t.Fatal("Fetch did not return promptly after its context was cancelled")
		}
	})

	t.Run("a task kicked as a fetch gives up is not lost", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		c1 := consume(t, b)
		for range 20 {
			cctx, cancel := context.WithCancel(ctx)
			type result struct {
				ds  []*broker.Delivery
				err error
			}
			got := make(chan result, 1)
			go func() {
				ds, err := c1.Fetch(cctx, 1)
				got <- result{ds, err}
			}()
			time.Sleep(2 * time.Millisecond)
			m := msg("t", nil)
			cancel()
			require.NoError(t, b.Kick(ctx, m))
			r := <-got
			if r.err != nil {
				require.ErrorIs(t, r.err, context.Canceled)
			}
			ds := r.ds
			if len(ds) == 0 { // the cancelled Fetch did not return it: it is still there
				ds = fetch(t, c1, 1)
			}
			require.Equal(t, m.TaskID, ds[0].ID)
			require.NoError(t, c1.Ack(ctx, ds...))
		}
	})

	t.Run("kick with an ended context sends nothing", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		require.ErrorIs(t, b.Kick(cctx, msg("t", nil)), context.Canceled)
		c := consume(t, b)
		fetchNone(t, c, 100*time.Millisecond)
		m := msg("t", nil)
		require.NoError(t, b.Kick(ctx, m), "the broker still kicks")
		ds := fetch(t, c, 10)
		require.Len(t, ds, 1, "only the live kick was delivered")
		require.Equal(t, m.TaskID, ds[0].ID)
	})

	t.Run("a message without a task id is refused", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("t", nil)
		m.TaskID = ""
		require.ErrorContains(t, b.Kick(ctx, m), "empty task id")
		fetchNone(t, consume(t, b), 100*time.Millisecond)
	})

	t.Run("a task id that exists is refused until its task is acknowledged", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("first", nil)
		require.NoError(t, b.Kick(ctx, m))
		dup := msg("dup", nil)
		dup.TaskID = m.TaskID
		require.ErrorIs(t, b.Kick(ctx, dup), broker.ErrTaskExists, "pending")
		c := consume(t, b)
		ds := fetch(t, c, 10)
		require.Len(t, ds, 1, "delivered once")
		require.Equal(t, m.TaskID, ds[0].ID)
		require.Equal(t, "first", ds[0].Message.TaskName, "the first kick's message")
		fetchNone(t, c, 100*time.Millisecond)
		require.NoError(t, c.Ack(ctx, ds...))
		again := msg("again", nil)
		again.TaskID = m.TaskID
		require.NoError(t, b.Kick(ctx, again), "acknowledged: the id is free")
		ds = fetch(t, c, 10)
		require.Len(t, ds, 1)
		require.Equal(t, m.TaskID, ds[0].ID)
		require.Equal(t, "again", ds[0].Message.TaskName)
		require.NoError(t, c.Ack(ctx, ds...))
	})

	t.Run("close ends a blocked fetch; fetch after close fails", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		c, err := b.Consume(ctx, broker.ConsumeOptions{})
		require.NoError(t, err)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Fetch(ctx, 1)
			errc <- err
		}()
		time.Sleep(50 * time.Millisecond)
		require.NoError(t, c.Close(ctx))
		select {
		case err := <-errc:
			require.ErrorIs(t, err, broker.ErrConsumerClosed)
		case <-time.After(2 * time.Second):
			t.Fatal("Fetch did not return after Close")
		}
		_, err = c.Fetch(ctx, 1)
		require.ErrorIs(t, err, broker.ErrConsumerClosed)
		require.NoError(t, c.Close(ctx), "closing twice is harmless")
		m := msg("t", nil)
		require.NoError(t, b.Kick(ctx, m))
		require.Equal(t, m.TaskID, fetch(t, consume(t, b), 1)[0].ID, "the closed consumer took nothing")
	})

	t.Run("two consumers never share a delivery", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		const n = 500
		for range n {
			require.NoError(t, b.Kick(ctx, msg("t", nil)))
		}
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for range 4 {
			c := consume(t, b)
			wg.Go(func() {
				for {
					cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
					ds, err := c.Fetch(cctx, 7)
					cancel()
					if errors.Is(err, context.DeadlineExceeded) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, d := range ds {
						seen[d.ID]++
					}
					mu.Unlock()
					if err := c.Ack(ctx, ds...); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		require.Len(t, seen, n)
		for id, k := range seen {
			require.Equal(t, 1, k, id)
		}
	})

	t.Run("hand-back puts deliveries at the head, in order", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		var ids []string
		for i := range 4 {
			m := msg(fmt.Sprint("t", i), nil)
			ids = append(ids, m.TaskID)
			require.NoError(t, b.Kick(ctx, m))
		}
		c := consume(t, b)
		ds := fetch(t, c, 2)
		require.Equal(t, ids[:2], []string{ds[0].ID, ds[1].ID})
		require.NoError(t, c.HandBack(ctx, ds...))
		var got []string
		for len(got) < 4 {
			for _, d := range fetch(t, c, 4) {
				got = append(got, d.ID)
			}
		}
		require.Equal(t, ids, got)
	})

	t.Run("close hands back what the consumer held", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("t", nil)
		require.NoError(t, b.Kick(ctx, m))
		c1, err := b.Consume(ctx, broker.ConsumeOptions{})
		require.NoError(t, err)
		require.Len(t, fetch(t, c1, 1), 1)
		require.NoError(t, c1.Close(ctx))
		ds := fetch(t, consume(t, b), 1)
		require.Len(t, ds, 1)
		require.Equal(t, m.TaskID, ds[0].ID)
	})

	t.Run("retry without delay goes to the tail", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		first, second := msg("first", nil), msg("second", nil)
		require.NoError(t, b.Kick(ctx, first))
		require.NoError(t, b.Kick(ctx, second))
		c := consume(t, b)
		d := fetch(t, c, 1)[0]
		require.Equal(t, first.TaskID, d.ID)
		next := *d.Message
		next.Attempt++
		require.NoError(t, c.Retry(ctx, d, &next, 0))
		require.Equal(t, second.TaskID, fetch(t, c, 1)[0].ID)
		again := fetch(t, c, 1)[0]
		require.Equal(t, first.TaskID, again.ID)
		require.Equal(t, 1, again.Message.Attempt)
	})

	t.Run("retry waits for its delay and raises the attempt", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("t", nil)
		require.NoError(t, b.Kick(ctx, m))
		c := consume(t, b)
		d := fetch(t, c, 1)[0]
		next := *d.Message
		next.Attempt++
		start := time.Now()
		require.NoError(t, c.Retry(ctx, d, &next, 300*time.Millisecond))
		fetchNone(t, c, 150*time.Millisecond)
		ds := fetch(t, c, 1)
		require.GreaterOrEqual(t, time.Since(start), 290*time.Millisecond, "not before the delay")
		require.Less(t, time.Since(start), 2*time.Second, "soon after it")
		require.Equal(t, m.TaskID, ds[0].ID, "the same task")
		require.Equal(t, 1, ds[0].Message.Attempt)
	})

	t.Run("the delay label is honoured", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		start := time.Now()
		require.NoError(t, b.Kick(ctx, msg("later", broker.Labels{broker.LabelDelay: 0.3})))
		require.NoError(t, b.Kick(ctx, msg("now", nil)))
		c := consume(t, b)
		first := fetch(t, c, 10)
		require.Len(t, first, 1)
		require.Equal(t, "now", first[0].Message.TaskName)
		second := fetch(t, c, 10)
		require.Equal(t, "later", second[0].Message.TaskName)
		require.GreaterOrEqual(t, time.Since(start), 290*time.Millisecond)
	})

	t.Run("dead letter keeps the reason and the message", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("doomed", nil)
		m.Attempt = 2
		require.NoError(t, b.Kick(ctx, m))
		c := consume(t, b)
		d := fetch(t, c, 1)[0]
		require.NoError(t, c.DeadLetter(ctx, d, "it failed"))
		fetchNone(t, c, 100*time.Millisecond)
		dls := deadLetters(t, b, broker.DefaultQueue)
		require.Len(t, dls, 1)
		require.Equal(t, m.TaskID, dls[0].TaskID)
		require.Equal(t, "doomed", dls[0].TaskName)
		require.Equal(t, "it failed", dls[0].Reason)
		require.Equal(t, 2, dls[0].Attempt)
		require.Equal(t, d.Raw, dls[0].Raw)
	})

	if h.PushRaw != nil {
		t.Run("undecodable input is a delivery with an error", func(t *testing.T) {
			t.Parallel()
			b := h.New(t)
			h.PushRaw(t, b, broker.DefaultQueue, []byte("not msgpack at all"))
			ds := fetch(t, consume(t, b), 1)
			require.Len(t, ds, 1)
			require.Nil(t, ds[0].Message)
			require.ErrorIs(t, ds[0].Err, broker.ErrMalformed)
			require.Equal(t, []byte("not msgpack at all"), ds[0].Raw)
		})
	}

	t.Run("queue label routes to that queue only", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		require.NoError(t, b.Kick(ctx, msg("mail", broker.Labels{broker.LabelQueue: "emails"})))
		fetchNone(t, consume(t, b), 100*time.Millisecond)
		ds := fetch(t, consume(t, b, "emails"), 10)
		require.Len(t, ds, 1)
		require.Equal(t, "emails", ds[0].Queue)
		require.Equal(t, "mail", ds[0].Message.TaskName)
	})

	t.Run("consuming several queues", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		c := consume(t, b, "a", "b")
		require.NoError(t, b.Kick(ctx, msg("to-b", broker.Labels{broker.LabelQueue: "b"})))
		ds := fetch(t, c, 10)
		require.Len(t, ds, 1)
		require.Equal(t, "b", ds[0].Queue)
		require.NoError(t, c.Ack(ctx, ds...))
	})

	t.Run("a lock the broker cannot take with the enqueue is refused", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		m := msg("t", nil)
		m.Lock = &broker.Lock{Key: "k", TTL: time.Second} // no client: nothing can take it
		if lb, ok := b.(broker.LockingBroker); ok {
			require.False(t, lb.LocksAtomically(m.Lock.Client))
		}
		require.ErrorIs(t, b.Kick(ctx, m), broker.ErrLockUnsupported)
		fetchNone(t, consume(t, b), 100*time.Millisecond)
	})

	t.Run("stats count tasks by state", func(t *testing.T) {
		t.Parallel()
		b := h.New(t)
		in, ok := b.(broker.Inspector)
		if !ok {
			t.Skipf("%T is not a broker.Inspector", b)
		}
		for _, l := range []broker.Labels{nil, nil, nil, {broker.LabelDelay: 60}} {
			require.NoError(t, b.Kick(ctx, msg("t", l)))
		}
		c := consume(t, b)
		ds := fetch(t, c, 2)
		require.Len(t, ds, 2)
		require.NoError(t, c.DeadLetter(ctx, ds[0], "x"))
		s, err := in.Stats(ctx, broker.DefaultQueue)
		require.NoError(t, err)
		require.Equal(t, broker.QueueStats{Queue: broker.DefaultQueue, Pending: 1, InFlight: 1, Scheduled: 1, Dead: 1, Consumers: 1}, s)
		dls, err := in.DeadLetters(ctx, broker.DefaultQueue, 0, 0)
		require.NoError(t, err)
		require.Empty(t, dls, "limit 0")
		dls, err = in.DeadLetters(ctx, broker.DefaultQueue, 1, 10)
		require.NoError(t, err)
		require.Empty(t, dls, "past the end")
	})
}

// deadLetters reads a queue's dead letters through broker.Inspector.
func deadLetters(t *testing.T, b broker.Broker, queue string) []broker.DeadLetter {
	t.Helper()
	in, ok := b.(broker.Inspector)
	if !ok {
		t.Fatalf("brokertest: %T is not a broker.Inspector, which the dead-letter test needs", b)
	}
	dls, err := in.DeadLetters(context.Background(), queue, 0, 100)
	require.NoError(t, err)
	return dls
}
