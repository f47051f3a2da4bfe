package kiq_test

// Temporary: keeps test dependencies in go.mod while packages are written.
import (
	_ "github.com/alicebob/miniredis/v2"
	_ "github.com/stretchr/testify/require"
	_ "go.uber.org/goleak"
	_ "golang.org/x/sync/errgroup"
	_ "pgregory.net/rapid"
)
