package broker_test

import (
	"math"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/stretchr/testify/require"
)

func TestNormalizeLabel(t *testing.T) {
	cases := []struct {
		key  string
		in   any
		want any
	}{
		{"deduplication_ttl", 60, int64(60)},
		{"deduplication_ttl", "60", int64(60)},
		{"deduplication_ttl", 90 * time.Second, int64(90)},
		{"deduplication_ttl", 1500 * time.Millisecond, 1.5},
		{"deduplication_ttl", "2m", int64(120)},
		{"timeout", 2.0, int64(2)},
		{"max_retries", uint8(5), int64(5)},
		{"max_retries", "5", int64(5)},
		{"deduplication", "false", false},
		{"deduplication", true, true},
		{"deduplication_key_fields", "user_id, locale", []string{"user_id", "locale"}},
		{"deduplication_key_fields", []any{"a"}, []string{"a"}},
		{"deduplication_key_fields", "", []string{}},
		{"queue", "emails", "emails"},
		{"my_label", "60", "60"}, // unknown: untouched
		{"my_label", 3.5, 3.5},
	}
	for _, c := range cases {
		got, err := broker.NormalizeLabel(c.key, c.in)
		require.NoError(t, err, "%s=%v", c.key, c.in)
		require.Equal(t, c.want, got, "%s=%v", c.key, c.in)
	}
}

func TestNormalizeLabelRejectsWrongTypes(t *testing.T) {
	bad := []struct {
		key string
		in  any
	}{
		{"deduplication_ttl", "soon"},
		{"deduplication_ttl", true},
		{"max_retries", 1.5},
		{"max_retries", uint64(1 << 63)},
		{"deduplication", "maybe"},
		{"deduplication", 1},
		{"deduplication_key", 42},
		{"deduplication_key_fields", []any{1}},
		{"queue", []string{"a"}},
	}
	for _, c := range bad {
		_, err := broker.NormalizeLabel(c.key, c.in)
		require.ErrorIs(t, err, broker.ErrBadLabel, "%s=%v", c.key, c.in)
		require.Contains(t, err.Error(), c.key)
	}
}

func TestMergeLaterLayersWin(t *testing.T) {
	tags := broker.Labels{"deduplication_ttl": int64(60), "a": 1}
	got, err := tags.Merge(broker.Labels{"deduplication_ttl": "30"}, broker.Labels{"deduplication_ttl": 10 * time.Second, "b": 2})
	require.NoError(t, err)
	require.Equal(t, broker.Labels{"deduplication_ttl": int64(10), "a": 1, "b": 2}, got)
	require.Equal(t, int64(60), tags["deduplication_ttl"], "Merge must not change its receiver")
}

func TestAccessorsReadDecodedForms(t *testing.T) {
	// After a msgpack round trip lists arrive as []any and ints as int64.
	l := broker.Labels{"f": []any{"a", "b"}, "n": int64(3), "s": "x", "b": true, "d": 1.5, "str": "7"}
	fs, ok := l.Strings("f")
	require.True(t, ok)
	require.Equal(t, []string{"a", "b"}, fs)
	n, ok := l.Int("n")
	require.True(t, ok)
	require.Equal(t, int64(3), n)
	_, ok = l.Int("str")
	require.False(t, ok, "a string is not an int to a reader")
	d, ok := l.Duration("d")
	require.True(t, ok)
	require.Equal(t, 1500*time.Millisecond, d)
	_, ok = l.Duration("missing")
	require.False(t, ok)
	b, ok := l.Bool("b")
	require.True(t, ok && b)
}

func TestMessageRoundTrip(t *testing.T) {
	m := &broker.Message{TaskID: broker.NewTaskID(), TaskName: "t", Labels: broker.Labels{"deduplication_key_fields": []string{"a"}, "queue": "q"}, Args: []byte{0x80}, Attempt: 2, EnqueuedAt: 1}
	raw, err := broker.Msgpack.EncodeMessage(m)
	require.NoError(t, err)
	got, err := broker.Msgpack.DecodeMessage(raw)
	require.NoError(t, err)
	require.Equal(t, m.TaskID, got.TaskID)
	require.Equal(t, 2, got.Attempt)
	require.Equal(t, "q", got.Queue("default"))
	fs, _ := got.Labels.Strings("deduplication_key_fields")
	require.Equal(t, []string{"a"}, fs)
	require.Len(t, m.TaskID, 32)
}

func TestDecodeMessageRejectsGarbage(t *testing.T) {
	for _, raw := range [][]byte{nil, []byte("garbage"), {0x81, 0xa1}, {0xdf, 0xff, 0xff, 0xff, 0xff}, {0x80}} {
		_, err := broker.Msgpack.DecodeMessage(raw)
		require.ErrorIs(t, err, broker.ErrMalformed, "%x", raw)
	}
}

func TestDurationReadsAnUnnormalizedDuration(t *testing.T) {
	d, ok := broker.Labels{broker.LabelDelay: 300 * time.Millisecond}.Duration(broker.LabelDelay)
	require.True(t, ok)
	require.Equal(t, 300*time.Millisecond, d)
	d, ok = broker.Labels{broker.LabelDelay: 0.3}.Duration(broker.LabelDelay)
	require.True(t, ok)
	require.Equal(t, 300*time.Millisecond, d)
}

// Seconds past what a time.Duration holds saturate instead of wrapping: a
// delay of 10^10 seconds is a delay, never a task delivered at once.
func TestDurationSaturates(t *testing.T) {
	for _, v := range []any{int64(1e10), 1e300} {
		d, ok := broker.Labels{broker.LabelDelay: v}.Duration(broker.LabelDelay)
		require.True(t, ok)
		require.Equal(t, time.Duration(math.MaxInt64), d, "%v", v)
		require.Greater(t, (&broker.Message{Labels: broker.Labels{broker.LabelDelay: v}}).Delay(), 200*365*24*time.Hour)
	}
	d, ok := broker.Labels{broker.LabelDelay: int64(-1e10)}.Duration(broker.LabelDelay)
	require.True(t, ok)
	require.Equal(t, time.Duration(math.MinInt64), d)
}
