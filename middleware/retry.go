package middleware

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/kiq-go/kiq/broker"
)

// RetryOptions configure the retry middleware. Zero values mean defaults.
type RetryOptions struct {
	// Base bounds the first retry's backoff. Default 1 s.
	Base time.Duration
	// Cap bounds every backoff. Default 10 min.
	Cap time.Duration
	// MaxRetries is the attempts after the first for tasks without a
	// max_retries label. Default 3.
	MaxRetries int
	// Always retries failing tasks that have no retry_on_error label; by
	// default only tasks labelled retry_on_error=true are retried.
	Always bool
	// Rand returns a number in [0, 1) for the jitter. Default math/rand/v2.
	Rand func() float64
}

// Retry is the retry middleware: a failing task labelled retry_on_error is
// sent again (the same task id, its attempt counter raised) after an
// exponential backoff with full jitter, a random delay in
// [0, min(cap, base·2^attempt)), until max_retries retries were made; then
// it goes to the dead-letter list with its last error. A task's error can
// say otherwise: SkipRetry ends the retries, RetryAfter sets the delay.
type Retry struct {
	Base
	opts RetryOptions
}

// NewRetry returns the retry middleware.
func NewRetry(opts RetryOptions) *Retry {
	if opts.Base <= 0 {
		opts.Base = time.Second
	}
	if opts.Cap <= 0 {
		opts.Cap = 10 * time.Minute
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 3
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	return &Retry{opts: opts}
}

// RetryDelay decides whether the failed task msg is tried again, and when.
func (r *Retry) RetryDelay(msg *broker.Message, err error) (time.Duration, bool) {
	on, set := msg.Labels.Bool(broker.LabelRetryOnError)
	if !set {
		on = r.opts.Always
	}
	if !on || errors.Is(err, broker.ErrMalformed) {
		return 0, false
	}
	var skip interface{ SkipRetry() bool }
	if errors.As(err, &skip) && skip.SkipRetry() {
		return 0, false
	}
	limit := int64(r.opts.MaxRetries)
	if n, ok := msg.Labels.Int(broker.LabelMaxRetries); ok {
		limit = n
	}
	if int64(msg.Attempt) >= limit {
		return 0, false
	}
	var after interface{ RetryAfter() time.Duration }
	if errors.As(err, &after) {
		return max(after.RetryAfter(), 0), true
	}
	return r.Backoff(msg), true
}

// Backoff returns the delay before the retry of msg: full jitter over
// min(cap, base·2^attempt), with the task's retry_backoff_base and
// retry_backoff_cap labels overriding the options.
func (r *Retry) Backoff(msg *broker.Message) time.Duration {
	base, capD := r.opts.Base, r.opts.Cap
	if d, ok := msg.Labels.Duration(broker.LabelRetryBackoffBase); ok && d > 0 {
		base = d
	}
	if d, ok := msg.Labels.Duration(broker.LabelRetryBackoffCap); ok && d > 0 {
		capD = d
	}
	attempt := max(msg.Attempt, 0) // a negative attempt never decodes; never shift by one
	bound := capD
	if attempt < 62 && base <= capD>>attempt {
		bound = base << attempt
	}
	return time.Duration(r.opts.Rand() * float64(min(bound, capD)))
}
