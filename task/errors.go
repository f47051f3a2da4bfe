package task

import (
	"fmt"
	"time"
)

// SkipRetry, returned (or wrapped) by a task, fails it for good: the retry
// middleware does not try it again, and it goes to the dead-letter list.
var SkipRetry error = skipRetry{}

type skipRetry struct{}

func (skipRetry) Error() string   { return "kiq: skip retry" }
func (skipRetry) SkipRetry() bool { return true }

// RetryAfter returns an error that fails the task and asks the retry
// middleware to try it again after d instead of its backoff (within the
// task's max_retries).
func RetryAfter(d time.Duration) error { return retryAfter(d) }

type retryAfter time.Duration

func (r retryAfter) Error() string             { return fmt.Sprintf("kiq: retry after %v", time.Duration(r)) }
func (r retryAfter) RetryAfter() time.Duration { return time.Duration(r) }
