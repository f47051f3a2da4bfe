package dedup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// LockInfo describes one deduplication lock.
type LockInfo struct {
	// Key is the lock's full key.
	Key string `json:"key"`
	// HolderTaskID is the id of the task holding it.
	HolderTaskID string `json:"holder_task_id"`
	// TTL is how long it still lives (negative: no expiry).
	TTL time.Duration `json:"ttl"`
}

// Locks lists up to limit locks under the middleware's key prefix, for an
// operator facing a stuck lock.
func (m *Middleware) Locks(ctx context.Context, limit int) ([]LockInfo, error) {
	var out []LockInfo
	iter := m.client.Scan(ctx, 0, escapeGlob(m.cfg.keyPrefix)+":*", 256).Iterator()
	for iter.Next(ctx) && len(out) < limit {
		key := iter.Val()
		holder, err := m.client.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			continue // released meanwhile
		}
		if err != nil {
			return out, fmt.Errorf("kiq: dedup: read lock %s: %w", key, err)
		}
		ttl, err := m.client.PTTL(ctx, key).Result()
		if err != nil {
			return out, fmt.Errorf("kiq: dedup: read lock %s: %w", key, err)
		}
		out = append(out, LockInfo{Key: key, HolderTaskID: holder, TTL: ttl})
	}
	if err := iter.Err(); err != nil {
		return out, fmt.Errorf("kiq: dedup: list locks: %w", err)
	}
	return out, nil
}

// ForceRelease deletes the lock at key whoever holds it, and reports
// whether there was one. It is for operators: a task still running under it
// is no longer protected.
func (m *Middleware) ForceRelease(ctx context.Context, key string) (bool, error) {
	if !strings.HasPrefix(key, m.cfg.keyPrefix+":") {
		return false, fmt.Errorf("kiq: dedup: %q is not under the lock prefix %q", key, m.cfg.keyPrefix)
	}
	n, err := m.client.Del(ctx, key).Result()
	if err != nil {
		return false, fmt.Errorf("kiq: dedup: release %s: %w", key, err)
	}
	if n == 1 {
		m.stats.released.Add(1)
	}
	return n == 1, nil
}

func escapeGlob(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}
