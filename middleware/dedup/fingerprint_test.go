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
	return rapid.Custom(func(t *rapid.T) any {
		kinds := 11
		if depth >= 3 {
			kinds = 9 // scalars only
		}
		switch rapid.IntRange(0, kinds-1).Draw(t, "kind") {
		case 0:
			return nil
		case 1:
			return rapid.Bool().Draw(t, "bool")
		case 2:
			return rapid.Int64().Draw(t, "int")
		case 3:
			return rapid.Uint64().Draw(t, "uint")
		case 4:
			return rapid.SampledFrom([]any{int8(-5), int16(-300), int32(-70000), uint8(200), uint16(60000), uint32(1 << 31)}).Draw(t, "sized")
		case 5:
			f := rapid.Float64().Draw(t, "float")
			if !unusual && (math.IsNaN(f) || math.IsInf(f, 0)) {
				f = -0.0
			}
			return f
		case 6:
			f := rapid.Float32().Draw(t, "float32")
			if !unusual && (math.IsNaN(float64(f)) || math.IsInf(float64(f), 0)) {
				f = 0.1
			}
			return f
		case 7:
			return rapid.String().Draw(t, "string")
		case 8:
			return rapid.SliceOfN(rapid.Byte(), 0, 8).Draw(t, "bytes") // bin: a string to the loose decoder
		case 9:
			return rapid.SliceOfN(genArg(depth+1, unusual), 0, 4).Draw(t, "list")
		}
		return genKwargs(depth+1, unusual).Draw(t, "map")
	})
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
