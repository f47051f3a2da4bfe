package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kiq-go/kiq/internal/testlog"

	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestTheDemoShouts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testlog.Buffer
	code := make(chan int, 1)
	go func() { code <- app().Run(ctx, []string{"--progress", "0"}, &bytes.Buffer{}, &stderr) }()
	require.Eventually(t, func() bool {
		s := stderr.String()
		return strings.Contains(s, "HELLO 0!") && strings.Contains(s, "HELLO 1!") && strings.Contains(s, "HELLO 2!")
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.Equal(t, 0, <-code)
}
