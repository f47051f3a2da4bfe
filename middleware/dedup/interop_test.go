package dedup_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// pythonWelcomeKey returns the lock key Python's taskiq-deduplication uses
// for send_welcome_email(user_id=42, locale="en") with its default prefix,
// as fingerprint-vectors.json records it.
func pythonWelcomeKey(t *testing.T) string {
	raw, err := os.ReadFile("../../internal/pyjson/testdata/fingerprint-vectors.json")
	require.NoError(t, err)
	var vectors []vector
	require.NoError(t, json.Unmarshal(raw, &vectors))
	for _, v := range vectors {
		if v.Task == "send_welcome_email" && v.Key == "" && v.KeyFields == nil &&
			v.Kwargs["locale"] == "en" && v.Kwargs["user_id"] == float64(42) {
			return v.Want
		}
	}
	t.Fatal("no send_welcome_email(user_id=42, locale=en) vector")
	return ""
}

// pythonLock takes the lock the way a Python producer does: SET key
// <uuid4 hex> NX PX ttl. It reports whether it got it.
func pythonLock(t *testing.T, c *redis.Client, key, taskID string) bool {
	ok, err := c.SetNX(context.Background(), key, taskID, 300*time.Second).Result()
	require.NoError(t, err)
	return ok
}

// Python and Kiq producers share the locks of one Redis, with Python's
// default prefix and key. Kiq's self-healing cannot see a Python task
// (it is on Taskiq's queue, not Kiq's), so sharing needs it off.
func TestLocksSharedWithPythonProducers(t *testing.T) {
	ctx := context.Background()
	// The default prefix: the test has a Redis of its own.
	setup := func(t *testing.T, path string, opts ...dedup.Option) (*broker.ListQueue, *dedup.Middleware, *redis.Client) {
		srv := redistest.Start(t)
		queue := srv.Client(t)
		locks := queue
		if path == "grace" {
			locks = lockDB(t, srv)
		}
		b, err := broker.NewListQueue("", broker.WithClient(queue))
		require.NoError(t, err)
		mw, err := dedup.New("", append([]dedup.Option{dedup.WithClient(locks), dedup.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, mw.Shutdown(ctx)) })
		b.WithMiddlewares(mw)
		require.Equal(t, path == "atomic", b.LocksAtomically(locks))
		return b, mw, locks
	}
	key := pythonWelcomeKey(t)
	require.Equal(t, "taskiq:deduplication:"+welcomeFingerprint, key)
	const pyTask = "5f0c3a8e9b7d4e21a6c4d2b1e8f09a37" // uuid4().hex

	for _, path := range []string{"atomic", "grace"} {
		t.Run(path+": a Python lock is respected with self-healing off", func(t *testing.T) {
			b, mw, locks := setup(t, path, dedup.WithSelfHealing(false))
			require.True(t, pythonLock(t, locks, key, pyTask))
			_, err := welcome(t, b).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			var dup *dedup.DuplicateTaskError
			require.ErrorAs(t, err, &dup)
			require.Equal(t, pyTask, dup.HolderTaskID)
			require.Equal(t, key, dup.Key)
			require.Equal(t, pyTask, locks.Get(ctx, key).Val())
			require.Zero(t, mw.Stats().LocksTakenOver)
		})
		t.Run(path+": a Python lock is respected by default", func(t *testing.T) {
			b, mw, locks := setup(t, path)
			require.True(t, pythonLock(t, locks, key, pyTask))
			_, err := welcome(t, b).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			var dup *dedup.DuplicateTaskError
			require.ErrorAs(t, err, &dup, "a UUIDv4 holder is not Kiq's: never taken for vanished")
			require.Equal(t, pyTask, dup.HolderTaskID)
			require.Equal(t, pyTask, locks.Get(ctx, key).Val())
			require.Zero(t, mw.Stats().LocksTakenOver)
		})
		t.Run(path+": a Kiq lock blocks a Python producer", func(t *testing.T) {
			b, _, locks := setup(t, path)
			h, err := welcome(t, b).Kiq(ctx, WelcomeArgs{UserID: 42, Locale: "en"})
			require.NoError(t, err)
			require.False(t, pythonLock(t, locks, key, pyTask), "Python's SET NX fails")
			require.Equal(t, h.TaskID(), locks.Get(ctx, key).Val(), "and reads Kiq's task id as the holder")
		})
	}
}
