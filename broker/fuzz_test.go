package broker_test

import (
	"bytes"
	"errors"
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
