package dedup

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/internal/pyjson"
)

// Fingerprint returns the fingerprint of a task called with kwargs: the
// first 16 hex digits of the SHA-256 of the JSON that Python's
// json.dumps({"task": name, "args": [], "kwargs": kwargs}, sort_keys=True)
// writes. It is byte for byte the fingerprint of Python's
// taskiq-deduplication, so Go and Python producers sharing a Redis reject
// each other's duplicates (with WithSelfHealing(false): self-healing cannot
// see Python's tasks and would take their locks over).
//
// kwargs holds the arguments by their serialized (msgpack) names, as
// decoded generically: string, bool, nil, integers of any size, floats,
// []any and map[string]any, and time.Time, which a msgpack timestamp
// decodes to. Python's json cannot write a time.Time; it is written as its
// RFC 3339 text in UTC, as any encoding.TextMarshaler is written as the
// JSON string of its text (see internal/pyjson).
func Fingerprint(name string, kwargs map[string]any) (string, error) {
	return pyjson.Fingerprint(name, kwargs)
}

// fingerprintArgs returns the fingerprint of encoded arguments, restricted
// to fields when fields is not nil. Arguments that are not a map (a task
// taking a slice, say) are fingerprinted as one positional argument.
func fingerprintArgs(f broker.Formatter, name string, raw []byte, fields []string, warn func(missing string)) (string, error) {
	if fields == nil && f == broker.Msgpack {
		if fp, ok := pyjson.FingerprintMsgpack(name, raw); ok { // straight from the bytes
			return fp, nil
		}
	}
	var args any
	if err := f.DecodeArgs(raw, &args); err != nil {
		return "", err
	}
	kwargs, isMap := args.(map[string]any)
	if !isMap {
		if args == nil {
			return Fingerprint(name, map[string]any{})
		}
		// Python: json.dumps({"task": name, "args": [args], "kwargs": {}}).
		doc, err := pyjson.Append(nil, map[string]any{"task": name, "args": []any{args}, "kwargs": map[string]any{}})
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(doc)
		return hex.EncodeToString(sum[:])[:16], nil
	}
	if fields != nil {
		subset := make(map[string]any, len(fields))
		for _, k := range fields {
			v, ok := kwargs[k]
			if !ok {
				warn(k)
				continue
			}
			subset[k] = v
		}
		kwargs = subset
	}
	return Fingerprint(name, kwargs)
}

// lockKey returns the lock key of msg, and whether msg is deduplicated at
// all.
func (m *Middleware) lockKey(msg *broker.Message) (string, bool, error) {
	on, set := msg.Labels.Bool(broker.LabelDeduplication)
	if !set {
		on = m.cfg.defaultDedup
	}
	if !on {
		return "", false, nil
	}
	prefix := m.cfg.keyPrefix
	if m.cfg.scope == ScopeQueue {
		prefix += ":" + msg.Queue(m.defaultQueue())
	}
	if key, ok := msg.Labels.String(broker.LabelDeduplicationKey); ok {
		return prefix + ":" + key, true, nil
	}
	fields, hasFields := msg.Labels.Strings(broker.LabelDeduplicationKeyFields)
	if !hasFields {
		fields = nil
	} else if fields == nil {
		fields = []string{}
	}
	fp, err := fingerprintArgs(m.formatter(), msg.TaskName, msg.Args, fields, func(missing string) {
		m.log.Warn("kiq: deduplication key field not in the task's arguments",
			slog.String("task_name", msg.TaskName), slog.String("field", missing))
	})
	if err != nil {
		return "", false, fmt.Errorf("kiq: fingerprint of %s: %w", msg.TaskName, err)
	}
	return prefix + ":" + fp, true, nil
}
