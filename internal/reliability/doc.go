// Package reliability holds the tests that back docs/guarantees.md: real
// worker and producer processes killed with SIGKILL under load, Redis
// restarted and paused mid-run, hostile input soaked through a worker, and
// secrets kept out of logs. It has no code of its own.
//
// The tests run in CI within a few minutes. KIQ_SOAK=1 makes them longer
// (more tasks, more kills, more garbage) for a soak run:
//
//	KIQ_SOAK=1 go test -race -run . -v ./internal/reliability
package reliability
