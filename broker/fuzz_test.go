package broker_test

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
	"github.com/stretchr/testify/require"
)

// A negative attempt counter is malformed: it would reach the retry
// middleware's backoff as a negative shift.
func TestNegativeAttemptIsMalformed(t *testing.T) {
	raw, err := broker.Msgpack.EncodeMessage(&broker.Message{TaskID: "id", TaskName: "t", Attempt: -1})
	require.NoError(t, err)
	_, err = broker.Msgpack.DecodeMessage(raw)
	require.ErrorIs(t, err, broker.ErrMalformed)
	require.ErrorContains(t, err, "negative attempt -1")
}

// Hostile bytes: a few bytes declaring gigabytes must be refused before the
// decoder allocates.
func TestHugeDeclaredLengthsAreRefused(t *testing.T) {
	for _, raw := range [][]byte{
		{0xdd, 0x7f, 0xff, 0xff, 0xff},       // array32 of 2³¹ elements
		{0xdf, 0x7f, 0xff, 0xff, 0xff},       // map32
		{0xdb, 0x7f, 0xff, 0xff, 0xff},       // str32
		{0xc6, 0x7f, 0xff, 0xff, 0xff},       // bin32
		{0xc9, 0x7f, 0xff, 0xff, 0xff, 0x01}, // ext32
		{0x81, 0xa4, 'a', 'r', 'g', 's', 0xc6, 0x7f, 0xff, 0xff, 0xff},
		bytes.Repeat([]byte{0x91}, 100000), // nesting far too deep
		{0xc1},                             // never used
	} {
		_, err := broker.Msgpack.DecodeMessage(raw)
		require.ErrorIs(t, err, broker.ErrMalformed, "%x", raw[:min(len(raw), 12)])
		var v any
		require.ErrorIs(t, broker.Msgpack.DecodeArgs(raw, &v), broker.ErrMalformed)
	}
}

// msgpack reads an extension's header as a wrapper where it expects a map,
// and preallocates a map of the length declared after it, which lies
// outside what the extension declares (so the length check never saw it).
// Labels, and maps of interface values in arguments, refuse an extension
// where their map belongs: seven bytes must not make the decoder allocate
// gigabytes.
func TestAnExtensionWhereAMapBelongsIsRefused(t *testing.T) {
	ext := []byte{0xd4, 0x30, 0xdf, 0x10, 0x30, 0x30, 0x30} // fixext1, then a map32 of 271 million entries
	withKey := func(key string) []byte {
		return append(append([]byte{0x81, byte(0xa0 + len(key))}, key...), ext...)
	}
	envelope := append([]byte{0x83, 0xa7}, "task_id"...)
	envelope = append(envelope, 0xa1, 'i', 0xa9)
	envelope = append(envelope, "task_name"...)
	envelope = append(envelope, 0xa1, 't', 0xa6)
	envelope = append(envelope, "labels"...)
	envelope = append(envelope, ext...)
	type meta struct {
		Meta map[string]any `msgpack:"meta"`
	}
	type untyped struct {
		M map[any]any `msgpack:"m"`
	}
	for name, decode := range map[string]func() error{
		"labels": func() error { _, err := broker.Msgpack.DecodeMessage(envelope); return err },
		"a map[string]any field": func() error {
			var v meta
			return broker.Msgpack.DecodeArgs(withKey("meta"), &v)
		},
		"a map[any]any field": func() error {
			var v untyped
			return broker.Msgpack.DecodeArgs(withKey("m"), &v)
		},
		"map[string]any arguments": func() error {
			var v map[string]any
			return broker.Msgpack.DecodeArgs(ext, &v)
		},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := decode()
		runtime.ReadMemStats(&after)
		require.ErrorIs(t, err, broker.ErrMalformed, name)
		require.ErrorContains(t, err, "extension", name)
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "%s: allocated %d bytes", name, after.TotalAlloc-before.TotalAlloc)
	}
	// Maps still decode as before, nil ones included.
	var v meta
	require.NoError(t, broker.Msgpack.DecodeArgs([]byte{0x81, 0xa4, 'm', 'e', 't', 'a', 0x81, 0xa1, 'a', 0x01}, &v))
	require.Equal(t, map[string]any{"a": int64(1)}, v.Meta)
	require.NoError(t, broker.Msgpack.DecodeArgs([]byte{0x81, 0xa4, 'm', 'e', 't', 'a', 0xc0}, &v))
	require.Nil(t, v.Meta)
	var m map[string]any
	require.NoError(t, broker.Msgpack.DecodeArgs([]byte{0x81, 0xa1, 'a', 0x92, 0x01, 0xa1, 'x'}, &m))
	require.Equal(t, map[string]any{"a": []any{int64(1), "x"}}, m)
	var u untyped
	require.NoError(t, broker.Msgpack.DecodeArgs([]byte{0x81, 0xa1, 'm', 0x81, 0x01, 0x02}, &u))
	require.Equal(t, map[any]any{int64(1): int64(2)}, u.M)
}

// Decoders are pooled: one that stopped halfway through a value of the
// wrong type reads the next arguments from their start, with the same
// settings (integers in an any as int64).
func TestDecodeArgsAfterAFailedDecode(t *testing.T) {
	type named struct {
		Name string `msgpack:"name"`
		N    any    `msgpack:"n"`
	}
	for range 3 {
		var bad named
		err := broker.Msgpack.DecodeArgs([]byte{0x82, 0xa4, 'n', 'a', 'm', 'e', 0x92, 0x01, 0x02, 0xa1, 'n', 0x07}, &bad)
		require.ErrorIs(t, err, broker.ErrMalformed)
		var good named
		require.NoError(t, broker.Msgpack.DecodeArgs([]byte{0x82, 0xa4, 'n', 'a', 'm', 'e', 0xa2, 'o', 'k', 0xa1, 'n', 0x07}, &good))
		require.Equal(t, named{Name: "ok", N: int64(7)}, good)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	good, _ := broker.Msgpack.EncodeMessage(&broker.Message{TaskID: "id", TaskName: "t",
		Labels: broker.Labels{"deduplication_key_fields": []string{"a"}, "timeout": int64(5)}, Args: []byte{0x81, 0xa1, 'a', 0x01}, Attempt: 1})
	f.Add(good)
	f.Add([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte("garbage"))
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := broker.Msgpack.DecodeMessage(raw)
		if err != nil {
			require.ErrorIs(t, err, broker.ErrMalformed)
			return
		}
		// What decodes, msgpack's reflection reads the same by the tags.
		want, err := decodeByTags(raw)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("%#v", want), fmt.Sprintf("%#v", *m)) // printed: a NaN label equals itself
		// What decodes re-encodes and decodes to the same message.
		again, err := broker.Msgpack.EncodeMessage(m)
		require.NoError(t, err)
		m2, err := broker.Msgpack.DecodeMessage(again)
		require.NoError(t, err)
		require.Equal(t, m.TaskID, m2.TaskID)
		require.Equal(t, m.TaskName, m2.TaskName)
		require.Equal(t, m.Attempt, m2.Attempt)
		require.GreaterOrEqual(t, m.Attempt, 0)
		// What decodes can go through the retry decision without a panic.
		retry := middleware.NewRetry(middleware.RetryOptions{Always: true})
		_, _ = retry.RetryDelay(m, errors.New("failed"))
		var args any
		_ = broker.Msgpack.DecodeArgs(m.Args, &args)
	})
}

func FuzzNormalizeLabel(f *testing.F) {
	for key := range broker.LabelKinds {
		f.Add(key, "60")
		f.Add(key, "a,b")
		f.Add(key, "true")
	}
	f.Add("unknown", "x")
	f.Fuzz(func(t *testing.T, key, value string) {
		v, err := broker.NormalizeLabel(key, value)
		if err != nil {
			require.ErrorIs(t, err, broker.ErrBadLabel)
			return
		}
		// Normalizing is idempotent, and the result survives the wire.
		again, err := broker.NormalizeLabel(key, v)
		require.NoError(t, err)
		require.Equal(t, v, again)
		raw, err := broker.Msgpack.EncodeMessage(&broker.Message{TaskID: "i", TaskName: "n", Labels: broker.Labels{key: v}})
		require.NoError(t, err)
		_, err = broker.Msgpack.DecodeMessage(raw)
		require.NoError(t, err)
	})
}
