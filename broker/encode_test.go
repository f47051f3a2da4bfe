package broker_test

import (
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// The hand-written encoder must say what msgpack.Marshal says by the
// struct's tags: both decode to the same message.
func TestEncodeMessageMatchesTheTags(t *testing.T) {
	for name, m := range map[string]*broker.Message{
		"full": {TaskID: "id", TaskName: "t", Labels: broker.Labels{"a": int64(1), "b": []any{"x"}, "c": map[string]any{"d": 1.5}},
			Args: []byte{0x81, 0xa1, 'n', 0x01}, Attempt: 3, EnqueuedAt: 1700000000000},
		"bare": {TaskID: "id", TaskName: "t"},
		"wide": {TaskID: "id", TaskName: "t", Labels: broker.Labels{}, Args: []byte{0x80}, Attempt: 1 << 40, EnqueuedAt: -5},
	} {
		t.Run(name, func(t *testing.T) {
			mine, err := broker.Msgpack.EncodeMessage(m)
			require.NoError(t, err)
			tags, err := msgpack.Marshal(m)
			require.NoError(t, err)
			var a, b broker.Message
			require.NoError(t, msgpack.Unmarshal(mine, &a))
			require.NoError(t, msgpack.Unmarshal(tags, &b))
			require.Equal(t, b, a)
			got, err := broker.Msgpack.DecodeMessage(mine)
			require.NoError(t, err)
			require.Equal(t, &b, got)
		})
	}
}

// benchMessage is a typical envelope: a deduplicated task with a handful of
// labels and small arguments.
func benchMessage(b *testing.B) *broker.Message {
	args, err := broker.Msgpack.EncodeArgs(struct {
		UserID int    `msgpack:"user_id"`
		Locale string `msgpack:"locale"`
	}{42, "en"})
	if err != nil {
		b.Fatal(err)
	}
	return &broker.Message{
		TaskID:   broker.NewTaskID(),
		TaskName: "send_welcome",
		Labels: broker.Labels{
			broker.LabelDeduplicationTTL: 60 * time.Second,
			broker.LabelRetryOnError:     true,
			"deduplication_lock":         "taskiq:deduplication:cee093b143e6665f",
		},
		Args:       args,
		EnqueuedAt: time.Now().UnixMilli(),
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	m := benchMessage(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := broker.Msgpack.EncodeMessage(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeMessage(b *testing.B) {
	raw, err := broker.Msgpack.EncodeMessage(benchMessage(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := broker.Msgpack.DecodeMessage(raw); err != nil {
			b.Fatal(err)
		}
	}
}
