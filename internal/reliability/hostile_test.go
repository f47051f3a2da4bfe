package reliability_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/stretchr/testify/require"
)

// Thousands of malformed messages mixed with good ones: every good task
// runs, every bad one lands in the dead-letter list with its reason, and
// the worker never stops.
func TestMalformedSoak(t *testing.T) {
	srv := redistest.Start(t)
	good, bad := 1000, 2000
	if soak() {
		good, bad = 20000, 40000
	}
	const limit = 64 << 10
	b, err := broker.NewListQueue(srv.URL(), broker.WithMaxMessageSize(limit), broker.WithDeadLetterLimit(100000))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	var ran atomic.Int64
	tk := task.Define(b, "good", func(ctx context.Context, a RecordArgs) error { ran.Add(1); return nil })
	ctx := context.Background()
	client := b.Client()

	goodMsg, err := tk.Kicker().Message(RecordArgs{N: 1})
	require.NoError(t, err)
	encoded, err := b.Formatter().EncodeMessage(goodMsg)
	require.NoError(t, err)
	wrongArgs, _ := b.Formatter().EncodeArgs(map[string]any{"n": "not a number"})
	kinds := []func(i int) []byte{
		func(i int) []byte { // garbage bytes
			g := make([]byte, 1+rand.IntN(64))
			for j := range g {
				g[j] = byte(rand.IntN(256))
			}
			return g
		},
		func(i int) []byte { return encoded[:1+rand.IntN(len(encoded)-1)] }, // truncated msgpack
		func(i int) []byte { return []byte{0xdd, 0x7f, 0xff, 0xff, 0xff} },  // huge declared length
		func(i int) []byte { // wrong argument types
			m := *goodMsg
			m.TaskID, m.Args = fmt.Sprint("wrong-", i), wrongArgs
			raw, _ := b.Formatter().EncodeMessage(&m)
			return raw
		},
		func(i int) []byte { // an unknown task
			m := *goodMsg
			m.TaskID, m.TaskName = fmt.Sprint("unknown-", i), "nobody"
			raw, _ := b.Formatter().EncodeMessage(&m)
			return raw
		},
		func(i int) []byte { return bytes.Repeat([]byte{0x90}, limit+1) }, // over the size limit
	}
	// Interleave: bad ones pushed straight into Redis, good ones kicked.
	pending, msgs := "kiq:{taskiq}:pending", "kiq:{taskiq}:msg"
	for i := range bad {
		id := fmt.Sprint("bad-", i)
		require.NoError(t, client.HSet(ctx, msgs, id, kinds[i%len(kinds)](i)).Err())
		require.NoError(t, client.LPush(ctx, pending, id).Err())
		if i%2 == 0 && i/2 < good {
			_, err := tk.Kiq(ctx, RecordArgs{N: i})
			require.NoError(t, err)
		}
	}
	for i := bad / 2; i < good; i++ {
		_, err := tk.Kiq(ctx, RecordArgs{N: i})
		require.NoError(t, err)
	}
	_, err = tk.Kiq(ctx, RecordArgs{N: 1})
	require.NoError(t, err)
	// Kick refuses what a consumer would refuse.
	huge := strings.Repeat("x", limit)
	_, err = task.Define(b, "huge", func(context.Context, string) error { return nil }).Kiq(ctx, huge)
	require.ErrorIs(t, err, broker.ErrMessageTooLarge)

	w := worker.New(b, worker.Options{Concurrency: 16, Logger: slog.New(slog.DiscardHandler)})
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	require.Eventually(t, func() bool {
		s, err := b.Stats(ctx, broker.DefaultQueue)
		return err == nil && s.Pending == 0 && s.InFlight == 0 && s.Dead == int64(bad)
	}, 60*time.Second, 50*time.Millisecond)
	cancel()
	require.NoError(t, <-done, "the worker never stopped")
	require.Equal(t, int64(good+1), ran.Load(), "every good task ran")

	reasons := map[string]int{}
	dls, err := b.DeadLetters(ctx, broker.DefaultQueue, 0, bad)
	require.NoError(t, err)
	for _, dl := range dls {
		require.NotEmpty(t, dl.Reason)
		require.NotEmpty(t, dl.Raw)
		switch {
		case strings.HasPrefix(dl.Reason, "undecodable message"):
			reasons["undecodable"]++
		case strings.HasPrefix(dl.Reason, "unknown task"):
			reasons["unknown"]++
		case strings.HasPrefix(dl.Reason, "bad arguments"):
			reasons["bad arguments"]++
		default:
			t.Fatalf("unexpected reason %q", dl.Reason)
		}
	}
	t.Logf("dead letters by reason: %v", reasons)
	require.Equal(t, bad/len(kinds), reasons["unknown"])
	require.Equal(t, bad/len(kinds), reasons["bad arguments"])
}
