package broker_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"pgregory.net/rapid"
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

// BenchmarkDecodeArgs decodes a task's arguments into a struct, as the
// worker does before every run.
func BenchmarkDecodeArgs(b *testing.B) {
	type args struct {
		User  string   `msgpack:"user"`
		Count int      `msgpack:"count"`
		Tags  []string `msgpack:"tags"`
	}
	raw, err := broker.Msgpack.EncodeArgs(args{User: "ada", Count: 3, Tags: []string{"a", "b"}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var v args
		if err := broker.Msgpack.DecodeArgs(raw, &v); err != nil {
			b.Fatal(err)
		}
	}
}

// The hand-written decoder must read what msgpack's reflection reads by the
// struct's tags, field for field: envelopes with their keys in any order,
// repeated, unknown, nil, in other encodings (str8, bin, wide integers), or
// of the wrong type, give the same message or both an error.
func TestDecodeMessageMatchesTheTags(t *testing.T) {
	names := []string{"task_id", "task_name", "labels", "args", "attempt", "enqueued_at", "other", "", "Task_id", "a_key_longer_than_any_field"}
	rapid.Check(t, func(t *rapid.T) {
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		valid := rapid.Bool().Draw(t, "valid") // starts with a task id and name
		n := rapid.IntRange(0, 8).Draw(t, "fields")
		if valid {
			require.NoError(t, enc.EncodeMapLen(n+2))
			require.NoError(t, enc.EncodeString("task_id"))
			require.NoError(t, enc.EncodeString("id"))
			require.NoError(t, enc.EncodeString("task_name"))
			require.NoError(t, enc.EncodeString("t"))
		} else {
			require.NoError(t, enc.EncodeMapLen(n))
		}
		for i := range n {
			key := rapid.SampledFrom(names).Draw(t, fmt.Sprint("key", i))
			switch rapid.IntRange(0, 3).Draw(t, fmt.Sprint("keyForm", i)) {
			case 0:
				buf.Write(append([]byte{0xd9, byte(len(key))}, key...)) // str8 where fixstr would do
			case 1:
				require.NoError(t, enc.EncodeBytes([]byte(key)))
			default:
				require.NoError(t, enc.EncodeString(key))
			}
			// Half the values are of the field's type, the others anything.
			kind := rapid.IntRange(0, 9).Draw(t, fmt.Sprint("value", i))
			if rapid.Bool().Draw(t, fmt.Sprint("fits", i)) {
				kind = map[string]int{"task_id": 1, "task_name": 2, "labels": 6, "attempt": 3, "enqueued_at": 5, "args": 8}[key] // 0 (nil) for the others
			}
			var err error
			switch kind {
			case 0:
				err = enc.EncodeNil()
			case 1:
				err = enc.EncodeString(rapid.StringN(0, 8, -1).Draw(t, "s"))
			case 2:
				err = enc.EncodeBytes([]byte(rapid.StringN(0, 8, -1).Draw(t, "b")))
			case 3:
				err = enc.EncodeInt(rapid.Int64().Draw(t, "i"))
			case 4:
				err = enc.EncodeInt64(rapid.Int64Range(-3, 3).Draw(t, "i64")) // always 9 bytes
			case 5:
				err = enc.EncodeUint64(rapid.Uint64().Draw(t, "u64"))
			case 6:
				err = enc.Encode(map[string]any{"timeout": 5, "tags": []string{"a"}, "on": true, "f": 1.5})
			case 7:
				err = enc.Encode(map[string]any{})
			case 8:
				err = enc.Encode([]any{1, "x", nil})
			default:
				err = enc.EncodeFloat64(2.5)
			}
			require.NoError(t, err)
		}
		raw := buf.Bytes()

		want, wantErr := decodeByTags(raw)
		if wantErr == nil && (want.TaskID == "" || want.TaskName == "" || want.Attempt < 0) {
			wantErr = errors.New("invalid")
		}
		got, err := broker.Msgpack.DecodeMessage(raw)
		if wantErr != nil {
			require.ErrorIs(t, err, broker.ErrMalformed, "msgpack: %v", wantErr)
			return
		}
		require.NoError(t, err)
		require.Equal(t, &want, got)
	})
}

// decodeByTags decodes raw as msgpack's reflection does by Message's tags,
// with the formatter's loose decoding of interface values: what
// DecodeMessage must agree with.
func decodeByTags(raw []byte) (broker.Message, error) {
	var m broker.Message
	d := msgpack.NewDecoder(bytes.NewReader(raw))
	d.UseLooseInterfaceDecoding(true)
	err := d.Decode(&m)
	return m, err
}
