package dedup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
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
// operator facing a stuck lock. Keys under the prefix that are not strings
// (not locks) are skipped. On a Redis Cluster every master is scanned.
func (m *Middleware) Locks(ctx context.Context, limit int) ([]LockInfo, error) {
	l := &lockLister{limit: limit}
	var err error
	if cc, ok := m.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return l.scan(ctx, c, m.cfg.keyPrefix)
		})
	} else {
		err = l.scan(ctx, m.client, m.cfg.keyPrefix)
	}
	return l.out, err
}

// lockLister gathers locks from one or more scans (one per cluster master,
// run concurrently).
type lockLister struct {
	limit int
	mu    sync.Mutex
	out   []LockInfo
}

func (l *lockLister) full() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.out) >= l.limit
}

func (l *lockLister) scan(ctx context.Context, c redis.Cmdable, prefix string) error {
	iter := c.Scan(ctx, 0, escapeGlob(prefix)+":*", 256).Iterator()
	for !l.full() && iter.Next(ctx) {
		key := iter.Val()
		holder, err := c.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) || redis.HasErrorPrefix(err, "WRONGTYPE") {
			continue // released meanwhile, or not a lock
		}
		if err != nil {
			return fmt.Errorf("kiq: dedup: read lock %s: %w", key, err)
		}
		ttl, err := c.PTTL(ctx, key).Result()
		if err != nil {
			return fmt.Errorf("kiq: dedup: read lock %s: %w", key, err)
		}
		if ttl == -2 {
			continue // released since the GET
		}
		l.mu.Lock()
		if len(l.out) < l.limit {
			l.out = append(l.out, LockInfo{Key: key, HolderTaskID: holder, TTL: ttl})
		}
		l.mu.Unlock()
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("kiq: dedup: list locks: %w", err)
	}
	return nil
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
