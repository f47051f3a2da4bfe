package reliability_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/kiq-go/kiq/worker"
	"github.com/stretchr/testify/require"
)

// runLoad kicks n tasks from a producer that retries failed kicks, with a
// worker running, and starts fault halfway, in the background: the producer
// keeps kicking while Redis is down or paused (go-redis's own retries hide
// an outage this short from it). It checks every acknowledged kick ran.
func runLoad(t *testing.T, srv *redistest.Server, n int, fault func()) {
	prefix := "load"
	logs := &testlog.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	b, record, err := setup(srv.URL(), prefix, 100*time.Millisecond)
	require.NoError(t, err)
	defer b.Shutdown(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	w := worker.New(b, worker.Options{Concurrency: 8, ErrorBackoff: 200 * time.Millisecond, Logger: log})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	failures := 0
	faulted := make(chan struct{})
	for i := range n {
		if i == n/2 {
			go func() { defer close(faulted); fault() }()
			time.Sleep(50 * time.Millisecond) // the fault has begun
		}
		for {
			kctx, kcancel := context.WithTimeout(ctx, time.Second)
			_, err := record.Kiq(kctx, RecordArgs{N: i})
			kcancel()
			if err == nil {
				break
			}
			failures++
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
	<-faulted
	client := b.Client()
	require.Eventually(t, func() bool {
		return client.HLen(context.Background(), prefix+":executions").Val() == int64(n)
	}, 30*time.Second, 50*time.Millisecond, "an acknowledged kick was lost")
	cancel()
	require.NoError(t, <-done)
	t.Logf("%d tasks; %d kicks failed during the fault and were retried by the producer; worker logs:\n%s", n, failures, logs.String())
}

// Redis restarted mid-run (killed, then started again from its append-only
// file): producers and workers report errors, back off, reconnect and carry
// on; every acknowledged kick runs; goroutines end (goleak in TestMain).
func TestRedisRestartMidRun(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	runLoad(t, srv, 400, func() {
		srv.Kill(t)
		time.Sleep(300 * time.Millisecond)
		srv.Revive(t)
	})
}

// Redis paused mid-run (CLIENT PAUSE): everyone waits, then carries on.
func TestRedisPausedMidRun(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	runLoad(t, srv, 400, func() {
		require.NoError(t, admin.Do(context.Background(), "CLIENT", "PAUSE", 500, "ALL").Err())
		time.Sleep(500 * time.Millisecond) // the producer kicks into the pause meanwhile
	})
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
