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
	require.Equal(t, `kicked send_welcome(user_id=42)
duplicate rejected: task=send_welcome key=example:dedup:b8ff1d04b6b731fb holder is the first task: true
worker ran send_welcome(user_id=42)
lock released: kicked send_welcome(user_id=42) again
`, out.String())
}
