package embedredis

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestKeysExpireInRealTime(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, err := Start()
	require.NoError(t, err)
	defer s.Close()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "k", "v", 50*time.Millisecond).Err())
	require.Equal(t, int64(1), c.Exists(ctx, "k").Val())
	require.Eventually(t, func() bool { return c.Exists(ctx, "k").Val() == 0 }, time.Second, 5*time.Millisecond,
		"expired without anyone fast-forwarding")
	require.NoError(t, c.Close())
	s.Close()
	s.Close() // twice is fine
}
