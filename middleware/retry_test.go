package middleware_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/task"
	"github.com/stretchr/testify/require"
)

func retryMsg(attempt int, labels broker.Labels) *broker.Message {
	l, err := broker.Labels{broker.LabelRetryOnError: true}.Merge(labels)
	if err != nil {
		panic(err)
	}
	return &broker.Message{TaskID: "t", TaskName: "t", Attempt: attempt, Labels: l}
}

func TestBackoffIsExponentialWithFullJitterAndACap(t *testing.T) {
	var draw float64
	r := middleware.NewRetry(middleware.RetryOptions{Base: time.Second, Cap: 10 * time.Second, Rand: func() float64 { return draw }})
	bounds := []time.Duration{1, 2, 4, 8, 10, 10, 10}
	for attempt, bound := range bounds {
		draw = 0.999999
		d, retry := r.RetryDelay(retryMsg(attempt, broker.Labels{broker.LabelMaxRetries: 100}), errors.New("x"))
		require.True(t, retry)
		require.InDelta(t, float64(bound*time.Second), float64(d), float64(time.Millisecond), "attempt %d: the top of the range", attempt)
		draw = 0
		d, _ = r.RetryDelay(retryMsg(attempt, broker.Labels{broker.LabelMaxRetries: 100}), errors.New("x"))
		require.Zero(t, d, "full jitter reaches zero")
	}
	draw = 0.5
	d, _ := r.RetryDelay(retryMsg(200, broker.Labels{broker.LabelMaxRetries: 1000}), errors.New("x"))
	require.Equal(t, 5*time.Second, d, "no overflow at high attempts")
}

func TestBackoffLabelsOverrideTheOptions(t *testing.T) {
	r := middleware.NewRetry(middleware.RetryOptions{Rand: func() float64 { return 0.5 }})
	labels := broker.Labels{broker.LabelRetryBackoffBase: 0.1, broker.LabelRetryBackoffCap: "500ms", broker.LabelMaxRetries: 10}
	d, _ := r.RetryDelay(retryMsg(2, labels), errors.New("x"))
	require.Equal(t, 200*time.Millisecond, d, "half of min(0.5 s, 0.1 s·2²)")
	d, _ = r.RetryDelay(retryMsg(3, labels), errors.New("x"))
	require.Equal(t, 250*time.Millisecond, d, "half of min(0.5 s, 0.1 s·2³)")
}

func TestWhichFailuresAreRetried(t *testing.T) {
	r := middleware.NewRetry(middleware.RetryOptions{})
	always := middleware.NewRetry(middleware.RetryOptions{Always: true})
	plain := errors.New("x")
	cases := []struct {
		name  string
		r     *middleware.Retry
		msg   *broker.Message
		err   error
		retry bool
	}{
		{"labelled", r, retryMsg(0, nil), plain, true},
		{"not labelled", r, &broker.Message{}, plain, false},
		{"labelled off", always, retryMsg(0, broker.Labels{broker.LabelRetryOnError: false}), plain, false},
		{"always", always, &broker.Message{}, plain, true},
		{"default max 3: third retry", r, retryMsg(2, nil), plain, true},
		{"default max 3: no fourth", r, retryMsg(3, nil), plain, false},
		{"max_retries label", r, retryMsg(5, broker.Labels{broker.LabelMaxRetries: 6}), plain, true},
		{"max_retries 0", r, retryMsg(0, broker.Labels{broker.LabelMaxRetries: 0}), plain, false},
		{"skip retry", r, retryMsg(0, nil), task.SkipRetry, false},
		{"wrapped skip retry", r, retryMsg(0, nil), fmt.Errorf("gone: %w", task.SkipRetry), false},
		{"bad arguments", r, retryMsg(0, nil), fmt.Errorf("x: %w", broker.ErrMalformed), false},
	}
	for _, c := range cases {
		_, retry := c.r.RetryDelay(c.msg, c.err)
		require.Equal(t, c.retry, retry, c.name)
	}
	d, retry := r.RetryDelay(retryMsg(0, nil), fmt.Errorf("rate limited: %w", task.RetryAfter(42*time.Second)))
	require.True(t, retry)
	require.Equal(t, 42*time.Second, d, "RetryAfter overrides the backoff")
	_, retry = r.RetryDelay(retryMsg(3, nil), task.RetryAfter(time.Second))
	require.False(t, retry, "but not max_retries")
}

// A negative attempt (refused by the decoder, but a Message can be built by
// hand) backs off as the first attempt does, without a negative shift.
func TestBackoffClampsANegativeAttempt(t *testing.T) {
	r := middleware.NewRetry(middleware.RetryOptions{Base: time.Second, Cap: 10 * time.Second, Rand: func() float64 { return 0.999999 }})
	var d time.Duration
	require.NotPanics(t, func() { d = r.Backoff(retryMsg(-1, nil)) })
	require.InDelta(t, float64(time.Second), float64(d), float64(time.Millisecond), "the first attempt's bound")
}
