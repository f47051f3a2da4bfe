package dedup_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware/dedup"
	"github.com/kiq-go/kiq/task"
	"github.com/stretchr/testify/require"
)

type vector struct {
	Task      string         `json:"task"`
	Kwargs    map[string]any `json:"kwargs"`
	KeyFields []string       `json:"deduplication_key_fields"`
	Key       string         `json:"deduplication_key"`
	Want      string         `json:"key"`
}

// native turns json.Numbers into the int64 or float64 a Go producer would
// have in its arguments.
func native(v any) any {
	switch x := v.(type) {
	case json.Number:
		if strings.ContainsAny(x.String(), ".eE") {
			f, _ := x.Float64()
			return f
		}
		n, _ := x.Int64()
		return n
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = native(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = native(e)
		}
		return out
	}
	return v
}

// Every vector computed by Python's taskiq-deduplication comes out as the
// lock key of a real Kiq through the middleware, byte for byte.
func TestPythonVectorsEndToEnd(t *testing.T) {
	raw, err := os.ReadFile("../../internal/pyjson/testdata/fingerprint-vectors.json")
	require.NoError(t, err)
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var vectors []vector
	require.NoError(t, dec.Decode(&vectors))
	require.NotEmpty(t, vectors)

	mw, err := dedup.New("", dedup.WithClient(newEnv(t).client))
	require.NoError(t, err)
	b := broker.NewInMemory().WithMiddlewares(mw)
	ctx := context.Background()
	for i, v := range vectors {
		labels := task.Labels{}
		if v.KeyFields != nil {
			labels["deduplication_key_fields"] = v.KeyFields
		}
		if v.Key != "" {
			labels["deduplication_key"] = v.Key
		}
		tk := task.Define(b, v.Task+strings.Repeat(" ", i), func(context.Context, map[string]any) error { return nil })
		msg, err := tk.Kicker().WithLabels(labels).Message(native(v.Kwargs).(map[string]any))
		require.NoError(t, err)
		msg.TaskName = v.Task // the registry needs distinct names; the vector needs the real one
		require.NoError(t, mw.PreSend(ctx, msg), v.Task)
		require.Equal(t, v.Want, msg.Labels[dedup.LabelLock], "vector %d (%s)", i, v.Task)
		mw.OnSendError(ctx, msg, context.Canceled) // release, so vectors sharing a key do not collide
	}
}
