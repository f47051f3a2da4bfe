package dedup_test

import (
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/stretchr/testify/require"
)

// Arbitrary encoded arguments never panic the fingerprint, the same
// arguments give the same fingerprint whatever order their map was built
// in, and the fingerprint read straight from the bytes is the generic one
// wherever it answers.
func FuzzFingerprintOfArguments(f *testing.F) {
	seed, _ := broker.Msgpack.EncodeArgs(map[string]any{"user_id": 42, "locale": "en", "nested": map[string]any{"b": 1.5, "a": []any{"x", nil}}})
	f.Add("send_welcome", seed)
	f.Add("", []byte{0x80})
	f.Add("t", []byte{0xdd, 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, name string, raw []byte) {
		requireSameFingerprint(t, raw)
		var kwargs map[string]any
		if broker.Msgpack.DecodeArgs(raw, &kwargs) != nil {
			return
		}
		a, errA := dedup.Fingerprint(name, kwargs)
		rebuilt := make(map[string]any, len(kwargs))
		keys := make([]string, 0, len(kwargs))
		for k := range kwargs {
			keys = append(keys, k)
		}
		for i := len(keys) - 1; i >= 0; i-- {
			rebuilt[keys[i]] = kwargs[keys[i]]
		}
		b, errB := dedup.Fingerprint(name, rebuilt)
		require.Equal(t, errA == nil, errB == nil)
		require.Equal(t, a, b)
	})
}
