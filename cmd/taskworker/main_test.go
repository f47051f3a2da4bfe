package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/kiq-go/kiq/worker/cli"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// The no-flag quick start: tasks kicked, run and acknowledged within
// seconds, failures dead-lettered, with a progress line.
func TestQuickStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testlog.Buffer
	code := make(chan int, 1)
	app := cli.App{Name: "taskworker", Setup: setup, Demo: demo}
	go func() { code <- app.Run(ctx, []string{"--progress", "100ms"}, &bytes.Buffer{}, &stderr) }()
	done := regexp.MustCompile(`done=([1-9][0-9]{2,}) failed=[1-9]`)
	require.Eventually(t, func() bool { return done.MatchString(stderr.String()) }, 10*time.Second, 50*time.Millisecond,
		"hundreds of tasks done and some failed within seconds")
	cancel()
	require.Equal(t, 0, <-code)
}
