package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// server is the Redis the bench runs against: a private redis-server it
// started (and may flush freely), or one given with --redis-url.
type server struct {
	url      string
	opts     *redis.Options
	ctl      *redis.Client // control connection: FLUSHDB, INFO
	private  bool
	mayFlush bool
	cmd      *exec.Cmd // the private server's process
	once     sync.Once
}

// startPrivate starts `redis-server --port <free> --save "" --appendonly no`
// on 127.0.0.1 and waits until it answers.
func startPrivate() (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "yes")
	cmd.Stdout, cmd.Stderr = nil, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server (is it installed?): %w", err)
	}
	s, err := connect(fmt.Sprintf("redis://127.0.0.1:%d/0", port), true)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	s.private, s.cmd = true, cmd
	return s, nil
}

// freePort asks the kernel for a free TCP port on 127.0.0.1, never 6379.
func freePort() (int, error) {
	for range 10 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port != 6379 {
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}

// connect opens the control connection to url and waits up to 5 s for it
// to answer PING.
func connect(url string, mayFlush bool) (*server, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("bad --redis-url: %w", err)
	}
	ctl := redis.NewClient(opts)
	deadline := time.Now().Add(5 * time.Second)
	for {
		err = ctl.Ping(context.Background()).Err()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = ctl.Close()
			return nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &server{url: url, opts: opts, ctl: ctl, mayFlush: mayFlush}, nil
}

// close stops the private server, if any.
func (s *server) close() {
	s.once.Do(func() {
		_ = s.ctl.Close()
		if s.cmd != nil && s.cmd.Process != nil {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
		}
	})
}

// flush empties the database between runs. It refuses on a server given
// with --redis-url unless --flush was given (checked again in main).
func (s *server) flush(ctx context.Context) {
	if !s.mayFlush {
		panic("bench: refusing to FLUSHDB a server given with --redis-url without --flush")
	}
	if err := s.ctl.FlushDB(ctx).Err(); err != nil {
		fatalf("FLUSHDB: %v", err)
	}
}

// version returns redis_version from INFO server.
func (s *server) version(ctx context.Context) string {
	info, err := s.ctl.Info(ctx, "server").Result()
	if err != nil {
		return "unknown"
	}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "redis_version:"); ok {
			return v
		}
	}
	return "unknown"
}

var benchRate = regexp.MustCompile(`([^\r\n:]+): ([0-9.]+) requests per second`)

// redisBenchmark runs `redis-benchmark -c 1 -n <n> -q` with args against
// the server and returns the rate of each test it ran by the test's name,
// the last test's rate, and redis-benchmark's raw output.
func (s *server) redisBenchmark(n int, args ...string) (map[string]float64, float64, string, error) {
	host, port, err := net.SplitHostPort(s.opts.Addr)
	if err != nil {
		return nil, 0, "", err
	}
	all := []string{"-h", host, "-p", port, "-c", "1", "-n", strconv.Itoa(n), "-q"}
	if s.opts.Username != "" {
		all = append(all, "--user", s.opts.Username)
	}
	if s.opts.Password != "" {
		all = append(all, "-a", s.opts.Password, "--no-auth-warning")
	}
	if s.opts.DB != 0 {
		all = append(all, "--dbnum", strconv.Itoa(s.opts.DB))
	}
	out, err := exec.Command("redis-benchmark", append(all, args...)...).CombinedOutput()
	if err != nil {
		return nil, 0, string(out), fmt.Errorf("redis-benchmark: %w", err)
	}
	// -q prints progress lines ending in \r before each result line.
	text := string(out)
	rates := map[string]float64{}
	var last float64
	for _, m := range benchRate.FindAllStringSubmatch(text, -1) {
		last, _ = strconv.ParseFloat(m[2], 64)
		rates[strings.TrimSpace(m[1])] = last
	}
	if len(rates) == 0 {
		return nil, 0, text, fmt.Errorf("redis-benchmark: no rate in %q", text)
	}
	return rates, last, text, nil
}

// pingCeiling runs `redis-benchmark -c 1 -n <n> -t ping -q` and returns
// the PING_MBULK rate (RESP arrays, as clients send; PING_INLINE where an
// old redis-benchmark has no other): one connection's round trips, with
// nothing for Redis to do.
func (s *server) pingCeiling(n int) (float64, string, error) {
	rates, _, text, err := s.redisBenchmark(n, "-t", "ping")
	if err != nil {
		return 0, text, err
	}
	if r, ok := rates["PING_MBULK"]; ok {
		return r, text, nil
	}
	if r, ok := rates["PING_INLINE"]; ok {
		return r, text, nil
	}
	return 0, text, fmt.Errorf("redis-benchmark: no PING rate in %q", text)
}

// lockAndQueue is the least a deduplicated enqueue asks of Redis in one
// atomic step: take the lock, store the message, queue its id.
var lockAndQueue = redis.NewScript(`if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3])
  redis.call('LPUSH', KEYS[3], ARGV[1])
  return 1
end
return 0`)

// scriptCeiling runs lockAndQueue from redis-benchmark, one connection, n
// times with a fresh lock key and task id each (a 120-byte message, about
// a benchmark task's), and returns its rate: what a client that waits for
// each reply, with no work of its own, reaches with a deduplicated enqueue.
func (s *server) scriptCeiling(ctx context.Context, n int) (float64, string, error) {
	sha, err := lockAndQueue.Load(ctx, s.ctl).Result()
	if err != nil {
		return 0, "", err
	}
	_, rate, text, err := s.redisBenchmark(n, "-r", "1000000000", "EVALSHA", sha, "3",
		"bench:ceiling:lock:__rand_int__", "bench:ceiling:msg", "bench:ceiling:pending",
		"__rand_int__", "300000", strings.Repeat("m", 120))
	return rate, text, err
}

// goPingRate returns the rate of back-to-back PINGs from one goroutine on a
// fresh go-redis client for d: the same round trip as pingCeiling, through
// the client library both systems use.
func (s *server) goPingRate(ctx context.Context, d time.Duration) (float64, error) {
	c := redis.NewClient(s.opts)
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return 0, err
	}
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		if err := c.Ping(ctx).Err(); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
