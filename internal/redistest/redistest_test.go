package redistest

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

// fakeM stands for testing.M: Run runs f and returns 0.
type fakeM struct{ f func() }

func (m fakeM) Run() int { m.f(); return 0 }

// A goroutine started by the tests and still running after them fails the
// run; one that ended does not.
func TestRunReportsGoroutinesTheTestsLeaked(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	code := run(fakeM{f: func() { go func() { <-stop }() }})
	require.Equal(t, 1, code, "a goroutine the tests left running is a leak")

	done := make(chan struct{})
	code = run(fakeM{f: func() { go func() { close(done) }(); <-done }})
	require.Equal(t, 0, code)
}
