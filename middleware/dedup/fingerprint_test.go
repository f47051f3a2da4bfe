package dedup_test

import (
	"math"
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/pyjson"
	"github.com/kiq-go/kiq/middleware/dedup"
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

// genArg draws an argument value of any kind msgpack encodes; with
// unusual, also the kinds FingerprintMsgpack leaves to the decoder
// (NaN, infinities, keys of invalid UTF-8).
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
		{0x81, 0xa1, 'a', 0xc1},                               // a never-used code
		{0x81, 0xa1, 'a', 0xd4, 0x01, 0x02},                   // an extension
		{0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02},              // a repeated key: the decoder keeps the last
		{0x81, 0x01, 0x02},                                    // an integer key
		{0x81, 0xa1, 'a', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0}, // NaN
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
