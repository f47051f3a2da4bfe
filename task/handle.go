package task

import (
	"context"
	"errors"
	"fmt"

	"github.com/kiq-go/kiq/broker"
)

// ErrNoResultBackend is returned by Wait when the task's broker has no
// result backend (see the brokers' WithResultBackend).
var ErrNoResultBackend = errors.New("kiq: the broker has no result backend")

// TaskError is the error of a task that failed, as Wait reports it from the
// stored result.
type TaskError struct {
	// TaskID is the failed task's id.
	TaskID string
	// Kind is "error", "panic", "timeout" or "bad_arguments" for a task
	// that ran; "malformed" or "unknown_task" for one dead-lettered before
	// it could run (see broker.TaskResult.ErrorKind).
	Kind string
	// Message is the task's error text.
	Message string
}

// Error describes the failure.
func (e *TaskError) Error() string {
	return fmt.Sprintf("kiq: task %s failed (%s): %s", e.TaskID, e.Kind, e.Message)
}

// Handle refers to a kicked task whose function returns a Res, and waits for
// its result.
type Handle[Res any] struct {
	id string
	b  broker.Broker
}

// TaskID returns the task's id.
func (h *Handle[Res]) TaskID() string { return h.id }

// Wait blocks until the task's final result is stored, or ctx ends, and
// returns the task's value or its error (a *TaskError). It does not poll:
// the result backend wakes it.
func (h *Handle[Res]) Wait(ctx context.Context) (Res, error) {
	var zero Res
	rb := resultBackend(h.b)
	if rb == nil {
		return zero, ErrNoResultBackend
	}
	tr, err := rb.Wait(ctx, h.id)
	if err != nil {
		return zero, err
	}
	return decodeResult[Res](h.b, tr)
}

// Result returns the task's result if it is stored, or
// broker.ErrNoResult.
func (h *Handle[Res]) Result(ctx context.Context) (Res, error) {
	var zero Res
	rb := resultBackend(h.b)
	if rb == nil {
		return zero, ErrNoResultBackend
	}
	tr, err := rb.Get(ctx, h.id)
	if err != nil {
		return zero, err
	}
	return decodeResult[Res](h.b, tr)
}

func resultBackend(b broker.Broker) broker.ResultBackend {
	if h, ok := b.(broker.ResultHolder); ok {
		return h.ResultBackend()
	}
	return nil
}

func decodeResult[Res any](b broker.Broker, tr *broker.TaskResult) (Res, error) {
	var v Res
	if tr.Error != "" {
		return v, &TaskError{TaskID: tr.TaskID, Kind: tr.ErrorKind, Message: tr.Error}
	}
	if len(tr.Value) > 0 {
		if err := b.Formatter().DecodeArgs(tr.Value, &v); err != nil {
			return v, err
		}
	}
	return v, nil
}

// Kiq sends the task with args and returns a handle to wait for its result.
func (t *ResultTask[Args, Res]) Kiq(ctx context.Context, args Args) (*Handle[Res], error) {
	h, err := t.Kicker().Kiq(ctx, args)
	if err != nil {
		return nil, err
	}
	return t.Handle(h.TaskID()), nil
}

// Handle returns the handle of the task with id, kicked by this process or
// another: a caller rejected as a duplicate waits for the holder's result
// with t.Handle(dup.HolderTaskID).Wait(ctx).
func (t *ResultTask[Args, Res]) Handle(id string) *Handle[Res] {
	return &Handle[Res]{id: id, b: t.target.Broker}
}
