// Package broker holds the broker abstraction, the message envelope and its
// labels, and two brokers: [InMemory] for tests and single processes, and
// [ListQueue], the reliable Redis list broker.
//
// A broker moves encoded messages from producers to workers. It does not run
// tasks: package worker does, through a [Consumer] the broker opens.
package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultQueue is the queue a message goes to without a queue label, as in
// Taskiq.
const DefaultQueue = "taskiq"

// Broker is what task.Define and worker.New take.
type Broker interface {
	// Kick makes msg available to workers on the queue its labels name. When
	// msg.Lock is set, the lock is taken first and the message is not sent
	// if another task holds it (the Lock's Held error is returned).
	Kick(ctx context.Context, msg *Message) error
	// Consume opens a consumer of the given queues (the default queue when
	// none is given).
	Consume(ctx context.Context, opts ConsumeOptions) (Consumer, error)
	// Formatter encodes this broker's messages and arguments.
	Formatter() Formatter
	// Registry holds the tasks defined on this broker.
	Registry() *Registry
	// Middlewares returns the middlewares registered with WithMiddlewares,
	// in registration order.
	Middlewares() []Middleware
	// Startup runs the middlewares' Startup hooks and checks the connection.
	// It is optional for producers; worker.Run calls it.
	Startup(ctx context.Context) error
	// Shutdown runs the middlewares' Shutdown hooks and closes connections
	// the broker opened.
	Shutdown(ctx context.Context) error
}

// BulkKicker is implemented by brokers that send many messages in one
// round trip. KickMany returns one error per message, in order.
type BulkKicker interface {
	// KickMany sends msgs as Kick would each, and returns one error per
	// message (nil: sent), in the order of msgs.
	KickMany(ctx context.Context, msgs []*Message) []error
}

// KickMany sends msgs through b: in bulk where b is a BulkKicker, one by
// one otherwise. It returns one error per message, in order.
func KickMany(ctx context.Context, b Broker, msgs []*Message) []error {
	if bk, ok := b.(BulkKicker); ok {
		return bk.KickMany(ctx, msgs)
	}
	errs := make([]error, len(msgs))
	for i, m := range msgs {
		errs[i] = b.Kick(ctx, m)
	}
	return errs
}

// Middleware is a value registered on a broker with WithMiddlewares. It takes
// part in a task's life through the hook interfaces of package middleware
// (PreSend, PostExecute, ...), of which it implements any subset.
// Embedding middleware.Base satisfies this interface.
type Middleware interface {
	// IsMiddleware marks middlewares; it returns true.
	IsMiddleware() bool
}

// BrokerSetter is implemented by middlewares that want to know the broker
// they were registered on. WithMiddlewares calls SetBroker once per broker.
type BrokerSetter interface {
	// SetBroker tells the middleware the broker b it was registered on.
	SetBroker(b Broker)
}

// ConsumeOptions configures a [Consumer].
type ConsumeOptions struct {
	// Queues to consume, by name. Empty means the broker's default queue.
	Queues []string
	// Prefetch is the most deliveries a consumer holds unacknowledged.
	Prefetch int
}

// Consumer receives deliveries for one worker. Deliveries are owned by the
// consumer until they are acknowledged, retried, dead-lettered or handed
// back; if the process dies first, the broker delivers them again.
type Consumer interface {
	// Fetch blocks until at least one delivery is ready or ctx ends, and
	// returns at most max deliveries.
	Fetch(ctx context.Context, max int) ([]*Delivery, error)
	// Ack settles deliveries as done. It is safe for concurrent use and
	// costs one round trip per call whatever the count.
	Ack(ctx context.Context, ds ...*Delivery) error
	// Retry settles d and sends msg (the same task with its attempt counter
	// raised) again no earlier than delay from now.
	Retry(ctx context.Context, d *Delivery, msg *Message, delay time.Duration) error
	// DeadLetter settles d by moving it, with reason, to the dead-letter
	// list of its queue.
	DeadLetter(ctx context.Context, d *Delivery, reason string) error
	// HandBack returns deliveries that were not started to the head of
	// their queue. A hand-back is not a failed attempt.
	HandBack(ctx context.Context, ds ...*Delivery) error
	// Close stops the consumer. Deliveries it still holds are handed back.
	Close(ctx context.Context) error
}

// Delivery is one message taken by a consumer.
type Delivery struct {
	// Queue the message came from.
	Queue string
	// ID is the task id the broker knows the delivery by.
	ID string
	// Raw holds the message exactly as the broker stored it.
	Raw []byte
	// Message is Raw decoded, or nil when it could not be; Err says why.
	Message *Message
	// Err is the decoding error, wrapping ErrMalformed, when Message is nil.
	Err error
}

// unlock returns the lock the delivery's settlement should release.
func (d *Delivery) unlock() *Lock {
	if d.Message == nil {
		return nil
	}
	return d.Message.Unlock
}

// Registry holds the tasks defined on a broker, by name. It is safe for
// concurrent use.
type Registry struct {
	mu    sync.RWMutex
	tasks map[string]Handler
}

// Handler runs one task from its message. task.Define registers one per
// task; the worker calls it.
type Handler interface {
	// Execute decodes msg's arguments and runs the task, returning its result.
	// An error wrapping ErrMalformed means the arguments did not decode.
	Execute(ctx context.Context, msg *Message) (any, error)
}

// ErrDuplicateTaskName is returned when a second task is registered under a
// name already taken on the same broker.
var ErrDuplicateTaskName = errors.New("kiq: task name already defined")

// Register adds h under name.
func (r *Registry) Register(name string, h Handler) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tasks == nil {
		r.tasks = make(map[string]Handler)
	}
	if _, dup := r.tasks[name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateTaskName, name)
	}
	r.tasks[name] = h
	return nil
}

// Lookup returns the handler registered under name.
func (r *Registry) Lookup(name string) (Handler, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	h, ok := r.tasks[name]
	return h, ok
}

// Names returns the registered task names.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.tasks))
	for n := range r.tasks {
		names = append(names, n)
	}
	return names
}
