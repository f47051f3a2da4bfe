package broker

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// The operator's view of a ListQueue: the queues there are, their counts,
// their dead letters, and where one task is.

// Inspector is implemented by brokers that can count and list their tasks
// for operators and dashboards: [InMemory] and [ListQueue].
type Inspector interface {
	// Stats counts the tasks of queue by state.
	Stats(ctx context.Context, queue string) (QueueStats, error)
	// DeadLetters returns up to limit dead letters of queue, newest first,
	// skipping offset.
	DeadLetters(ctx context.Context, queue string, offset, limit int) ([]DeadLetter, error)
}

// QueueStats are the counts of one queue.
type QueueStats struct {
	// Queue is the queue counted.
	Queue string `json:"queue"`
	// Pending tasks are ready to run.
	Pending int64 `json:"pending"`
	// InFlight tasks are held by registered consumers.
	InFlight int64 `json:"in_flight"`
	// Scheduled tasks wait for their delay or their retry's backoff.
	Scheduled int64 `json:"scheduled"`
	// Dead is the length of the dead-letter list.
	Dead int64 `json:"dead"`
	// Consumers are registered (alive, or dead and not reaped yet).
	Consumers int64 `json:"consumers"`
}

// tokenScan bounds how many ids at the head of pending Stats scans for
// wake-up tokens, which are not tasks (consumers drop them as they come,
// so they stay near the head).
const tokenScan = 1000

// Stats counts the tasks of queue by state, in two round trips.
func (b *ListQueue) Stats(ctx context.Context, queue string) (QueueStats, error) {
	s := QueueStats{Queue: queue}
	consumers, err := b.client.ZRange(ctx, b.key(queue, "consumers"), 0, -1).Result()
	if err != nil {
		return s, fmt.Errorf("kiq: stats: %w", err)
	}
	var pending, scheduled, dead *redis.IntCmd
	var tokens *redis.IntSliceCmd
	wip := make([]*redis.IntCmd, 0, 2*len(consumers))
	_, err = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		pending = p.LLen(ctx, b.key(queue, "pending"))
		tokens = p.LPosCount(ctx, b.key(queue, "pending"), "", 0, redis.LPosArgs{Rank: -1, MaxLen: tokenScan})
		scheduled = p.ZCard(ctx, b.key(queue, "scheduled"))
		dead = p.LLen(ctx, b.key(queue, "dead"))
		for _, c := range consumers { // in flight, and landed for a take under way
			wip = append(wip, p.LLen(ctx, b.wipKey(queue, c)), p.LLen(ctx, b.landKey(queue, c)))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return s, fmt.Errorf("kiq: stats: %w", err)
	}
	s.Pending = pending.Val() - int64(len(tokens.Val()))
	s.Scheduled, s.Dead, s.Consumers = scheduled.Val(), dead.Val(), int64(len(consumers))
	for _, c := range wip {
		s.InFlight += c.Val()
	}
	return s, nil
}

// DeadLetters returns up to limit dead letters of queue, newest first,
// skipping offset.
func (b *ListQueue) DeadLetters(ctx context.Context, queue string, offset, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		return nil, nil
	}
	offset = max(offset, 0)
	raws, err := b.client.LRange(ctx, b.key(queue, "dead"), int64(offset), int64(offset+limit-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("kiq: dead letters: %w", err)
	}
	out := make([]DeadLetter, 0, len(raws))
	for _, raw := range raws {
		var dl DeadLetter
		if err := msgpack.Unmarshal([]byte(raw), &dl); err != nil {
			return out, fmt.Errorf("kiq: dead letters: %w", err)
		}
		out = append(out, dl)
	}
	return out, nil
}

// TaskExists reports whether the task is pending, scheduled or in flight on
// queue.
func (b *ListQueue) TaskExists(ctx context.Context, queue, taskID string) (bool, error) {
	n, err := b.client.HExists(ctx, b.key(queue, "msg"), taskID).Result()
	if err != nil {
		return false, fmt.Errorf("kiq: task exists: %w", err)
	}
	return n, nil
}

//go:embed lua/requeue.lua
var requeueLua string

var requeueScript = redis.NewScript(requeueLua)

// Queues returns the names of the queues that have keys under the broker's
// prefix, sorted. It scans the keyspace: an operator's call, not a hot path.
func (b *ListQueue) Queues(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	iter := b.client.Scan(ctx, 0, escapeGlob(b.prefix)+":{*}:*", 1000).Iterator()
	for iter.Next(ctx) {
		rest := strings.TrimPrefix(iter.Val(), b.prefix+":{")
		if i := strings.Index(rest, "}:"); i >= 0 {
			seen[rest[:i]] = true
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("kiq: list queues: %w", err)
	}
	out := make([]string, 0, len(seen))
	for q := range seen {
		out = append(out, q)
	}
	slices.Sort(out)
	return out, nil
}

func escapeGlob(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// deadEntries returns the dead letters of queue as stored and decoded.
func (b *ListQueue) deadEntries(ctx context.Context, queue string) ([]string, []DeadLetter, error) {
	raws, err := b.client.LRange(ctx, b.key(queue, "dead"), 0, -1).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("kiq: dead letters: %w", err)
	}
	dls := make([]DeadLetter, len(raws))
	for i, raw := range raws {
		if err := msgpack.Unmarshal([]byte(raw), &dls[i]); err != nil {
			return nil, nil, fmt.Errorf("kiq: dead letters: %w", err)
		}
	}
	return raws, dls, nil
}

// ErrNotFound is returned for a task or dead letter that does not exist.
var ErrNotFound = errors.New("kiq: not found")

// DeadLetter returns the dead letter of taskID on queue.
func (b *ListQueue) DeadLetter(ctx context.Context, queue, taskID string) (DeadLetter, error) {
	_, dls, err := b.deadEntries(ctx, queue)
	if err != nil {
		return DeadLetter{}, err
	}
	for _, dl := range dls {
		if dl.TaskID == taskID {
			return dl, nil
		}
	}
	return DeadLetter{}, fmt.Errorf("%w: dead letter %s on queue %s", ErrNotFound, taskID, queue)
}

// RequeueDead moves dead letters of queue back onto it, with their attempt
// counters reset: the one of taskID, or all when taskID is "". It returns
// how many were requeued. Undecodable messages are requeued as they were.
// A dead letter whose task id a live task has taken meanwhile is kept, and
// the error wraps ErrTaskExists.
func (b *ListQueue) RequeueDead(ctx context.Context, queue, taskID string) (int, error) {
	raws, dls, err := b.deadEntries(ctx, queue)
	if err != nil {
		return 0, err
	}
	n, kept := 0, 0
	for i, dl := range dls {
		if taskID != "" && dl.TaskID != taskID {
			continue
		}
		payload := dl.Raw
		if m, err := b.formatter.DecodeMessage(dl.Raw); err == nil {
			m.Attempt = 0
			if payload, err = b.formatter.EncodeMessage(m); err != nil {
				return n, err
			}
		}
		keys := []string{b.key(queue, "dead"), b.key(queue, "msg"), b.key(queue, "pending")}
		code, err := requeueScript.Run(ctx, b.client, keys, raws[i], dl.TaskID, payload).Int()
		if err != nil {
			return n, fmt.Errorf("kiq: requeue: %w", err)
		}
		switch code { // see requeue.lua
		case 1:
			n++
		case 2:
			kept++
		}
	}
	if kept > 0 {
		return n, fmt.Errorf("kiq: requeue: %d dead letter(s) on queue %s kept, %d requeued: %w (a live task has the id)", kept, queue, n, ErrTaskExists)
	}
	if n == 0 && taskID != "" {
		return 0, fmt.Errorf("%w: dead letter %s on queue %s", ErrNotFound, taskID, queue)
	}
	return n, nil
}

// PurgeDead deletes every dead letter of queue and returns how many there
// were.
func (b *ListQueue) PurgeDead(ctx context.Context, queue string) (int64, error) {
	var n *redis.IntCmd
	_, err := b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		n = p.LLen(ctx, b.key(queue, "dead"))
		p.Del(ctx, b.key(queue, "dead"))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("kiq: purge: %w", err)
	}
	return n.Val(), nil
}

// TaskInfo is where one task is.
type TaskInfo struct {
	// TaskID is the task looked for.
	TaskID string `json:"task_id"`
	// Queue is the queue it was looked for on.
	Queue string `json:"queue"`
	// State is "pending", "scheduled", "in_flight", "dead" or "done".
	State string `json:"state"`
	// Message is the task's message while it is queued, scheduled, in
	// flight or dead (nil for a done task, or one that did not decode).
	Message *Message `json:"message,omitempty"`
	// Reason is the dead letter's reason.
	Reason string `json:"reason,omitempty"`
	// Result is the stored result of a finished task, when the broker has
	// a result backend and kept it.
	Result *TaskResult `json:"result,omitempty"`
}

// Task finds taskID on queue: queued, scheduled, in flight, dead, or
// finished with a stored result.
func (b *ListQueue) Task(ctx context.Context, queue, taskID string) (TaskInfo, error) {
	info := TaskInfo{TaskID: taskID, Queue: queue}
	raw, err := b.client.HGet(ctx, b.key(queue, "msg"), taskID).Bytes()
	switch {
	case err == nil:
		info.Message, _ = b.formatter.DecodeMessage(raw)
		info.State = "in_flight"
		if _, err := b.client.ZScore(ctx, b.key(queue, "scheduled"), taskID).Result(); err == nil {
			info.State = "scheduled"
		} else if _, err := b.client.LPos(ctx, b.key(queue, "pending"), taskID, redis.LPosArgs{}).Result(); err == nil {
			info.State = "pending"
		}
		return info, nil
	case !errors.Is(err, redis.Nil):
		return info, fmt.Errorf("kiq: task: %w", err)
	}
	if dl, err := b.DeadLetter(ctx, queue, taskID); err == nil {
		info.State, info.Reason = "dead", dl.Reason
		info.Message, _ = b.formatter.DecodeMessage(dl.Raw)
		return info, nil
	} else if !errors.Is(err, ErrNotFound) {
		return info, err
	}
	if b.results != nil {
		res, err := b.results.Get(ctx, taskID)
		if err == nil {
			info.State, info.Result = "done", res
			return info, nil
		}
		if !errors.Is(err, ErrNoResult) {
			return info, err
		}
	}
	return info, fmt.Errorf("%w: task %s on queue %s", ErrNotFound, taskID, queue)
}
