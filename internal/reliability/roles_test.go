package reliability_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/redis/go-redis/v9"
)

// The test binary doubles as the worker and producer processes the tests
// kill: with KIQ_ROLE set, TestMain plays that role instead of testing.
func TestMain(m *testing.M) {
	if role := os.Getenv("KIQ_ROLE"); role != "" {
		if err := play(role); err != nil {
			fmt.Fprintln(os.Stderr, "role", role, "failed:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	redistest.Main(m)
}

// RecordArgs are the arguments of the record task.
type RecordArgs struct {
	N int `msgpack:"n"`
}

// env reads the processes' configuration.
func env(key string) string { return os.Getenv("KIQ_" + key) }

// setup builds the broker, the deduplication and retry middlewares and the
// record task, which counts its executions in the hash prefix:executions.
func setup(url, prefix string, heartbeat time.Duration) (*broker.ListQueue, *task.Task[RecordArgs], error) {
	quiet := slog.New(slog.DiscardHandler)
	b, err := broker.NewListQueue(url, broker.WithKeyPrefix(prefix), broker.WithHeartbeat(heartbeat, 5*heartbeat), broker.WithLogger(quiet))
	if err != nil {
		return nil, nil, err
	}
	mw, err := dedup.New("", dedup.WithClient(b.Client()), dedup.WithKeyPrefix(prefix+":dedup"),
		dedup.WithDefaultTTL(2*time.Second), dedup.WithHeartbeat(true, time.Second), dedup.WithLogger(quiet))
	if err != nil {
		return nil, nil, err
	}
	// A record that fails (its Redis is down) is retried, not dead-lettered.
	b.WithMiddlewares(mw, middleware.NewRetry(middleware.RetryOptions{Always: true, Base: 50 * time.Millisecond,
		Cap: 500 * time.Millisecond, MaxRetries: 20}))
	client := b.Client()
	record := task.Define(b, "record", func(ctx context.Context, a RecordArgs) error {
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		return client.HIncrBy(ctx, prefix+":executions", strconv.Itoa(a.N), 1).Err()
	})
	return b, record, nil
}

func play(role string) error {
	url, prefix := env("URL"), env("PREFIX")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	switch role {
	case "worker":
		// Announces its consumer's id, so that the test can see what it
		// holds when it kills it.
		b, _, err := setup(url, prefix, 100*time.Millisecond)
		if err != nil {
			return err
		}
		return worker.New(&announce{ListQueue: b}, worker.Options{Concurrency: 8, Logger: slog.New(slog.DiscardHandler)}).Run(ctx)
	case "ackless-worker":
		// Runs tasks, but dies (is killed) before it acknowledges any.
		b, _, err := setup(url, prefix, 100*time.Millisecond)
		if err != nil {
			return err
		}
		return worker.New(&noAck{ListQueue: b}, worker.Options{Concurrency: 1, Logger: slog.New(slog.DiscardHandler)}).Run(ctx)
	case "stuck-producer":
		// Takes its lock apart from the enqueue (locks in another Redis
		// database: the broker cannot take it in its kick script), then
		// waits before the broker's real Kick for "GO" on stdin; the test
		// kills it there, or lets it send.
		opts, err := redis.ParseURL(url)
		if err != nil {
			return err
		}
		opts.DB = 1
		locks := redis.NewClient(opts)
		b, err := broker.NewListQueue(url, broker.WithKeyPrefix(prefix))
		if err != nil {
			return err
		}
		mw, err := dedup.New("", dedup.WithClient(locks), dedup.WithKeyPrefix(prefix+":dedup"), dedup.WithGraceTTL(time.Second))
		if err != nil {
			return err
		}
		gb := &gatedBroker{ListQueue: b.WithMiddlewares(mw)}
		if gb.LocksAtomically(locks) {
			return errors.New("the lock would be taken in the kick script")
		}
		record := task.Define(gb, "record", func(context.Context, RecordArgs) error { return nil })
		if _, err = record.Kiq(ctx, RecordArgs{N: 1}); err != nil {
			return err
		}
		fmt.Println("SENT")
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// gatedBroker announces that the lock was taken ("LOCKED": the middlewares'
// PreSend ran), then waits for a line on stdin before the ListQueue's real
// Kick.
type gatedBroker struct{ *broker.ListQueue }

func (g *gatedBroker) Kick(ctx context.Context, msg *broker.Message) error {
	fmt.Println("LOCKED")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return err
	}
	return g.ListQueue.Kick(ctx, msg)
}

// announce prints the id of the consumer it opens: "CONSUMER <id>".
type announce struct{ *broker.ListQueue }

func (a *announce) Consume(ctx context.Context, opts broker.ConsumeOptions) (broker.Consumer, error) {
	key := a.KeyPrefix() + ":{" + broker.DefaultQueue + "}:consumers"
	before := a.Client().ZRange(ctx, key, 0, -1).Val()
	c, err := a.ListQueue.Consume(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, id := range a.Client().ZRange(ctx, key, 0, -1).Val() {
		if !slices.Contains(before, id) {
			fmt.Println("CONSUMER", id)
		}
	}
	return c, nil
}

// noAck never acknowledges: it announces each finished task and hangs.
type noAck struct{ *broker.ListQueue }

func (n *noAck) Consume(ctx context.Context, opts broker.ConsumeOptions) (broker.Consumer, error) {
	c, err := n.ListQueue.Consume(ctx, opts)
	return &noAckConsumer{Consumer: c}, err
}

type noAckConsumer struct{ broker.Consumer }

func (c *noAckConsumer) Ack(ctx context.Context, ds ...*broker.Delivery) error {
	fmt.Println("EXECUTED")
	select {}
}

// spawn starts the test binary in role with the given Redis and prefix.
func spawn(t *testing.T, role, url, prefix string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KIQ_ROLE="+role, "KIQ_URL="+url, "KIQ_PREFIX="+prefix)
	cmd.Stderr = os.Stderr
	return cmd
}
