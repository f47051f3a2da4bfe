package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/kiq-go/kiq/internal/redistest"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestRun(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), redistest.Shared(t).URL(), &out))
	require.Equal(t, `welcome user 42, en              queued
welcome user 42, fr              duplicate of the lock example:keyfields:b5e8643ba5338ce0
welcome user 7, fr               queued
report for 2026-11-23            queued
report for 2026-11-24            duplicate of the lock example:keyfields:nightly-report
report, deduplication off        queued
`, out.String())
}
