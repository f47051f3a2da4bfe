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

var pingRate = regexp.MustCompile(`(PING_\w+): ([0-9.]+) requests per second`)

// pingCeiling runs `redis-benchmark -c 1 -n <n> -t ping -q` against the
// server and returns the PING_MBULK rate (RESP arrays, as clients send),
// and redis-benchmark's raw output.
func (s *server) pingCeiling(n int) (float64, string, error) {
	host, port, err := net.SplitHostPort(s.opts.Addr)
	if err != nil {
		return 0, "", err
	}
	args := []string{"-h", host, "-p", port, "-c", "1", "-n", strconv.Itoa(n), "-t", "ping", "-q"}
	if s.opts.Username != "" {
		args = append(args, "--user", s.opts.Username)
	}
	if s.opts.Password != "" {
		args = append(args, "-a", s.opts.Password, "--no-auth-warning")
	}
	if s.opts.DB != 0 {
		args = append(args, "--dbnum", strconv.Itoa(s.opts.DB))
	}
	out, err := exec.Command("redis-benchmark", args...).CombinedOutput()
	if err != nil {
		return 0, string(out), fmt.Errorf("redis-benchmark: %w", err)
	}
	// -q prints progress lines ending in \r before the result line.
	text := string(out)
	rates := map[string]float64{}
	for _, m := range pingRate.FindAllStringSubmatch(text, -1) {
		rates[m[1]], _ = strconv.ParseFloat(m[2], 64)
	}
	if r, ok := rates["PING_MBULK"]; ok {
		return r, text, nil
	}
	if r, ok := rates["PING_INLINE"]; ok {
		return r, text, nil
	}
	return 0, text, fmt.Errorf("redis-benchmark: no PING rate in %q", text)
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
