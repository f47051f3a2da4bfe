package batch_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/batch"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// pipelineCounter counts pipelines and their commands; with a delay, each
// pipeline takes at least that long, as a slow round trip would, so that
// concurrent callers overlap however busy the machine is.
type pipelineCounter struct {
	pipelines, cmds atomic.Int64
	delay           time.Duration
}

func (c *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (c *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() != "hello" && cmds[0].Name() != "client" { // not a connection set-up
			c.pipelines.Add(1)
			c.cmds.Add(int64(len(cmds)))
			time.Sleep(c.delay)
		}
		return next(ctx, cmds)
	}
}

func TestConcurrentCallsShareRoundTrips(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	counter := &pipelineCounter{delay: time.Millisecond}
	client.AddHook(counter)
	p := batch.New(client)
	prefix := redistest.Prefix(t)
	ctx := context.Background()
	const callers, each = 64, 50
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := range each {
				var cmd *redis.IntCmd
				require.NoError(t, p.Do(ctx, func(pipe redis.Pipeliner) { cmd = pipe.Incr(ctx, prefix+strconv.Itoa(g)) }))
				require.NoError(t, cmd.Err())
				require.Equal(t, int64(i+1), cmd.Val(), "replies reach their own caller, in order")
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(callers*each), counter.cmds.Load())
	require.Less(t, counter.pipelines.Load(), int64(callers*each/4), "calls were coalesced")
	t.Logf("%d calls in %d pipelines", callers*each, counter.pipelines.Load())
}

func TestALoneCallerPaysOneRoundTrip(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	counter := &pipelineCounter{}
	client.AddHook(counter)
	p := batch.New(client)
	var cmd *redis.StatusCmd
	require.NoError(t, p.Do(context.Background(), func(pipe redis.Pipeliner) { cmd = pipe.Ping(context.Background()) }))
	require.Equal(t, "PONG", cmd.Val())
	require.Equal(t, int64(1), counter.pipelines.Load())
}

func TestCancelledWaitersDoNotStallOthers(t *testing.T) {
	client := redistest.Shared(t).Client(t)
	p := batch.New(client)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, time.Duration(i%5)*time.Microsecond)
			defer cancel()
			_ = p.Do(cctx, func(pipe redis.Pipeliner) { pipe.Ping(ctx) })
		})
	}
	wg.Wait()
	done := make(chan struct{})
	go func() {
		_ = p.Do(ctx, func(pipe redis.Pipeliner) { pipe.Ping(ctx) })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the pipeline stalled after cancelled callers")
	}
}

func TestCoalescerFlushesEachItemOnceWithinItsParallelism(t *testing.T) {
	var inFlight, most, batches atomic.Int64
	seen := make([]atomic.Int64, 64*100)
	c := batch.NewCoalescer(2, func(ctx context.Context, items []int) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		batches.Add(1)
		time.Sleep(50 * time.Microsecond) // a round trip
		for _, i := range items {
			seen[i].Add(1)
		}
	})
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			for i := range 100 {
				require.NoError(t, c.Do(context.Background(), g*100+i))
				require.Equal(t, int64(1), seen[g*100+i].Load(), "flushed before Do returned")
			}
		})
	}
	wg.Wait()
	for i := range seen {
		require.Equal(t, int64(1), seen[i].Load(), "item %d flushed once", i)
	}
	require.LessOrEqual(t, most.Load(), int64(2), "at most two batches in flight")
	require.Less(t, batches.Load(), int64(64*100/4), "items were coalesced")
}

func TestCoalescerWaiterWhoseContextEndsIsNotFlushed(t *testing.T) {
	release := make(chan struct{})
	var flushed []string
	var mu sync.Mutex
	c := batch.NewCoalescer(1, func(ctx context.Context, items []string) {
		require.NoError(t, ctx.Err(), "the flush never sees the sender's cancellation")
		if items[0] == "leader" {
			<-release
		}
		mu.Lock()
		flushed = append(flushed, items...)
		mu.Unlock()
	})
	leaderDone := make(chan error)
	go func() { leaderDone <- c.Do(context.Background(), "leader") }()
	time.Sleep(10 * time.Millisecond) // the leader's batch is in flight
	ctx, cancel := context.WithCancel(context.Background())
	waiterDone := make(chan error)
	go func() { waiterDone <- c.Do(ctx, "gives up") }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	require.ErrorIs(t, <-waiterDone, context.Canceled)
	close(release)
	require.NoError(t, <-leaderDone)
	require.NoError(t, c.Do(context.Background(), "next"), "the slot was handed back")
	require.Equal(t, []string{"leader", "next"}, flushed)
}

// A call whose context has already ended submits nothing, even with a free
// slot: it would otherwise lead a batch, flushed without its cancellation.
func TestCoalescerCallWithAnEndedContextSubmitsNothing(t *testing.T) {
	var flushed []string
	c := batch.NewCoalescer(1, func(ctx context.Context, items []string) {
		flushed = append(flushed, items...)
	})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, c.Do(cancelled, "cancelled"), context.Canceled)
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	require.ErrorIs(t, c.Do(expired, "expired"), context.DeadlineExceeded)
	require.Empty(t, flushed, "the flush function was never called")
	require.NoError(t, c.Do(context.Background(), "next"), "no slot was taken")
	require.Equal(t, []string{"next"}, flushed)
}

func TestCoalescerBatchKeepsItsCallersLatestDeadline(t *testing.T) {
	got := make(chan time.Time, 1)
	release := make(chan struct{})
	c := batch.NewCoalescer(1, func(ctx context.Context, items []string) {
		if items[0] == "leader" {
			<-release
			return
		}
		d, _ := ctx.Deadline()
		got <- d
	})
	leaderDone := make(chan error)
	go func() { leaderDone <- c.Do(context.Background(), "leader") }()
	time.Sleep(10 * time.Millisecond) // the leader's batch is in flight

	// Two callers with deadlines queue behind it: their batch carries the
	// later one.
	soon, later := time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
	var wg sync.WaitGroup
	for _, d := range []time.Time{soon, later} {
		wg.Go(func() {
			ctx, cancel := context.WithDeadline(context.Background(), d)
			defer cancel()
			require.NoError(t, c.Do(ctx, "with deadline"))
		})
	}
	time.Sleep(10 * time.Millisecond)
	close(release)
	require.NoError(t, <-leaderDone)
	require.True(t, (<-got).Equal(later), "the batch is cut only once every caller's deadline is past")
	wg.Wait()

	// A caller without a deadline makes a batch without one.
	ctx, cancel := context.WithDeadline(context.Background(), soon)
	defer cancel()
	require.NoError(t, c.Do(ctx, "alone with a deadline"))
	require.True(t, (<-got).Equal(soon))
	require.NoError(t, c.Do(context.Background(), "no deadline"))
	require.True(t, (<-got).IsZero())
}

// A caller that takes a free slot is queued until it sends its batch; one
// that finished meanwhile must not hand it its slot too, or that slot is
// lost for good, and a coalescer of two batches in flight runs one.
func TestBothSlotsSurviveARush(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	c := batch.NewCoalescer(2, func(ctx context.Context, items []int) {
		for _, it := range items {
			if it < 0 { // a batch that holds its slot until released
				started <- struct{}{}
				<-release
			}
		}
	})
	for round := range 20 {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for i := range 200 {
					require.NoError(t, c.Do(context.Background(), i))
				}
			})
		}
		wg.Wait()
		go func() { _ = c.Do(context.Background(), -1) }()
		<-started
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		require.NoError(t, c.Do(ctx, 1), "round %d: the second slot is free while the first is held", round)
		cancel()
		release <- struct{}{}
	}
}

// Entries are reused from call to call: a call must still return nil once
// its own item was flushed and never before, and a call that gives up must
// leave nothing behind for the next call that gets its entry, through
// every mix of promotions, withdrawals and late signals.
func TestEachCallIsAnsweredForItsOwnItem(t *testing.T) {
	const callers, calls = 32, 300
	flushed := make([]atomic.Int64, callers*calls)
	var inFlight, most atomic.Int64
	c := batch.NewCoalescer(2, func(ctx context.Context, items []int) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(time.Duration(items[0]%50) * time.Microsecond)
		for _, i := range items {
			flushed[i].Add(1)
		}
	})
	var gaveUp atomic.Int64
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := range calls {
				item := g*calls + i
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(item%7)*20*time.Microsecond)
				err := c.Do(ctx, item)
				cancel()
				if err != nil {
					require.ErrorIs(t, err, context.DeadlineExceeded)
					gaveUp.Add(1)
					continue
				}
				require.Equal(t, int64(1), flushed[item].Load(), "item %d: Do returned before its flush", item)
			}
		})
	}
	wg.Wait()
	require.Positive(t, gaveUp.Load(), "some callers gave up")
	require.LessOrEqual(t, most.Load(), int64(2), "at most two batches in flight")
	for i := range flushed {
		require.LessOrEqual(t, flushed[i].Load(), int64(1), "item %d flushed once at most", i)
	}
	ok := 0
	for i := range flushed {
		ok += int(flushed[i].Load())
	}
	require.Equal(t, callers*calls-int(gaveUp.Load()), ok, "every call that returned nil was flushed, and only those")
}
