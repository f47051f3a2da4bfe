package dedup_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/pyjson"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
)

// BenchmarkKiq measures a deduplicated Kiq on the Redis list broker, locks
// and queue on one Redis (the lock taken in the enqueue script): one caller,
// and as many callers as RunParallel makes (GOMAXPROCS × 16), whose kicks
// are coalesced.
func BenchmarkKiq(b *testing.B) {
	srv := redistest.Shared(b)
	q, err := broker.NewListQueue(srv.URL(), broker.WithKeyPrefix(redistest.Prefix(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer q.Shutdown(context.Background())
	mw, err := dedup.New("", dedup.WithClient(q.Client()), dedup.WithKeyPrefix(redistest.Prefix(b)+":dedup"))
	if err != nil {
		b.Fatal(err)
	}
	q.WithMiddlewares(mw)
	tk := task.Define(q, "bench", func(context.Context, WelcomeArgs) error { return nil })
	ctx := context.Background()
	var n atomic.Int64
	b.Run("callers=1", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := tk.Kiq(ctx, WelcomeArgs{UserID: int(n.Add(1))}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("callers=parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tk.Kiq(ctx, WelcomeArgs{UserID: int(n.Add(1))}); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkFingerprintOfArguments measures a lock key's fingerprint from
// encoded arguments: read straight from the msgpack bytes, as the
// middleware does, and through the generic path it falls back on (decode
// the arguments, then the canonical JSON of the values).
func BenchmarkFingerprintOfArguments(b *testing.B) {
	raw, err := broker.Msgpack.EncodeArgs(map[string]any{"user_id": 42, "locale": "en", "tags": []any{"a", "b"}, "score": 0.5})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("from=bytes", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := pyjson.FingerprintMsgpack("send_welcome_email", raw); !ok {
				b.Fatal("not read from the bytes")
			}
		}
	})
	b.Run("from=decoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := slowFingerprint("send_welcome_email", raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
