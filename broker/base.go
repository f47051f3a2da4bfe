package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// base is what every broker shares: its registry, formatter and middlewares,
// and running the middlewares' Startup and Shutdown hooks.
type base struct {
	registry  Registry
	formatter Formatter
	results   ResultBackend

	mu          sync.Mutex // guards middlewares only: never held while a hook runs
	middlewares []Middleware

	// startMu serializes Startup and Shutdown and guards started. It is
	// held while the hooks run (a dedup ping may retry for seconds), so it
	// must never be taken on a kick's path: Middlewares takes mu alone.
	startMu sync.Mutex
	started bool
}

// Registry returns the broker's task registry, where task.Define puts the
// handlers the worker runs.
func (b *base) Registry() *Registry { return &b.registry }

// Formatter returns the encoding of the broker's messages and arguments.
func (b *base) Formatter() Formatter { return b.formatter }

// ResultBackend returns the broker's result backend, or nil.
func (b *base) ResultBackend() ResultBackend { return b.results }

// Middlewares returns a copy of the registered middlewares, in registration
// order. It never waits for a Startup or Shutdown hook.
func (b *base) Middlewares() []Middleware {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Middleware(nil), b.middlewares...)
}

func (b *base) addMiddlewares(self Broker, mws []Middleware) {
	b.mu.Lock()
	b.middlewares = append(b.middlewares, mws...)
	b.mu.Unlock()
	for _, mw := range mws {
		if s, ok := mw.(BrokerSetter); ok {
			s.SetBroker(self)
		}
	}
}

// startup runs the middlewares' Startup hooks in registration order, once;
// the first error stops the start (a later call tries again). The hooks run
// on a copy of the list, without the lock that Middlewares takes, so a kick
// made meanwhile is not held up by a slow hook.
func (b *base) startup(ctx context.Context) error {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	if b.started {
		return nil
	}
	for _, mw := range b.Middlewares() {
		if s, ok := mw.(interface{ Startup(context.Context) error }); ok {
			if err := s.Startup(ctx); err != nil {
				return fmt.Errorf("kiq: middleware %T startup: %w", mw, err)
			}
		}
	}
	b.started = true
	return nil
}

// shutdown runs the middlewares' Shutdown hooks in reverse order, all of
// them, and joins their errors.
func (b *base) shutdown(ctx context.Context) error {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	mws := b.Middlewares()
	var errs []error
	for i := len(mws) - 1; i >= 0; i-- {
		mw := mws[i]
		if s, ok := mw.(interface{ Shutdown(context.Context) error }); ok {
			if err := s.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("kiq: middleware %T shutdown: %w", mw, err))
			}
		}
	}
	b.started = false
	if b.results != nil {
		if err := b.results.Close(); err != nil {
			errs = append(errs, fmt.Errorf("kiq: close result backend: %w", err))
		}
	}
	return errors.Join(errs...)
}
