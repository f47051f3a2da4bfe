package task_test

import (
	"testing"

	"github.com/kiq-go/kiq/internal/redistest"
)

// TestMain fails the run when a test leaves goroutines running.
func TestMain(m *testing.M) { redistest.Main(m) }
