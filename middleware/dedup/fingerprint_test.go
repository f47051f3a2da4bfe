package dedup_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/pyjson"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// slowFingerprint is the fingerprint of raw through the generic path: the
// formatter decodes the arguments, then the canonical JSON of the values.
func slowFingerprint(name string, raw []byte) (string, error) {
	var kwargs map[string]any
	if err := broker.Msgpack.DecodeArgs(raw, &kwargs); err != nil {
		return "", err
	}
	return dedup.Fingerprint(name, kwargs)
}

// genTime draws a time.Time in a random zone, of each of msgpack's three
// timestamp lengths; with unusual, also years past 9999, which have no RFC
// 3339 text.
func genTime(unusual bool) *rapid.Generator[any] {
	lastSec := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
	secs := []*rapid.Generator[int64]{
		rapid.Int64Range(0, 1<<32-1), // 4 bytes, when nanoseconds are 0
		rapid.Int64Range(0, 1<<34-1), // 8 bytes
		rapid.Int64Range(time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix(), lastSec), // 12 bytes
	}
	if unusual {
		secs = append(secs, rapid.Int64Range(lastSec+1, math.MaxInt64/4))
	}
	return rapid.Custom(func(t *rapid.T) any {
		sec := rapid.OneOf(secs...).Draw(t, "sec")
		nsec := rapid.OneOf(rapid.Just[int64](0), rapid.Int64Range(0, 999_999_999)).Draw(t, "nsec")
		offset := rapid.IntRange(-14*60, 14*60).Draw(t, "offset") * 60
		return time.Unix(sec, nsec).In(time.FixedZone("", offset))
	})
}

// genArg draws an argument value of any kind msgpack encodes; with
// unusual, also the kinds FingerprintMsgpack leaves to the decoder
// (NaN, infinities, keys of invalid UTF-8, times past year 9999).
func genArg(depth int, unusual bool) *rapid.Generator[any] {
	float := rapid.Float64()
	f32 := rapid.Float32()
	if !unusual {
		float = rapid.Float64().Filter(func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) })
		f32 = rapid.Float32().Filter(func(f float32) bool { return !math.IsNaN(float64(f)) && !math.IsInf(float64(f), 0) })
	}
	kinds := []*rapid.Generator[any]{
		rapid.Just[any](nil),
		rapid.Bool().AsAny(),
		rapid.Int64().AsAny(),
		rapid.Uint64().AsAny(),
		rapid.SampledFrom([]any{int8(-5), int16(-300), int32(-70000), uint8(200), uint16(60000), uint32(1 << 31)}),
		float.AsAny(),
		f32.AsAny(),
		rapid.String().AsAny(),
		rapid.SliceOfN(rapid.Byte(), 0, 8).AsAny(), // bin: a string to the loose decoder
		genTime(unusual), // a timestamp: time.Time to the loose decoder
	}
	if depth < 3 {
		kinds = append(kinds,
			rapid.Deferred(func() *rapid.Generator[[]any] { return rapid.SliceOfN(genArg(depth+1, unusual), 0, 4) }).AsAny(),
			rapid.Deferred(func() *rapid.Generator[map[string]any] { return genKwargs(depth+1, unusual) }).AsAny())
	}
	return rapid.OneOf(kinds...)
}

func genKwargs(depth int, unusual bool) *rapid.Generator[map[string]any] {
	key := rapid.String()
	if unusual {
		key = rapid.OneOf(rapid.String(), rapid.SampledFrom([]string{"\xff", "a\xc3", "\xed\xa0\x80"}))
	}
	return rapid.MapOfN(key, genArg(depth, unusual), 0, 12)
}

// FingerprintMsgpack, which reads the encoded arguments without decoding
// them, takes every ordinary argument, and gives the fingerprint of the
// generic path for it.
func TestFingerprintStraightFromTheBytesIsTheGenericOne(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		kwargs := genKwargs(0, false).Draw(t, "kwargs")
		raw, err := broker.Msgpack.EncodeArgs(kwargs)
		require.NoError(t, err)
		want, err := slowFingerprint("task", raw)
		require.NoError(t, err)
		got, ok := pyjson.FingerprintMsgpack("task", raw)
		require.True(t, ok, "an ordinary argument is read from the bytes")
		require.Equal(t, want, got)
	})
}

// Where FingerprintMsgpack answers, on unusual arguments too, it answers as
// the generic path does, and never where that path fails.
func TestFingerprintStraightFromTheBytesDefersTheUnusual(t *testing.T) {
	var deferred int
	rapid.Check(t, func(t *rapid.T) {
		kwargs := genKwargs(0, true).Draw(t, "kwargs")
		raw, err := broker.Msgpack.EncodeArgs(kwargs)
		require.NoError(t, err)
		requireSameFingerprint(t, raw)
		if _, ok := pyjson.FingerprintMsgpack("task", raw); !ok {
			deferred++
		}
	})
	t.Logf("%d of the draws left to the decoder", deferred)
	for _, raw := range [][]byte{
		{0x81, 0xa1, 'a', 0xc1},                            // a never-used code
		{0x81, 0xa1, 'a', 0xd4, 0x01, 0x02},                // an extension
		{0x81, 0xa1, 'a', 0xd6, 0x01, 0, 0, 0, 0},          // an extension of a timestamp's length
		{0x81, 0xa1, 'a', 0xc7, 0x05, 0xff, 0, 0, 0, 0, 0}, // a timestamp of 5 bytes: the decoder fails
		{0x81, 0xa1, 'a', 0xd6, 0xff, 0, 0, 0},             // a timestamp cut short
		{0x81, 0xa1, 'a', 0xc7, 0x0c, 0xff, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // past year 9999
		{0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02},                                                        // a repeated key: the decoder keeps the last
		{0x81, 0x01, 0x02},                                                                              // an integer key
		{0x81, 0xa1, 'a', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0},                                           // NaN
		{0x80, 0x00},       // bytes after the map
		{0x92, 0x01, 0x02}, // not a map
		{0x81, 0xa1, 'a', 0xdd, 0xff, 0xff, 0xff, 0xff}, // a length past the input
	} {
		_, ok := pyjson.FingerprintMsgpack("task", raw)
		require.False(t, ok, "%x", raw)
	}
}

// requireSameFingerprint fails if FingerprintMsgpack answers for raw where
// the generic path fails, or answers differently.
func requireSameFingerprint(t require.TestingT, raw []byte) {
	got, ok := pyjson.FingerprintMsgpack("task", raw)
	if !ok {
		return
	}
	want, err := slowFingerprint("task", raw)
	require.NoError(t, err, "%x", raw)
	require.Equal(t, want, got, "%x", raw)
}

// Timestamps written in unusual ways are read as the decoder reads them:
// an ext 8 of 4 bytes, nanoseconds of a second or more (time.Unix carries
// them into the seconds), before 1970.
func TestFingerprintStraightFromTheBytesReadsTimestampsAsTheDecoder(t *testing.T) {
	for _, raw := range [][]byte{
		{0x81, 0xa1, 'a', 0xc7, 0x04, 0xff, 0x66, 0x32, 0x35, 0x98},
		{0x81, 0xa1, 'a', 0xd7, 0xff, 0xff, 0xff, 0xff, 0xfc, 0x00, 0x00, 0x00, 0x01},
		{0x81, 0xa1, 'a', 0xc7, 0x0c, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x05},
		{0x81, 0xa1, 'a', 0xc7, 0x0c, 0xff, 0, 0, 0, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	} {
		_, ok := pyjson.FingerprintMsgpack("task", raw)
		require.True(t, ok, "%x", raw)
		requireSameFingerprint(t, raw)
	}
}

type ReminderArgs struct {
	UserID int       `msgpack:"user_id"`
	At     time.Time `msgpack:"at"`
}

// An argument of type time.Time is fingerprinted as the JSON string of its
// RFC 3339 text in UTC, so the same instant in any zone is one key, and
// another instant another key.
func TestTimeArgumentIsFingerprinted(t *testing.T) {
	at := time.Date(2024, 5, 1, 12, 30, 0, 500_000_000, time.UTC)
	paris := time.FixedZone("CEST", 2*3600)
	fingerprint := func(args ReminderArgs) string {
		raw, err := broker.Msgpack.EncodeArgs(args)
		require.NoError(t, err)
		slow, err := slowFingerprint("remind", raw)
		require.NoError(t, err, "the generic path")
		fast, ok := pyjson.FingerprintMsgpack("remind", raw)
		require.True(t, ok, "a timestamp is read from the bytes")
		require.Equal(t, slow, fast)
		return slow
	}
	want, err := dedup.Fingerprint("remind", map[string]any{"user_id": 7, "at": "2024-05-01T12:30:00.5Z"})
	require.NoError(t, err)
	require.Equal(t, want, fingerprint(ReminderArgs{UserID: 7, At: at}))
	require.Equal(t, want, fingerprint(ReminderArgs{UserID: 7, At: at.In(paris)}))
	require.NotEqual(t, want, fingerprint(ReminderArgs{UserID: 7, At: at.Add(time.Nanosecond)}))

	e := newEnv(t)
	b := broker.NewInMemory().WithMiddlewares(e.middleware(t))
	tk := task.Define(b, "remind", func(context.Context, ReminderArgs) error { return nil })
	ctx := context.Background()
	h, err := tk.Kiq(ctx, ReminderArgs{UserID: 7, At: at})
	require.NoError(t, err)
	key := e.prefix + ":" + want
	require.Equal(t, h.TaskID(), e.client.Get(ctx, key).Val())
	_, err = tk.Kiq(ctx, ReminderArgs{UserID: 7, At: at.In(paris)})
	var dup *dedup.DuplicateTaskError
	require.ErrorAs(t, err, &dup, "the same instant in another zone is a duplicate")
	require.Equal(t, key, dup.Key)
	_, err = tk.Kicker().WithLabels(task.Labels{"deduplication_key_fields": []string{"at"}}).Kiq(ctx, ReminderArgs{UserID: 8, At: at})
	require.NoError(t, err, "the generic path, for key fields")
	_, err = tk.Kicker().WithLabels(task.Labels{"deduplication_key_fields": []string{"at"}}).Kiq(ctx, ReminderArgs{UserID: 9, At: at.In(paris)})
	require.ErrorIs(t, err, dedup.ErrDuplicateTask)
	_, err = tk.Kiq(ctx, ReminderArgs{UserID: 7, At: at.Add(time.Second)})
	require.NoError(t, err, "another instant is another key")
	require.Equal(t, 3, queued(t, b))
}
