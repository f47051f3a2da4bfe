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

	mu          sync.Mutex
	middlewares []Middleware
	started     bool
}

func (b *base) Registry() *Registry  { return &b.registry }
func (b *base) Formatter() Formatter { return b.formatter }

// ResultBackend returns the broker's result backend, or nil.
func (b *base) ResultBackend() ResultBackend { return b.results }

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

// startup runs the middlewares' Startup hooks in registration order, once.
func (b *base) startup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return nil
	}
	for _, mw := range b.middlewares {
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
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for i := len(b.middlewares) - 1; i >= 0; i-- {
		mw := b.middlewares[i]
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
