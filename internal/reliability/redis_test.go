package reliability_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loadReport is what the producers of runLoad saw.
type loadReport struct {
	kicked       int           // kicks Redis acknowledged
	failed       int           // kicks that returned an error (each retried)
	failedDuring int           // of those, overlapping the fault
	slowest      time.Duration // the longest kick overlapping the fault
	okAfter      int           // acknowledged kicks started after the fault
	logs         string        // the worker's logs
}

// runLoad runs a worker and four producers that kick without pause, from
// before fault starts until after it returns, each retrying a failed kick
// until Redis acknowledges it (or reports it a duplicate of an earlier
// attempt that did land). Every acknowledged kick must run.
func runLoad(t *testing.T, srv *redistest.Server, fault func()) loadReport {
	prefix := "load"
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	b, record, err := setup(srv.URL(), prefix, 100*time.Millisecond)
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := worker.New(b, worker.Options{Concurrency: 8, ErrorBackoff: 200 * time.Millisecond, Logger: log})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	var (
		next             atomic.Int64 // the next task number
		faultAt, endedAt atomic.Int64 // UnixNano; 0: not yet
		stop             = make(chan struct{})
		mu               sync.Mutex
		acked            []int
		rep              loadReport
		producers        sync.WaitGroup
	)
	for range 4 {
		producers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := int(next.Add(1))
				for {
					began := time.Now()
					// Short enough that a kick stuck in go-redis's own retries
					// during an outage ends in an error the producer sees.
					kctx, kcancel := context.WithTimeout(ctx, 500*time.Millisecond)
					_, err := record.Kiq(kctx, RecordArgs{N: n})
					kcancel()
					took := time.Since(began)
					// during: the kick overlapped the fault; after: it began
					// once the fault was over.
					from, to := faultAt.Load(), endedAt.Load()
					during := from != 0 && from <= began.Add(took).UnixNano() && (to == 0 || to >= began.UnixNano())
					after := to != 0 && to < began.UnixNano()
					mu.Lock()
					if during {
						rep.slowest = max(rep.slowest, took)
					}
					switch {
					case err == nil:
						acked = append(acked, n)
						rep.kicked++
						if after {
							rep.okAfter++
						}
					case errors.Is(err, dedup.ErrDuplicateTask):
						// An earlier attempt landed though its reply was lost.
					default:
						rep.failed++
						if during {
							rep.failedDuring++
						}
					}
					mu.Unlock()
					if err == nil || errors.Is(err, dedup.ErrDuplicateTask) {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	faultAt.Store(time.Now().UnixNano())
	fault()
	endedAt.Store(time.Now().UnixNano())
	// Kick on until 50 kicks begun after the fault succeeded. go-redis's
	// pool may answer with its last dial error for up to a second after
	// Redis is back, before its background dial notices.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return rep.okAfter >= 50
	}, 10*time.Second, 10*time.Millisecond, "producers carry on after the fault")
	close(stop)
	producers.Wait()

	client := b.Client()
	bg := context.Background()
	if !assert.Eventually(t, func() bool {
		s, err := b.Stats(bg, broker.DefaultQueue)
		return err == nil && s.Pending == 0 && s.InFlight == 0 && s.Scheduled == 0
	}, 30*time.Second, 50*time.Millisecond, "the queue drains") {
		s, err := b.Stats(bg, broker.DefaultQueue)
		for _, k := range client.Keys(bg, prefix+":{taskiq}:wip:*").Val() {
			t.Logf("in flight on %s: %q", k, client.LRange(bg, k, 0, -1).Val())
		}
		t.Fatalf("%d acknowledged, %d executed; stats %+v (%v); worker logs:\n%s",
			len(acked), client.HLen(bg, prefix+":executions").Val(), s, err, logs.String())
	}
	for _, n := range acked {
		require.NotZero(t, client.HGet(bg, prefix+":executions", strconv.Itoa(n)).Val(), "acknowledged kick %d was lost", n)
	}
	cancel()
	require.NoError(t, <-done)
	rep.logs = logs.String()
	t.Logf("%d kicks acknowledged (%d after the fault), %d failed and were retried (%d during the fault), slowest kick during the fault %v; worker logs:\n%s",
		rep.kicked, rep.okAfter, rep.failed, rep.failedDuring, rep.slowest.Round(time.Millisecond), rep.logs)
	return rep
}

// Redis restarted mid-run (killed, then started again from its append-only
// file) while producers kick: producers get errors and retry, the worker
// logs the outage and its recovery, everyone reconnects and carries on;
// every acknowledged kick runs; goroutines end (goleak in TestMain).
func TestRedisRestartMidRun(t *testing.T) {
	redistest.RequireReal(t, "an append-only file to restart from")
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	rep := runLoad(t, srv, func() {
		srv.Kill(t)
		// Longer than go-redis's own retries, which hide a shorter outage
		// from everyone: 3, backing off up to 512 ms, each dialling up to 5
		// times 100 ms apart, and twice for a pipeline (its own pool, then
		// the main one), as for a consumer blocked in BLMOVE with its take:
		// about 2.5 s.
		time.Sleep(3 * time.Second)
		srv.Revive(t)
	})
	require.Positive(t, rep.failedDuring, "kicks during the outage failed and were reported to the producer")
	require.Contains(t, rep.logs, "broker call failed", "the worker logged the outage")
	require.Contains(t, rep.logs, "broker call recovered", "and its end")
}

// Redis paused mid-run (CLIENT PAUSE) while producers kick: their kicks
// wait for the pause to end, then everyone carries on.
func TestRedisPausedMidRun(t *testing.T) {
	redistest.RequireReal(t, "CLIENT PAUSE")
	srv := redistest.Start(t)
	admin := srv.Client(t)
	rep := runLoad(t, srv, func() {
		require.NoError(t, admin.Do(context.Background(), "CLIENT", "PAUSE", 500, "ALL").Err())
		time.Sleep(500 * time.Millisecond)
	})
	require.True(t, rep.failedDuring > 0 || rep.slowest >= 250*time.Millisecond,
		"kicks during the pause were blocked (slowest %v) or failed (%d)", rep.slowest, rep.failedDuring)
}

// Fail-closed and fail-open deduplication while the lock's Redis is down.
func TestDedupOutageModes(t *testing.T) {
	locks := redistest.Start(t)
	queue := redistest.Start(t)
	ctx := context.Background()
	b, err := broker.NewListQueue(queue.URL())
	require.NoError(t, err)
	defer b.Shutdown(ctx)
	closed, err := dedup.New(locks.URL(), dedup.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	b.WithMiddlewares(closed)
	b2, err := broker.NewListQueue(queue.URL(), broker.WithQueueName("open"))
	require.NoError(t, err)
	defer b2.Shutdown(ctx)
	open, err := dedup.New(locks.URL(), dedup.WithFailOpen(true), dedup.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	b2.WithMiddlewares(open)
	tClosed := task.Define(b, "t", func(context.Context, RecordArgs) error { return nil })
	tOpen := task.Define(b2, "t", func(context.Context, RecordArgs) error { return nil })
	locks.Kill(t)

	_, err = tClosed.Kiq(ctx, RecordArgs{N: 1})
	require.Error(t, err, "fail-closed: the lock's Redis is down, the task is not sent")
	_, err = tOpen.Kiq(ctx, RecordArgs{N: 1})
	require.NoError(t, err, "fail-open: sent without a lock")
	s, err := b.Stats(ctx, broker.DefaultQueue)
	require.NoError(t, err)
	require.Zero(t, s.Pending)
	s, err = b2.Stats(ctx, "open")
	require.NoError(t, err)
	require.Equal(t, int64(1), s.Pending)

	locks.Revive(t)
	_, err = tClosed.Kiq(ctx, RecordArgs{N: 1})
	require.NoError(t, err, "back to normal once Redis is back")
}

// A Redis URL's password appears in no error and no log line, even while
// the server refuses connections.
func TestPasswordStaysSecret(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill(t)
	url := "redis://kiq:hunter2-secret@" + srv.Addr() + "/0"
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	b, err := broker.NewListQueue(url, broker.WithLogger(log))
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	tk := task.Define(b, "t", func(context.Context, RecordArgs) error { return nil })
	_, err = tk.Kiq(context.Background(), RecordArgs{})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
	_, err = dedup.New("redis://kiq:hunter2-secret@[::1/0")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	require.NoError(t, worker.New(b, worker.Options{Logger: log, ErrorBackoff: 50 * time.Millisecond}).Run(ctx))
	require.Contains(t, logs.String(), "broker call failed", "the worker did log the outage")
	require.NotContains(t, logs.String(), "hunter2")
}

// An ACL user with a password, over TLS (rediss://), runs tasks end to end.
func TestACLUserOverTLS(t *testing.T) {
	redistest.RequireReal(t, "TLS and ACL users")
	dir := t.TempDir()
	cert, key := writeSelfSignedCert(t, dir)
	tlsPort := freePort(t)
	srv := redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", cert, "--tls-key-file", key,
		"--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
	ctx := context.Background()
	require.NoError(t, srv.Client(t).Do(ctx, "ACL", "SETUSER", "kiquser", "on", ">s3cret-pw", "~*", "&*", "+@all").Err())

	url := fmt.Sprintf("rediss://kiquser:s3cret-pw@127.0.0.1:%d/0?skip_verify=true", tlsPort)
	b, err := broker.NewListQueue(url)
	require.NoError(t, err)
	defer b.Shutdown(ctx)
	mw, err := dedup.New(url)
	require.NoError(t, err)
	b.WithMiddlewares(mw)
	ran := make(chan int, 1)
	tk := task.Define(b, "t", func(ctx context.Context, a RecordArgs) error { ran <- a.N; return nil })
	_, err = tk.Kiq(ctx, RecordArgs{N: 5})
	require.NoError(t, err)
	_, err = tk.Kiq(ctx, RecordArgs{N: 5})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.New(b, worker.Options{Logger: slog.New(slog.DiscardHandler)}).Run(wctx) }()
	require.Equal(t, 5, <-ran)
	cancel()
	require.NoError(t, <-done)

	wrong, err := broker.NewListQueue(fmt.Sprintf("rediss://kiquser:wrong@127.0.0.1:%d/0?skip_verify=true", tlsPort))
	require.NoError(t, err, "constructors open no connection")
	require.NoError(t, wrong.Shutdown(ctx))
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeSelfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(priv)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}
