// Package batch coalesces concurrent Redis calls into pipelines: a call made
// while a pipeline is in flight waits and goes out with every other call
// queued meanwhile, in the next pipeline. A lone caller pays one round trip,
// as it would without batching; 64 concurrent callers pay a handful.
package batch

import (
	"context"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Pipeline coalesces the calls made through Do. The zero value is not
// usable; make one with New. It starts no goroutine: the caller that finds
// no pipeline in flight sends one, for itself and whoever queued since.
type Pipeline struct {
	client redis.UniversalClient

	mu    sync.Mutex
	queue []*call
	busy  bool
}

type call struct {
	fill    func(redis.Pipeliner)
	done    chan struct{} // closed when the call's commands have their replies
	promote chan struct{} // closed when the call must send the next pipeline
}

// New returns a pipeline on client.
func New(client redis.UniversalClient) *Pipeline {
	return &Pipeline{client: client}
}

// Do queues the commands fill adds to its pipeliner and returns once they
// have their replies (read them from the commands fill kept), or ctx ended.
// The commands of a caller whose ctx ended may still run.
func (p *Pipeline) Do(ctx context.Context, fill func(redis.Pipeliner)) error {
	c := &call{fill: fill, done: make(chan struct{}), promote: make(chan struct{})}
	p.mu.Lock()
	p.queue = append(p.queue, c)
	lead := !p.busy
	p.busy = true
	p.mu.Unlock()
	if !lead {
		select {
		case <-c.done:
			return nil
		case <-c.promote:
		case <-ctx.Done():
			if p.withdraw(c) {
				return ctx.Err()
			}
			// Already in a pipeline in flight, or promoted meanwhile.
			select {
			case <-c.done:
				return nil
			case <-c.promote:
			}
		}
	}
	// Send pipelines until this call is done, then hand the rest over to the
	// oldest waiting caller, so no caller serves others for long.
	for {
		p.mu.Lock()
		queued := p.queue
		p.queue = nil
		p.mu.Unlock()
		p.send(ctx, queued)
		select {
		case <-c.done:
			p.handOver()
			return nil
		default:
		}
	}
}

// withdraw removes a waiting call from the queue, unless it was promoted
// or taken into a pipeline; it reports whether it removed it.
func (p *Pipeline) withdraw(c *call) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-c.promote:
		return false
	default:
	}
	i := slices.Index(p.queue, c)
	if i < 0 {
		return false
	}
	p.queue = slices.Delete(p.queue, i, i+1)
	return true
}

// handOver promotes the oldest waiting call, or marks the pipeline idle.
func (p *Pipeline) handOver() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		p.busy = false
		return
	}
	close(p.queue[0].promote)
}

// send runs one pipeline for calls and marks them done. Per-command errors
// stay on the commands; a connection error is on every one of them.
func (p *Pipeline) send(ctx context.Context, calls []*call) {
	if len(calls) == 0 {
		return
	}
	_, _ = p.client.Pipelined(context.WithoutCancel(ctx), func(pipe redis.Pipeliner) error {
		for _, c := range calls {
			c.fill(pipe)
		}
		return nil
	})
	for _, c := range calls {
		close(c.done)
	}
}

// Script runs s in the next pipeline and returns its reply. Scripts go out
// as EVALSHA; one that Redis does not know yet (first use, or a restarted
// server) is run again on its own with EVAL, which also loads it.
func (p *Pipeline) Script(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	var cmd *redis.Cmd
	if err := p.Do(ctx, func(pipe redis.Pipeliner) { cmd = s.EvalSha(ctx, pipe, keys, args...) }); err != nil {
		cmd = redis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		return s.Eval(ctx, p.client, keys, args...)
	}
	return cmd
}
