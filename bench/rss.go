package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Scenario 6: the worker's resident memory while it holds n in-flight
// tasks. Each measurement runs in a fresh process (the bench binary
// re-executed with the hidden --rss-child flag), so the parent's heap does
// not count.

// rssSystems are the systems the child can run, by name.
var rssSystems = map[string]maker{
	"kiq":   newKiq(false),
	"asynq": newAsynq(false, 0),
}

// rss enqueues n tasks with sys (not timed), and has a child
// process run system name's worker with concurrency n on them. It returns
// the child's VmRSS in MiB before the worker started and once n tasks were
// running.
func rss(ctx context.Context, url string, sys system, name string, n int) (idle, loaded float64, err error) {
	if _, err := sendN(ctx, sys, 64, n); err != nil {
		return 0, 0, fmt.Errorf("enqueue: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "--rss-child", name, "--redis-url", url, "--rss-n", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("rss child %s: %w (output %q)", name, err, out)
	}
	var idleKiB, loadedKiB float64
	if _, err := fmt.Sscanf(string(out), "idle_kib %g loaded_kib %g", &idleKiB, &loadedKiB); err != nil {
		return 0, 0, fmt.Errorf("rss child %s: bad output %q: %w", name, out, err)
	}
	return idleKiB / 1024, loadedKiB / 1024, nil
}

// rssChild is the child's side: start the worker with concurrency n and a
// handler that blocks, wait until n tasks run, print VmRSS and exit without
// releasing them (the parent flushes Redis).
func rssChild(name, url string, n int) {
	mk, ok := rssSystems[name]
	if !ok {
		fatalf("rss child: unknown system %q", name)
	}
	sys, err := mk(url)
	if err != nil {
		fatalf("rss child: %v", err)
	}
	idle := vmRSS()
	var running atomic.Int64
	block := make(chan struct{})
	if err := sys.startWorker(n, func(benchArgs) {
		running.Add(1)
		<-block
	}); err != nil {
		fatalf("rss child: start worker: %v", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for running.Load() < int64(n) {
		if time.Now().After(deadline) {
			fatalf("rss child: only %d of %d tasks running", running.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let the fetch loop settle
	fmt.Printf("idle_kib %d loaded_kib %d\n", idle, vmRSS())
	os.Exit(0)
}

// vmRSS returns this process's VmRSS from /proc/self/status, in KiB.
func vmRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		fatalf("read /proc/self/status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				fatalf("VmRSS %q: %v", v, err)
			}
			return kib
		}
	}
	fatalf("no VmRSS in /proc/self/status")
	return 0
}
