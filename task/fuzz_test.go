package task_test

import (
	"testing"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/task"
	"github.com/stretchr/testify/require"
)

func FuzzParseTag(f *testing.F) {
	f.Add(`deduplication_key_fields:"user_id" deduplication_ttl:"60"`)
	f.Add(`a:"\"x\""  b:"y"`)
	f.Add(`key:"open`)
	f.Add(`deduplication:"perhaps"`)
	f.Fuzz(func(t *testing.T, tag string) {
		labels, err := task.ParseTag(tag)
		if err != nil {
			require.ErrorIs(t, err, broker.ErrBadLabel)
			return
		}
		// Every parsed label is already normalized.
		for k, v := range labels {
			again, err := broker.NormalizeLabel(k, v)
			require.NoError(t, err)
			require.Equal(t, v, again)
		}
	})
}
