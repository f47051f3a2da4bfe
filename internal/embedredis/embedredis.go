// Package embedredis runs an in-process Redis (miniredis): the worker's
// embedded default, and the tests' fallback on a machine without
// redis-server. Its keys expire in real time: miniredis counts TTLs down
// only when told to, so a clock goroutine tells it every few milliseconds.
package embedredis

import (
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// tick is how often the clock moves miniredis's TTLs on: how late, at most,
// a key expires.
const tick = 10 * time.Millisecond

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
	t := time.NewTicker(tick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.FastForward(now.Sub(last))
			last = now
		}
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
