// Command bench compares Kiq's Redis ListQueue broker with asynq on the same
// Redis: draining pre-enqueued tasks, enqueue rates from one and from 64
// callers, with deduplication (Kiq's dedup middleware, asynq's Unique) and
// without, enqueue-to-start latency at low load, a bulk kick, and the
// worker's memory while it holds 10000 in-flight tasks.
//
// It is its own Go module (so Kiq's go.mod never gains asynq); run it from
// this directory:
//
//	cd bench && go run .                 # full run, ~5 min on 2 cores
//	cd bench && go run . --quick         # smaller N, a smoke run
//	cd bench && go run . --out RESULTS.md
//
// Without --redis-url it starts a private redis-server (--save "" --appendonly
// no) on a free port and kills it at exit; redis-server and redis-benchmark
// must be on PATH. The bench FLUSHDBs between runs, so it refuses a
// --redis-url server unless --flush is given too. Each scenario runs Kiq and
// asynq alternately (the order rotates every round) for --rounds rounds and
// prints the median and the min–max spread of each, and the ratio of the
// medians. --only 1,4 runs a subset of the scenarios (numbered as in the
// table).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// sizes are a run's workload sizes.
type sizes struct {
	drainN   int           // scenario 1: tasks drained
	conc     int           // scenario 1: worker concurrency; 3: callers
	kickFor  time.Duration // scenarios 2 and 3: how long each run sends
	latN     int           // scenario 4: tasks kicked
	latEvery time.Duration // scenario 4: interval between kicks
	bulkN    int           // scenario 5: tasks kicked
	rssN     int           // scenario 6: tasks in flight
	pingN    int           // redis-benchmark -n
}

var (
	full  = sizes{drainN: 20000, conc: 64, kickFor: 5 * time.Second, latN: 200, latEvery: 5 * time.Millisecond, bulkN: 100000, rssN: 10000, pingN: 100000}
	quick = sizes{drainN: 2000, conc: 64, kickFor: time.Second, latN: 50, latEvery: 5 * time.Millisecond, bulkN: 10000, rssN: 2000, pingN: 20000}
)

var cleanup = func() {}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	cleanup()
	os.Exit(1)
}

func warnf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: warning: "+format+"\n", args...)
}

func main() {
	redisURL := flag.String("redis-url", "", "Redis to run against (default: start a private redis-server on a free port)")
	flush := flag.Bool("flush", false, "allow FLUSHDB on the --redis-url server (needed: the bench flushes between runs)")
	rounds := flag.Int("rounds", 3, "rounds per scenario; each round runs every system once")
	quickRun := flag.Bool("quick", false, "smaller workloads, for a smoke run")
	out := flag.String("out", "", "also write the results as markdown to this file")
	only := flag.String("only", "", "comma-separated scenario numbers to run (default all: 1,2,3,4,5,6)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the bench process (producers and Kiq/asynq workers) to this file")
	rssChildName := flag.String("rss-child", "", "internal: run as scenario 6's child for this system")
	rssN := flag.Int("rss-n", 0, "internal: scenario 6's child's task count")
	flag.Parse()

	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	if *rssChildName != "" {
		rssChild(*rssChildName, *redisURL, *rssN)
		return
	}
	if *rounds < 1 {
		fatalf("--rounds must be at least 1")
	}
	sz := full
	if *quickRun {
		sz = quick
	}
	want := map[int]bool{}
	for _, f := range strings.Split(*only, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 6 {
			fatalf("--only: bad scenario %q", f)
		}
		want[n] = true
	}
	runs := func(n int) bool { return len(want) == 0 || want[n] }

	var srv *server
	var err error
	if *redisURL == "" {
		srv, err = startPrivate()
	} else {
		if !*flush {
			fatalf("--redis-url: the bench runs FLUSHDB between runs; give --flush too if that database may be emptied")
		}
		srv, err = connect(*redisURL, true)
	}
	if err != nil {
		fatalf("%v", err)
	}
	cleanup = srv.close
	defer srv.close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done() // a signal, or main's return
		srv.close()
	}()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatalf("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatalf("%v", err)
		}
		defer pprof.StopCPUProfile()
	}

	b := &bench{ctx: ctx, srv: srv, rounds: *rounds}
	started := time.Now()
	header := []string{
		fmt.Sprintf("Kiq vs asynq %s, %s", asynqVersion(), started.Format("2006-01-02 15:04 MST")),
		fmt.Sprintf("machine: %d CPUs, %s/%s, %s; Redis %s (%s); %d rounds%s",
			runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), srv.version(ctx),
			map[bool]string{true: "private redis-server, no persistence", false: "--redis-url"}[srv.private],
			*rounds, map[bool]string{true: ", --quick", false: ""}[*quickRun]),
		"cells: median (min–max) over the rounds; Kiq/asynq is the ratio of the medians (for latency and RSS, lower is better)",
	}
	for _, h := range header {
		fmt.Fprintln(os.Stderr, h)
	}

	var notes []string
	if runs(1) {
		for _, v := range []struct {
			name string
			kiq  maker
			asy  maker
		}{
			{"dedup / Unique", newKiq(true), newAsynq(true, 0)},
			{"plain", newKiq(false), newAsynq(false, 0)},
		} {
			label := fmt.Sprintf("1. drain %d, C=%d, %s (tasks/s)", sz.drainN, sz.conc, v.name)
			res := b.run(label, []maker{v.kiq, v.asy}, func(ctx context.Context, s system) ([]float64, error) {
				r, err := drain(ctx, s, sz.drainN, sz.conc)
				return []float64{r}, err
			})
			b.add(label, unitRate, res[0][0], res[1][0])
		}
	}
	for _, sc := range []struct {
		n       int
		callers int
	}{{2, 1}, {3, sz.conc}} {
		if !runs(sc.n) {
			continue
		}
		for _, v := range []struct {
			name string
			kiq  maker
			asy  maker
		}{
			{"dedup / Unique", newKiq(true), newAsynq(true, 0)},
			{"plain", newKiq(false), newAsynq(false, 0)},
		} {
			who := "1 caller"
			if sc.callers > 1 {
				who = fmt.Sprintf("%d callers", sc.callers)
			}
			label := fmt.Sprintf("%d. enqueue, %s, %s (tasks/s)", sc.n, who, v.name)
			res := b.run(label, []maker{v.kiq, v.asy}, func(ctx context.Context, s system) ([]float64, error) {
				r, err := sendFor(ctx, s, sc.callers, sz.kickFor)
				return []float64{r}, err
			})
			b.add(label, unitRate, res[0][0], res[1][0])
			if sc.n == 2 && v.name == "dedup / Unique" {
				b.singleDedup = res[0][0]
			}
		}
		if sc.n == 2 { // its references, measured while the machine is as it was
			notes = append(notes, b.ceilings(sz.pingN)...)
		}
	}
	if runs(4) {
		label := fmt.Sprintf("4. latency, %d kicks every %v", sz.latN, sz.latEvery)
		res := b.run(label, []maker{newKiq(false), newAsynq(false, 0), newAsynq(false, time.Millisecond)},
			func(ctx context.Context, s system) ([]float64, error) {
				p50, p99, err := latency(ctx, s, sz.latN, sz.latEvery)
				return []float64{p50, p99}, err
			})
		b.add("4. kick→start p50, asynq default (ms)", unitMS, res[0][0], res[1][0])
		b.add("4. kick→start p99, asynq default (ms)", unitMS, res[0][1], res[1][1])
		b.add("4. kick→start p50, asynq TaskCheckInterval=1ms (ms)", unitMS, res[0][0], res[2][0])
		b.add("4. kick→start p99, asynq TaskCheckInterval=1ms (ms)", unitMS, res[0][1], res[2][1])
	}
	if runs(5) {
		label := fmt.Sprintf("5. bulk kick %d: Kiq one KiqMany vs asynq (64 callers) (tasks/s)", sz.bulkN)
		res := b.run(label, []maker{newKiq(false), newAsynq(false, 0)}, func(ctx context.Context, s system) ([]float64, error) {
			r, err := bulkN(ctx, s, sz.bulkN)
			return []float64{r}, err
		})
		b.add(label, unitRate, res[0][0], res[1][0])
	}
	if runs(6) {
		label := fmt.Sprintf("6. worker RSS, %d tasks in flight", sz.rssN)
		res := b.run(label, []maker{newKiq(false), newAsynq(false, 0)}, func(ctx context.Context, s system) ([]float64, error) {
			name := "kiq"
			if _, ok := s.(*asynqSys); ok {
				name = "asynq"
			}
			idle, loaded, err := rss(ctx, srv.url, s, name, sz.rssN)
			return []float64{idle, loaded}, err
		})
		b.add(fmt.Sprintf("6. worker RSS, %d tasks in flight (MiB)", sz.rssN), unitMiB, res[0][1], res[1][1])
		b.add("6. same process before the worker started (MiB)", unitMiB, res[0][0], res[1][0])
	}

	notes = append(notes, b.errs...)
	notes = append(notes, fmt.Sprintf("total bench time %v", time.Since(started).Round(time.Second)))

	fmt.Println()
	for _, h := range header {
		fmt.Println(h)
	}
	fmt.Println()
	b.text(os.Stdout)
	fmt.Println()
	for _, n := range notes {
		fmt.Println(n)
	}
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			fatalf("%v", err)
		}
		b.markdown(f, header, notes)
		if err := f.Close(); err != nil {
			fatalf("%v", err)
		}
	}
}

// asynqVersion returns the asynq module version linked in.
func asynqVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/hibiken/asynq" {
				return d.Version
			}
		}
	}
	return "(unknown version)"
}

// bench runs scenarios and collects the table.
type bench struct {
	ctx    context.Context
	srv    *server
	rounds int

	rows        []row
	errs        []string
	singleDedup []float64 // scenario 2's Kiq dedup rates, for the PING comparison
}

// ceilings measures scenario 2's references, the three in turn each round:
// redis-benchmark's PING from one connection (n of them), its rate running
// the least script a deduplicated enqueue needs (lockAndQueue), and a
// go-redis PING loop; it returns their medians as notes, beside Kiq's
// single-caller deduplicated rate.
func (b *bench) ceilings(n int) []string {
	var ping, script, goPing []float64
	for range b.rounds {
		b.srv.flush(b.ctx)
		if r, raw, err := b.srv.pingCeiling(n); err != nil {
			b.errs = append(b.errs, fmt.Sprintf("PING ceiling: %v\n%s", err, raw))
		} else {
			ping = append(ping, r)
		}
		b.srv.flush(b.ctx)
		if r, raw, err := b.srv.scriptCeiling(b.ctx, n); err != nil {
			b.errs = append(b.errs, fmt.Sprintf("script ceiling: %v\n%s", err, raw))
		} else {
			script = append(script, r)
		}
		if r, err := b.srv.goPingRate(b.ctx, 2*time.Second); err != nil {
			b.errs = append(b.errs, fmt.Sprintf("go-redis PING loop: %v", err))
		} else {
			goPing = append(goPing, r)
		}
	}
	// share says what Kiq's single-caller rate is of a reference, when
	// scenario 2 measured one.
	share := func(format string, ref float64) string {
		if len(b.singleDedup) == 0 {
			return ""
		}
		kiq := median(b.singleDedup)
		return fmt.Sprintf(format, kiq, 100*kiq/ref)
	}
	var notes []string
	if ping != nil {
		notes = append(notes, fmt.Sprintf("PING ceiling (redis-benchmark -c 1 -n %d -t ping -q, PING_MBULK), median of %d after scenario 2: %.0f/s, one connection's round trips",
			n, len(ping), median(ping))+share("; Kiq single-caller dedup enqueue %.0f/s is %.0f%% of it", median(ping)))
	}
	if script != nil && ping != nil {
		notes = append(notes, fmt.Sprintf("lock-and-queue ceiling (redis-benchmark -c 1 running EVALSHA of SET NX + HSETNX + LPUSH, nothing else), median of %d: %.0f/s, %.0f%% of PING: what a client that waits for each reply and does no work of its own reaches",
			len(script), median(script), 100*median(script)/median(ping))+share("; Kiq (%.0f/s) is %.0f%% of it", median(script)))
	}
	if goPing != nil {
		notes = append(notes, fmt.Sprintf("go-redis PING loop, 1 goroutine, 2 s, median of %d: %.0f/s", len(goPing), median(goPing))+
			share("; Kiq single-caller dedup enqueue (%.0f/s) is %.0f%% of it", median(goPing)))
	}
	return notes
}

// run runs measure on a fresh system of each maker, every round, flushing
// the database before each run; the order of the makers rotates every
// round. It returns, per maker, per metric, the values of the rounds.
func (b *bench) run(label string, makers []maker, measure func(context.Context, system) ([]float64, error)) [][][]float64 {
	res := make([][][]float64, len(makers))
	sysName := func(i int) string {
		switch i {
		case 0:
			return "kiq"
		case 1:
			return "asynq"
		}
		return fmt.Sprintf("asynq#%d", i)
	}
	for r := range b.rounds {
		for j := range makers {
			i := (j + r) % len(makers)
			if b.ctx.Err() != nil {
				fatalf("interrupted")
			}
			b.srv.flush(b.ctx)
			s, err := makers[i](b.srv.url)
			var vals []float64
			if err == nil {
				vals, err = measure(b.ctx, s)
				s.close()
			}
			if err != nil {
				msg := fmt.Sprintf("%s, round %d, %s: %v", label, r+1, sysName(i), err)
				warnf("%s", msg)
				b.errs = append(b.errs, "error: "+msg)
				continue
			}
			for m, v := range vals {
				if len(res[i]) <= m {
					res[i] = append(res[i], make([][]float64, m+1-len(res[i]))...)
				}
				res[i][m] = append(res[i][m], v)
			}
			fmt.Fprintf(os.Stderr, "%s: round %d/%d, %s: %v\n", label, r+1, b.rounds, sysName(i), fmtVals(vals))
		}
	}
	// Every maker gets as many metrics as the longest, empty if it failed.
	width := 0
	for _, m := range res {
		width = max(width, len(m))
	}
	for i := range res {
		for len(res[i]) < width {
			res[i] = append(res[i], nil)
		}
	}
	return res
}

func fmtVals(vs []float64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strings.Join(parts, " ")
}

type unit int

const (
	unitRate unit = iota // tasks/s
	unitMS               // milliseconds
	unitMiB              // MiB
)

func (u unit) format(v float64) string {
	switch u {
	case unitMS:
		if v < 10 {
			return strconv.FormatFloat(v, 'f', 2, 64)
		}
		return strconv.FormatFloat(v, 'f', 0, 64)
	case unitMiB:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

type row struct {
	name     string
	unit     unit
	kiq, asy []float64
}

func (b *bench) add(name string, u unit, kiq, asy []float64) {
	b.rows = append(b.rows, row{name: name, unit: u, kiq: kiq, asy: asy})
}

func (r row) cell(vs []float64) string {
	if len(vs) == 0 {
		return "n/a"
	}
	m := r.unit.format(median(vs))
	if len(vs) == 1 {
		return m
	}
	lo, hi := spread(vs)
	return fmt.Sprintf("%s (%s–%s)", m, r.unit.format(lo), r.unit.format(hi))
}

func (r row) ratio() string {
	if len(r.kiq) == 0 || len(r.asy) == 0 || median(r.asy) == 0 {
		return "n/a"
	}
	q := median(r.kiq) / median(r.asy)
	if q < 0.1 {
		return strconv.FormatFloat(q, 'g', 2, 64) // 0.00045, not 0.00
	}
	return strconv.FormatFloat(q, 'f', 2, 64)
}

// text writes the table aligned with tabwriter.
func (b *bench) text(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tKiq\tasynq\tKiq/asynq")
	for _, r := range b.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.name, r.cell(r.kiq), r.cell(r.asy), r.ratio())
	}
	_ = tw.Flush()
}

// markdown writes the header, the table and the notes as markdown.
func (b *bench) markdown(w io.Writer, header, notes []string) {
	fmt.Fprintf(w, "# %s\n\n", header[0])
	for _, h := range header[1:] {
		fmt.Fprintf(w, "%s\n\n", h)
	}
	fmt.Fprintln(w, "| scenario | Kiq | asynq | Kiq/asynq |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: |")
	for _, r := range b.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.name, r.cell(r.kiq), r.cell(r.asy), r.ratio())
	}
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
}
