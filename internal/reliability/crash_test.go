package reliability_test

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"strconv"
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

	workers := make([]*os.Process, 3)
	startWorker := func(i int) {
		cmd := spawn(t, "worker", srv.URL(), prefix)
		require.NoError(t, cmd.Start())
		workers[i] = cmd.Process
		go func() { _ = cmd.Wait() }()
	}
	for i := range workers {
		startWorker(i)
	}
	defer func() {
		for _, p := range workers {
			_ = p.Kill()
		}
	}()

	// Kick at a steady rate while killing a random worker now and then.
	killed := 0
	next := time.Now().Add(200 * time.Millisecond)
	n := 0
	for ; n < tasks || killed < kills; n++ {
		_, err := record.Kiq(ctx, RecordArgs{N: n})
		require.NoError(t, err)
		if n%10 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		if killed < kills && time.Now().After(next) {
			i := rand.IntN(len(workers))
			require.NoError(t, workers[i].Signal(syscall.SIGKILL))
			startWorker(i)
			killed++
			next = time.Now().Add(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		}
	}
	tasks = n

	// Every task ran at least once, and the queue drains completely.
	client := b.Client()
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
	t.Logf("%d tasks, %d workers killed with SIGKILL: %d duplicate executions from redelivery", tasks, kills, duplicates)
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
func TestProducerKilledBetweenLockAndSend(t *testing.T) {
	srv := redistest.Start(t)
	prefix := "producer"
	cmd := spawn(t, "stuck-producer", srv.URL(), prefix)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "LOCKED\n", line)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	killedAt := time.Now()

	locks := redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: 1})
	defer locks.Close()
	ctx := context.Background()
	keys := locks.Keys(ctx, prefix+":dedup:*").Val()
	require.Len(t, keys, 1, "the lock was taken")
	require.Eventually(t, func() bool { return locks.Exists(ctx, keys[0]).Val() == 0 }, 2*time.Second, 10*time.Millisecond)
	require.Less(t, time.Since(killedAt), 1500*time.Millisecond, "free within the 1 s grace TTL")

	q := srv.Client(t)
	require.Zero(t, q.Exists(ctx, prefix+":{taskiq}:pending", prefix+":{taskiq}:msg").Val(), "nothing half-sent")
}
