// Package embedredis runs an in-process Redis (miniredis): the worker's
// embedded default, and the tests' fallback on a machine without
// redis-server. Its keys expire in real time: miniredis counts TTLs down
// only when told to, so a clock goroutine tells it, every few milliseconds
// while it holds few keys.
package embedredis

import (
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// The clock's pace. FastForward walks every key, sorted, under miniredis's
// lock, which stalls every command meanwhile: the clock waits idleFactor
// times as long as its last walk took (at least minTick), so it holds the
// lock at most 2 % of the time, and keys expire later the more there are
// (a few milliseconds late for a test's keys; seconds late for a million).
const (
	minTick    = 10 * time.Millisecond
	idleFactor = 50
)

// Server is a miniredis whose TTLs run on the wall clock.
type Server struct {
	*miniredis.Miniredis
	stop  chan struct{}
	done  chan struct{}
	close sync.Once
}

// Start starts a server on a free loopback port, and its clock.
func Start() (*Server, error) {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		return nil, err
	}
	s := &Server{Miniredis: m, stop: make(chan struct{}), done: make(chan struct{})}
	go s.clock()
	return s, nil
}

func (s *Server) clock() {
	defer close(s.done)
	t := time.NewTimer(minTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		s.FastForward(now.Sub(last))
		last = now
		t.Reset(max(minTick, idleFactor*time.Since(now)))
	}
}

// Close stops the clock and the server. It may be called more than once.
func (s *Server) Close() {
	s.close.Do(func() {
		close(s.stop)
		<-s.done
		s.Miniredis.Close()
	})
}
