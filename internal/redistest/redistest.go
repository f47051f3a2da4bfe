// Package redistest starts private Redis servers for tests: a real
// redis-server on a free loopback port, or, on a machine without the binary,
// an in-process miniredis, announced loudly in the test output. CI (CI=true)
// refuses the fallback.
//
// Packages that use it call Main from TestMain so servers are stopped and
// leaked goroutines reported:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/embedredis"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// Server is a Redis server private to the test binary.
type Server struct {
	addr string
	dir  string
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	mini *embedredis.Server
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error

	allMu sync.Mutex
	all   []*Server

	prefixSeq atomic.Int64
)

// Main runs the tests, stops every server started, and fails the run when
// goroutines leaked: any goroutine alive after the tests and the servers
// ended that was not alive before the tests started (goleak retries for a
// while, so goroutines on their way out are not reported). Extra goleak
// options name goroutines to ignore.
func Main(m *testing.M, opts ...goleak.Option) {
	// go-redis logs every failed dial; outage tests cause many on purpose.
	redis.SetLogger(quietLogger{})
	os.Exit(run(m, opts...))
}

// run is Main without the exit: it returns the exit code.
func run(m interface{ Run() int }, opts ...goleak.Option) int {
	// The snapshot is taken before the tests run: goroutines they start
	// and leave running are reported.
	opts = append(opts, goleak.IgnoreCurrent())
	code := m.Run()
	allMu.Lock()
	for _, s := range all {
		s.stop()
	}
	all = nil
	allMu.Unlock()
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintln(os.Stderr, "redistest: leaked goroutines:", err)
			code = 1
		}
	}
	return code
}

// Shared returns the server shared by the tests of this binary, starting it
// on first use. Tests sharing it keep apart by key prefix (see Prefix).
func Shared(tb testing.TB) *Server {
	tb.Helper()
	sharedOnce.Do(func() { shared, sharedErr = start() })
	if sharedErr != nil {
		tb.Fatalf("redistest: %v", sharedErr)
	}
	return shared
}

// Start returns a server of the test's own, stopped when the test ends: for
// tests that restart, pause or break their Redis.
func Start(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	s, err := start(extraArgs...)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.stop)
	return s
}

// Real reports whether tests run against a real redis-server.
func Real() bool {
	_, err := exec.LookPath("redis-server")
	return err == nil
}

// RequireReal skips the test, and says why, when it would run against
// miniredis: for tests of what only redis-server has (needs names it:
// persistence, TLS, CLIENT PAUSE, CONFIG SET, Redis Cluster). CI refuses
// miniredis, so there they always run.
func RequireReal(tb testing.TB, needs string) {
	tb.Helper()
	if !Real() {
		tb.Skipf("redistest: needs redis-server (%s), which miniredis lacks: not run on this machine, always run in CI", needs)
	}
}

func start(extraArgs ...string) (*Server, error) {
	s := &Server{}
	if !Real() {
		if len(extraArgs) > 0 {
			return nil, fmt.Errorf("redis-server not found: miniredis cannot take %v", extraArgs)
		}
		if os.Getenv("CI") != "" {
			return nil, fmt.Errorf("redis-server not found, and CI refuses the miniredis fallback")
		}
		fmt.Fprintln(os.Stderr, "redistest: WARNING: redis-server not found; running against miniredis (in-process, partial Redis semantics)")
		mini, err := embedredis.Start()
		if err != nil {
			return nil, err
		}
		s.mini, s.addr = mini, mini.Addr()
		register(s)
		return s, nil
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, err
	}
	s.dir = dir
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.args = []string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--unixsocket", "", "--daemonize", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, "redis.log"),
	}
	// Later arguments win: extraArgs can turn persistence on, add TLS, ...
	s.args = append(s.args, extraArgs...)
	if err := s.launch(); err != nil {
		return nil, err
	}
	register(s)
	return s, nil
}

func register(s *Server) {
	allMu.Lock()
	all = append(all, s)
	allMu.Unlock()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// launch starts redis-server and waits until it answers PING.
func (s *Server) launch() error {
	cmd := exec.Command("redis-server", s.args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("redis-server on %s did not answer: %v\n%s", s.addr, err, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mini != nil {
		s.mini.Close()
		return
	}
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// Dir returns the server's working directory (its AOF and RDB files).
func (s *Server) Dir() string { return s.dir }

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.addr }

// URL returns the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.addr }

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix unique to the test, so tests sharing a server
// do not see each other's keys.
func Prefix(tb testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(tb.Name())
	return fmt.Sprintf("t%d_%s", prefixSeq.Add(1), name)
}

// Kill stops the server at once, as a crash would (SIGKILL); Revive starts it
// again on the same address, empty. Both fail the test under miniredis when
// that cannot be done.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mini != nil {
		s.mini.Miniredis.Close() // the server only: its clock goes on, for Revive
		return
	}
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Revive starts a killed server again on the same address.
func (s *Server) Revive(tb testing.TB) {
	tb.Helper()
	if s.mini != nil {
		if err := s.mini.StartAddr(s.addr); err != nil {
			tb.Fatalf("redistest: revive miniredis: %v", err)
		}
		return
	}
	if err := s.launch(); err != nil {
		tb.Fatalf("redistest: revive: %v", err)
	}
}

// quietLogger drops go-redis's internal log lines.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// Proxy forwards connections to a server and can stall them all, as a
// paused or hung Redis would: while paused, it holds every byte in flight,
// both ways. It works the same in front of redis-server and miniredis.
type Proxy struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	resumed chan struct{} // closed while not paused
	conns   []net.Conn
	closed  bool
}

// NewProxy starts a proxy to addr, closed with its connections when the
// test ends.
func NewProxy(tb testing.TB, addr string) *Proxy {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: proxy: %v", err)
	}
	p := &Proxy{l: l, target: addr, resumed: make(chan struct{})}
	close(p.resumed)
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// Addr returns the proxy's host:port.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Pause holds every byte from now on, until Resume.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.resumed:
		p.resumed = make(chan struct{})
	default: // paused already
	}
}

// Resume lets the held bytes and the next ones through.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.resumed:
	default:
		close(p.resumed)
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_, _ = c.Close(), s.Close()
			return
		}
		p.conns = append(p.conns, c, s)
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(s, c)
		go p.pipe(c, s)
	}
}

// pipe copies src to dst, holding what it read while the proxy is paused.
// Either side ending ends both.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			resumed := p.resumed
			p.mu.Unlock()
			<-resumed
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) close() {
	_ = p.l.Close()
	p.Resume()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// StartCluster returns a Redis Cluster of the test's own: n masters, no
// replicas, the 16384 slots split evenly between them, ready (every node
// reports cluster_state:ok and knows all n) when it returns; its nodes stop
// when the test ends. It skips the test on a machine without redis-server.
func StartCluster(tb testing.TB, n int) []*Server {
	tb.Helper()
	RequireReal(tb, "Redis Cluster")
	nodes := make([]*Server, n)
	buses := make([]int, n)
	for i := range nodes {
		bus, err := freePort()
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		buses[i] = bus
		nodes[i] = Start(tb, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus))
	}
	ctx := context.Background()
	first := nodes[0].Client(tb)
	for i, s := range nodes {
		c := s.Client(tb)
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", i*16384/n, (i+1)*16384/n-1).Err(); err != nil {
			tb.Fatalf("redistest: cluster slots of %s: %v", s.addr, err)
		}
		if i == 0 {
			continue
		}
		host, port, _ := net.SplitHostPort(s.addr)
		if err := first.Do(ctx, "CLUSTER", "MEET", host, port, buses[i]).Err(); err != nil {
			tb.Fatalf("redistest: cluster meet %s: %v", s.addr, err)
		}
	}
	want := []string{"cluster_state:ok", "cluster_known_nodes:" + strconv.Itoa(n)}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range nodes {
		c := s.Client(tb)
		for {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, want[0]) && strings.Contains(info, want[1]) {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("redistest: the cluster did not form: %s: %v\n%s", s.addr, err, info)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nodes
}
