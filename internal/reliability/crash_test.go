package reliability_test

import (
	"bufio"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func soak() bool { return os.Getenv("KIQ_SOAK") != "" }

// Worker processes are SIGKILLed at random points while they hold tasks,
// again and again under a steady load, with other workers running. Every
// task kicked runs at least once, nothing stays queued or in flight, and no
// deduplication lock outlives its TTL.
func TestWorkersKilledUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "crash"
	tasks, kills := 1500, 6
	if soak() {
		tasks, kills = 20000, 60
	}
	b, record, err := setup(srv.URL(), prefix, 100*time.Millisecond)
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ctx := context.Background()

	// Each worker announces its consumer, so that its in-flight list can be
	// read when it is killed.
	type proc struct {
		p        *os.Process
		consumer string
		done     chan struct{} // closed once the process exited
	}
	workers := make([]proc, 3)
	startWorker := func(i int) {
		cmd := spawn(t, "worker", srv.URL(), prefix)
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		line, err := bufio.NewReader(out).ReadString('\n')
		require.NoError(t, err)
		id, ok := strings.CutPrefix(strings.TrimSpace(line), "CONSUMER ")
		require.True(t, ok, "worker said %q", line)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		workers[i] = proc{p: cmd.Process, consumer: id, done: done}
	}
	for i := range workers {
		startWorker(i)
	}
	defer func() {
		for _, w := range workers {
			_ = w.p.Kill()
			<-w.done
		}
	}()
	client := b.Client()
	inFlight := func(consumer string) int64 {
		return client.LLen(ctx, prefix+":{"+broker.DefaultQueue+"}:wip:"+consumer).Val()
	}

	// Kick at a steady rate while killing now and then a random worker
	// that holds tasks. A kill counts once the dead worker's in-flight list
	// is seen non-empty: it died holding those tasks.
	killed, missed := 0, 0
	var heldAtKills int64
	next := time.Now().Add(200 * time.Millisecond)
	n := 0
	for ; n < tasks || killed < kills; n++ {
		_, err := record.Kiq(ctx, RecordArgs{N: n})
		require.NoError(t, err)
		if n%10 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		if killed < kills && time.Now().After(next) {
			i := slices.IndexFunc(workers, func(w proc) bool { return inFlight(w.consumer) > 0 })
			if i < 0 {
				continue // nobody holds a task right now: try again after the next kick
			}
			if j := rand.IntN(len(workers)); inFlight(workers[j].consumer) > 0 {
				i = j
			}
			require.NoError(t, workers[i].p.Signal(syscall.SIGKILL))
			<-workers[i].done
			if held := inFlight(workers[i].consumer); held > 0 {
				killed++
				heldAtKills += held
			} else {
				missed++ // it settled its last task between the check and the kill
			}
			startWorker(i)
			next = time.Now().Add(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		}
	}
	require.Equal(t, kills, killed)
	require.GreaterOrEqual(t, heldAtKills, int64(kills))
	tasks = n

	// Every task ran at least once, and the queue drains completely.
	require.Eventually(t, func() bool {
		return client.HLen(ctx, prefix+":executions").Val() == int64(tasks)
	}, 60*time.Second, 50*time.Millisecond, "tasks lost")
	require.Eventually(t, func() bool {
		s, err := b.Stats(ctx, broker.DefaultQueue)
		return err == nil && s.Pending == 0 && s.InFlight == 0 && s.Scheduled == 0
	}, 30*time.Second, 50*time.Millisecond)
	counts := client.HGetAll(ctx, prefix+":executions").Val()
	duplicates := 0
	for _, c := range counts {
		n, _ := strconv.Atoi(c)
		require.GreaterOrEqual(t, n, 1)
		duplicates += n - 1
	}
	t.Logf("%d tasks, %d workers killed with SIGKILL holding %d tasks in flight (%d kills missed a holder and were not counted): %d duplicate executions from redelivery",
		tasks, kills, heldAtKills, missed, duplicates)
	s, _ := b.Stats(ctx, broker.DefaultQueue)
	require.Zero(t, s.Dead, "nothing dead-lettered")

	// Locks of finished tasks are released; those of killed tasks expire
	// with their TTL (2 s, at least the broker's redelivery time plus a
	// heartbeat while running).
	ttl := max(2*time.Second, b.RedeliveryTimeout()+time.Second)
	require.Eventually(t, func() bool {
		return len(client.Keys(ctx, prefix+":dedup:*").Val()) == 0
	}, ttl+2*time.Second, 50*time.Millisecond, "a lock outlived its TTL")
}

// A task whose worker dies after the task finished but before its ack runs
// again: delivery is at least once.
func TestWorkerKilledBeforeItsAck(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "ackless"
	b, record, err := setup(srv.URL(), prefix, 100*time.Millisecond)
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ctx := context.Background()
	_, err = record.Kiq(ctx, RecordArgs{N: 7})
	require.NoError(t, err)

	cmd := spawn(t, "ackless-worker", srv.URL(), prefix)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "EXECUTED\n", line)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Equal(t, "1", b.Client().HGet(ctx, prefix+":executions", "7").Val())

	w := spawn(t, "worker", srv.URL(), prefix)
	require.NoError(t, w.Start())
	defer func() { _ = w.Process.Kill(); _ = w.Wait() }()
	require.Eventually(t, func() bool {
		return b.Client().HGet(ctx, prefix+":executions", "7").Val() == "2"
	}, 10*time.Second, 20*time.Millisecond, "the unacknowledged task runs again")
}

// A producer killed between taking its lock and sending leaves no
// half-sent task, and the fingerprint is free again within the grace TTL.
// The producer is a real process on the real ListQueue path where the lock
// is taken apart from the enqueue (its Redis is another database); it is
// killed after the lock, before the broker's Kick. A second producer, let
// through at that point, shows that the same path does send.
func TestProducerKilledBetweenLockAndSend(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	locks := redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: 1})
	defer locks.Close()
	q := srv.Client(t)
	queueKeys := func(prefix string) []string {
		return []string{prefix + ":{taskiq}:pending", prefix + ":{taskiq}:msg", prefix + ":{taskiq}:scheduled"}
	}
	startProducer := func(prefix string) (*exec.Cmd, io.Writer, *bufio.Reader) {
		cmd := spawn(t, "stuck-producer", srv.URL(), prefix)
		in, err := cmd.StdinPipe()
		require.NoError(t, err)
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		r := bufio.NewReader(out)
		line, err := r.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "LOCKED\n", line)
		return cmd, in, r
	}

	// The control: let through, the producer sends.
	cmd, in, out := startProducer("sent")
	_, err := io.WriteString(in, "GO\n")
	require.NoError(t, err)
	line, err := out.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "SENT\n", line)
	require.NoError(t, cmd.Wait())
	require.Equal(t, int64(1), q.HLen(ctx, "sent:{taskiq}:msg").Val(), "the gated path sends for real")
	require.Len(t, locks.Keys(ctx, "sent:dedup:*").Val(), 1, "and took its lock in the other database")

	// Killed at the same point.
	cmd, _, _ = startProducer("killed")
	keys := locks.Keys(ctx, "killed:dedup:*").Val()
	require.Len(t, keys, 1, "the lock was taken")
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	killedAt := time.Now()
	require.Eventually(t, func() bool { return locks.Exists(ctx, keys[0]).Val() == 0 }, 2*time.Second, 10*time.Millisecond)
	require.Less(t, time.Since(killedAt), 1500*time.Millisecond, "free within the 1 s grace TTL")
	require.Zero(t, q.Exists(ctx, queueKeys("killed")...).Val(), "nothing half-sent")
}
