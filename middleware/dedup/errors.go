package dedup

import (
	"errors"
	"fmt"
)

// ErrDuplicateTask is matched by errors.Is for every *DuplicateTaskError.
var ErrDuplicateTask = errors.New("kiq: duplicate task")

// DuplicateTaskError is returned by Kiq when another task holds the lock of
// the task's fingerprint: the task was not sent.
type DuplicateTaskError struct {
	// TaskName is the rejected task's name.
	TaskName string
	// Key is the lock key both tasks map to.
	Key string
	// HolderTaskID is the id of the task holding the lock. With a result
	// backend, the caller can wait for that task's result instead.
	HolderTaskID string
}

// Error describes the duplicate.
func (e *DuplicateTaskError) Error() string {
	return fmt.Sprintf("kiq: duplicate task %s: lock %s held by task %s", e.TaskName, e.Key, e.HolderTaskID)
}

// Is reports whether target is ErrDuplicateTask.
func (e *DuplicateTaskError) Is(target error) bool { return target == ErrDuplicateTask }
