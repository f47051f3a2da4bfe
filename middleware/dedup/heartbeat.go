package dedup

import (
	"context"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// startHeartbeat starts the goroutine that extends the locks of running
// tasks, once; Shutdown stops it.
func (m *Middleware) startHeartbeat() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stop != nil {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	m.stop, m.done = stop, make(chan struct{})
	go m.heartbeat(ctx, m.done)
}

func (m *Middleware) heartbeat(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(m.heartbeatInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.beat(ctx)
		}
	}
}

// beat extends every running task's lock that its task still owns, in one
// pipeline, and forgets the locks found lost.
func (m *Middleware) beat(ctx context.Context) {
	type entry struct {
		key string
		h   heldLock
	}
	m.mu.Lock()
	entries := make([]entry, 0, len(m.running))
	for k, h := range m.running {
		entries = append(entries, entry{k, *h})
	}
	m.mu.Unlock()
	if len(entries) == 0 {
		return
	}
	cmds := make([]*redis.Cmd, len(entries))
	_, err := m.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, e := range entries {
			cmds[i] = extendScript.Run(ctx, p, []string{e.key}, e.h.taskID, e.h.ttl.Milliseconds())
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		// Scripts not yet loaded answer NOSCRIPT inside a pipeline: Run
		// falls back to EVAL only outside one, so load and let the next beat
		// try again. Other errors are Redis being away.
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			_ = extendScript.Load(ctx, m.client).Err()
			return
		}
		m.stats.errors.Add(1)
		m.log.Warn("kiq: dedup: heartbeat could not extend locks", slog.Any("error", err))
		return
	}
	for i, c := range cmds {
		if n, err := c.Int(); err == nil && n == 0 {
			m.stats.heartbeatsLost.Add(1)
			m.log.Warn("kiq: dedup: a running task lost its deduplication lock",
				slog.String("key", entries[i].key), slog.String("task_id", entries[i].h.taskID))
			m.mu.Lock()
			if h := m.running[entries[i].key]; h != nil && h.taskID == entries[i].h.taskID {
				delete(m.running, entries[i].key)
			}
			m.mu.Unlock()
		}
	}
}
