// Package cli is the command line of a Kiq worker: the taskworker binary is
// one call to Main, and a program with its own tasks gets the same flags and
// operator commands the same way:
//
//	func main() {
//		cli.Main(cli.App{Setup: func(ctx context.Context, b *broker.ListQueue, s cli.Settings) error {
//			tasks.Register(b) // task.Define(b, ...) for each task
//			return nil
//		}})
//	}
//
// Commands (flags go after the command, before its arguments):
//
//	run (the default)       consume and run tasks until SIGINT/SIGTERM
//	queues                  each queue's pending, in-flight, scheduled and dead counts
//	dead list               the dead letters of --queue, newest first
//	dead show ID            one dead letter, with its message
//	dead requeue ID|--all   put dead letters back on their queue, attempts reset
//	dead purge              delete the dead letters of --queue
//	tasks show ID           where a task is: pending, scheduled, in flight, dead or done
//	locks list              deduplication locks with holder and TTL
//	locks release KEY       release one lock, whoever holds it
//
// Operator commands (all but run) need --redis-url (or KIQ_REDIS_URL): they
// inspect the Redis of running workers, never an embedded one. They print an
// aligned table, or JSON with --json; errors go to stderr with exit status 1,
// usage errors 2. A flag after an argument is a usage error. -h prints the
// usage, the commands and the flags, and exits 0.
//
// Unless Setup gave the broker a result backend, the command line gives it
// one in Redis (broker.NewRedisResults, under --key-prefix, kept for
// --result-ttl, default one hour; 0 turns it off): the worker stores every
// task's final result there, and `tasks show` reads it.
//
// Without --redis-url, the worker (run) runs on an embedded, in-process
// Redis (miniredis, its keys expiring in real time: see internal/embedredis)
// with App.Demo beside it, so a first run needs nothing installed.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/embedredis"
	"github.com/kiq-go/kiq/worker"
)

// App describes a worker program.
type App struct {
	// Name is the program's name in usage text. Default: os.Args[0]'s base.
	Name string
	// Setup registers the program's tasks and middlewares on the broker the
	// command line built, with the settings of the command line's flags. It
	// runs before every command.
	Setup func(ctx context.Context, b *broker.ListQueue, s Settings) error
	// Demo, when set, runs beside the worker on the embedded Redis only (no
	// --redis-url): a producer that shows the worker at work. It must return
	// when ctx ends.
	Demo func(ctx context.Context, b *broker.ListQueue) error
}

// Settings are what Setup needs to know of the command line's flags.
type Settings struct {
	// KeyPrefix is --key-prefix, the prefix of the broker's keys (the broker
	// has it already).
	KeyPrefix string
	// DedupPrefix is --dedup-prefix, the prefix of deduplication lock keys
	// that the locks commands read. A program with the deduplication
	// middleware passes it to dedup.WithKeyPrefix, so that its worker takes
	// the locks the locks commands show.
	DedupPrefix string
	// Queues are the queues of --queues; the first is the broker's default.
	Queues []string
	// Embedded is true when the broker runs on the embedded, in-process
	// Redis (no --redis-url).
	Embedded bool
}

// Main runs the command line in os.Args and exits with its status. The
// first SIGINT or SIGTERM stops the worker gracefully; a second one, during
// the drain, kills the process as if Main had not caught signals at all.
func Main(app App) {
	os.Exit(app.Run(signalContext(), os.Args[1:], os.Stdout, os.Stderr))
}

// signalContext returns a context that ends at the first SIGINT or SIGTERM,
// after which the signals' default behaviour (ending the process) is back.
func signalContext() context.Context {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx
}

// flags are the options every command shares.
type flags struct {
	redisURL        string
	queues          string
	keyPrefix       string
	dedupPrefix     string
	resultTTL       time.Duration
	concurrency     int
	prefetch        int
	shutdownTimeout time.Duration
	logLevel        string
	logFormat       string
	progress        time.Duration
	jsonOut         bool
	all             bool
	queue           string
}

func (f *flags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.redisURL, "redis-url", os.Getenv("KIQ_REDIS_URL"), "Redis to consume (env KIQ_REDIS_URL); empty: an embedded in-process Redis")
	fs.StringVar(&f.queues, "queues", broker.DefaultQueue, "comma-separated queues to consume")
	fs.StringVar(&f.keyPrefix, "key-prefix", "kiq", "prefix of the broker's Redis keys")
	fs.StringVar(&f.dedupPrefix, "dedup-prefix", "taskiq:deduplication", "prefix of deduplication lock keys (the worker's and the locks commands')")
	fs.DurationVar(&f.resultTTL, "result-ttl", broker.DefaultResultTTL, "how long results are kept in Redis for tasks show (0: results are not stored), unless the program set a result backend")
	fs.IntVar(&f.concurrency, "concurrency", worker.DefaultConcurrency, fmt.Sprintf("tasks run at once (0: %d)", worker.DefaultConcurrency))
	fs.IntVar(&f.prefetch, "prefetch", 0, "most tasks held at once, running or waiting (0: twice the concurrency; never below it)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", worker.DefaultShutdownTimeout,
		fmt.Sprintf("how long to wait for running tasks on shutdown before cancelling them (0: %s)", worker.DefaultShutdownTimeout))
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&f.progress, "progress", time.Second, "how often to print the progress line (0: never)")
	fs.BoolVar(&f.jsonOut, "json", false, "operator commands: print JSON instead of a table")
	fs.StringVar(&f.queue, "queue", broker.DefaultQueue, "operator commands: the queue of dead letters and tasks")
	fs.BoolVar(&f.all, "all", false, "dead requeue: every dead letter of the queue")
}

// validate rejects the values of numeric flags that mean nothing: negative
// ones (0 means the default, or off).
func (f *flags) validate() error {
	for _, n := range []struct {
		name string
		neg  bool
		v    any
	}{
		{"concurrency", f.concurrency < 0, f.concurrency},
		{"prefetch", f.prefetch < 0, f.prefetch},
		{"shutdown-timeout", f.shutdownTimeout < 0, f.shutdownTimeout},
		{"result-ttl", f.resultTTL < 0, f.resultTTL},
		{"progress", f.progress < 0, f.progress},
	} {
		if n.neg {
			return fmt.Errorf("bad --%s %v: must not be negative", n.name, n.v)
		}
	}
	return nil
}

func (f *flags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, fmt.Errorf("bad --log-level %q: want debug, info, warn or error", f.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("bad --log-format %q: want text or json", f.logFormat)
}

func (f *flags) queueList() []string {
	var out []string
	for _, q := range strings.Split(f.queues, ",") {
		if q = strings.TrimSpace(q); q != "" {
			out = append(out, q)
		}
	}
	return out
}

// Run runs the command line args (without the program name) and returns the
// exit status: 0 for success, 1 for a failure, 2 for bad usage. Output goes
// to stdout, logs and errors to stderr.
func (app App) Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name := app.Name
	if name == "" {
		name = "taskworker"
	}
	cmd, sub := "run", ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	subs, known := commands[cmd]
	if !known {
		fmt.Fprintf(stderr, "%s: unknown command %q (want %s)\n", name, cmd, commandNames())
		return 2
	}
	if len(subs) > 0 && !(len(args) > 0 && isHelp(args[0])) { // "dead -h" prints the usage
		if len(args) == 0 || strings.HasPrefix(args[0], "-") || !slices.Contains(subs, args[0]) {
			fmt.Fprintf(stderr, "%s %s: want a subcommand: %s\n", name, cmd, strings.Join(subs, ", "))
			return 2
		}
		sub, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(strings.TrimSpace(name+" "+cmd+" "+sub), flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, where it belongs
	var f flags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// Asked for: to stdout, and success.
			fs.SetOutput(stdout)
			app.usage(fs, name)
			return 0
		}
		app.usage(fs, name) // after the error, on stderr
		return 2
	}
	if err := f.validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	log, err := f.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	if len(f.queueList()) == 0 {
		fmt.Fprintf(stderr, "%s: --queues %q names no queue\n", name, f.queues)
		return 2
	}
	if cmd == "run" && fs.NArg() > 0 {
		// "taskworker --redis-url X locks list" would otherwise run a worker.
		fmt.Fprintf(stderr, "%s: unexpected arguments %q: the command goes first (%s COMMAND [flags] [args])\n",
			name, fs.Args(), name)
		return 2
	}
	if cmd != "run" {
		if arg, flagArg := flagAfterArgument(args, fs.Args()); flagArg != "" {
			fmt.Fprintf(stderr, "%s: %q comes after the argument %q: flags go before arguments (%s [flags] ARGS)\n",
				fs.Name(), flagArg, arg, fs.Name())
			return 2
		}
		if f.redisURL == "" {
			// The embedded Redis of this process would be empty: its
			// answers would be wrong, not merely useless.
			fmt.Fprintf(stderr, "%s: needs --redis-url (or KIQ_REDIS_URL), the Redis of the workers to inspect; only the worker itself (no command) runs on an embedded Redis\n",
				fs.Name())
			return 2
		}
	}
	// The command line owns the process: middlewares and tasks that log
	// to the default logger follow --log-level and --log-format too.
	slog.SetDefault(log)
	run := func(ctx context.Context, b *broker.ListQueue) error {
		if cmd == "run" {
			return app.runWorker(ctx, b, &f, log, stderr)
		}
		return operate(ctx, b, &f, cmd, sub, fs.Args(), stdout)
	}
	if err := app.withBroker(ctx, &f, log, cmd == "run", run); err != nil {
		var usage usageError
		if errors.As(err, &usage) {
			fmt.Fprintf(stderr, "%s %s: %v\n", name, cmd, err)
			return 2
		}
		fmt.Fprintf(stderr, "%s %s: %v\n", name, cmd, err)
		return 1
	}
	return 0
}

// withBroker builds the broker of the flags, embedded or real, runs Setup,
// then fn (beside the Demo if demo is set and the broker embedded), then
// shuts the broker down.
func (app App) withBroker(ctx context.Context, f *flags, log *slog.Logger, demo bool, fn func(context.Context, *broker.ListQueue) error) error {
	url := f.redisURL
	embedded := url == ""
	if embedded {
		mr, err := embedredis.Start()
		if err != nil {
			return fmt.Errorf("start the embedded Redis: %w", err)
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
		log.Info("kiq: no --redis-url: running on an embedded in-process Redis; tasks live only as long as this process")
	}
	b, err := broker.NewListQueue(url, broker.WithKeyPrefix(f.keyPrefix), broker.WithQueueName(f.queueList()[0]), broker.WithLogger(log))
	if err != nil {
		return err
	}
	defer b.Shutdown(context.WithoutCancel(ctx))
	if app.Setup != nil {
		s := Settings{KeyPrefix: f.keyPrefix, DedupPrefix: f.dedupPrefix, Queues: f.queueList(), Embedded: embedded}
		if err := app.Setup(ctx, b, s); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	if b.ResultBackend() == nil && f.resultTTL > 0 {
		// Shutdown closes it.
		b.WithResultBackend(broker.NewRedisResults(b.Client(), f.keyPrefix, f.resultTTL))
	}
	if demo && embedded && app.Demo != nil {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := app.Demo(ctx, b); err != nil && ctx.Err() == nil {
				log.Error("kiq: demo producer stopped", slog.Any("error", err))
			}
		}()
		defer func() { cancel(); <-done }()
	}
	return fn(ctx, b)
}

func (app App) runWorker(ctx context.Context, b *broker.ListQueue, f *flags, log *slog.Logger, stderr io.Writer) error {
	w := worker.New(b, worker.Options{
		Concurrency:     f.concurrency,
		Prefetch:        f.prefetch,
		Queues:          f.queueList(),
		ShutdownTimeout: f.shutdownTimeout,
		Logger:          log,
	})
	used := w.Options()
	log.Info("kiq: worker started", slog.Any("queues", f.queueList()), slog.Int("concurrency", used.Concurrency),
		slog.Int("prefetch", used.Prefetch), slog.Any("tasks", b.Registry().Names()))
	if f.progress > 0 {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); progress(ctx, w, f.progress, stderr) }()
		defer func() { cancel(); <-done }()
	}
	return w.Run(ctx)
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "--h", "-help", "--help":
		return true
	}
	return false
}

// flagAfterArgument returns the first argument that looks like a flag and
// comes after a positional argument, with that argument, in args, rest
// being what flag parsing left of them. After "--", everything is an
// argument ("dead requeue -- --all").
func flagAfterArgument(args, rest []string) (arg, flagArg string) {
	if parsed := len(args) - len(rest); len(rest) == 0 || parsed > 0 && args[parsed-1] == "--" {
		return "", ""
	}
	for _, a := range rest[1:] {
		if len(a) > 1 && a[0] == '-' && a != "--" {
			return rest[0], a
		}
	}
	return "", ""
}

// usage prints the usage, the commands and the flags to fs's output.
func (app App) usage(fs *flag.FlagSet, name string) {
	demo := ""
	if app.Demo != nil {
		demo = " with a demo producer"
	}
	fmt.Fprintf(fs.Output(), `Usage: %[1]s [flags]                          run a worker
       %[1]s COMMAND [SUBCOMMAND] [flags] [ARGS]  an operator command

Commands (flags go after the command, before its arguments):
  run (the default)       consume and run tasks until SIGINT/SIGTERM
  queues                  each queue's pending, in-flight, scheduled and dead counts
  dead list               the dead letters of --queue, newest first
  dead show ID            one dead letter, with its message
  dead requeue ID|--all   put dead letters back on their queue, attempts reset
  dead purge              delete the dead letters of --queue
  tasks show ID           where a task is: pending, scheduled, in flight, dead or done
  locks list              deduplication locks with holder and TTL
  locks release KEY       release one lock, whoever holds it

Operator commands (all but run) need --redis-url. Without it, the worker runs
on an embedded, in-process Redis%[2]s.

Flags:
`, name, demo)
	fs.PrintDefaults()
}

// progress prints a line with the worker's counters every interval.
func progress(ctx context.Context, w *worker.Worker, every time.Duration, out io.Writer) {
	t := time.NewTicker(every)
	defer t.Stop()
	last, lastAt := w.Stats(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s := w.Stats()
			rate := float64(s.Done+s.Failed-last.Done-last.Failed) / now.Sub(lastAt).Seconds()
			fmt.Fprintf(out, "kiq: done=%d failed=%d retried=%d dead=%d running=%d rate=%.0f/s\n",
				s.Done, s.Failed, s.Retried, s.DeadLettered, s.Running, rate)
			last, lastAt = s, now
		}
	}
}
