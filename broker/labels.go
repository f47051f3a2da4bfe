package broker

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Labels are the key/value metadata that travel with a task: Taskiq's labels.
// Known labels (see [LabelKinds]) are normalized to one canonical type when a
// message is built, so every reader sees the same type whatever the writer
// used: bools as bool, integers as int64, seconds as int64 (or float64 when
// not whole), strings as string and lists as []string. Unknown labels travel
// untouched, for user middlewares.
type Labels map[string]any

// DecodeMsgpack implements msgpack.CustomDecoder: labels decode as msgpack
// decodes a map[string]any, except that an extension value where their map
// belongs is refused (see decodeMap: seven hostile bytes could otherwise
// make every worker that fetched the message allocate gigabytes).
func (l *Labels) DecodeMsgpack(d *msgpack.Decoder) error {
	m, err := decodeMap(d)
	*l = m
	return err
}

// LabelKind is the type of a known label.
type LabelKind int

// The kinds of known labels.
const (
	KindString  LabelKind = iota + 1 // a string
	KindBool                         // true or false; "true"/"false"/"1"/"0" from tags
	KindInt                          // a whole number
	KindSeconds                      // a duration in seconds; a time.Duration is converted
	KindStrings                      // a list of strings; "a,b" from tags
)

// Names of the labels the core and the bundled middlewares read.
const (
	LabelQueue     = "queue"      // string: the queue to send to
	LabelTimeout   = "timeout"    // seconds: the task's context deadline
	LabelDelay     = "delay"      // seconds: deliver no earlier than this
	LabelResultTTL = "result_ttl" // seconds: how long a result is kept

	LabelRetryOnError     = "retry_on_error"     // bool: retry when the task returns an error
	LabelMaxRetries       = "max_retries"        // int: attempts after the first
	LabelRetryBackoffBase = "retry_backoff_base" // seconds: the first retry's backoff bound
	LabelRetryBackoffCap  = "retry_backoff_cap"  // seconds: the largest backoff bound

	LabelDeduplication          = "deduplication"            // bool: false opts out
	LabelDeduplicationTTL       = "deduplication_ttl"        // seconds: lock TTL
	LabelDeduplicationKey       = "deduplication_key"        // string: explicit lock key
	LabelDeduplicationKeyFields = "deduplication_key_fields" // strings: fingerprint fields
)

// LabelKinds maps every known label to its kind. Labels not listed here are
// passed through as they are.
var LabelKinds = map[string]LabelKind{
	LabelQueue:                  KindString,
	LabelTimeout:                KindSeconds,
	LabelDelay:                  KindSeconds,
	LabelResultTTL:              KindSeconds,
	LabelRetryOnError:           KindBool,
	LabelMaxRetries:             KindInt,
	LabelRetryBackoffBase:       KindSeconds,
	LabelRetryBackoffCap:        KindSeconds,
	LabelDeduplication:          KindBool,
	LabelDeduplicationTTL:       KindSeconds,
	LabelDeduplicationKey:       KindString,
	LabelDeduplicationKeyFields: KindStrings,
}

// ErrBadLabel is wrapped by every error about a label's value.
var ErrBadLabel = errors.New("kiq: bad label")

func labelError(key string, v any, want string) error {
	return fmt.Errorf("%w %q: %v (%T) is not %s", ErrBadLabel, key, v, v, want)
}

// Merge returns a new Labels holding l's entries overridden by each of
// layers in turn (later layers win), with known labels normalized. It fails
// with an error wrapping [ErrBadLabel] when a known label has a value of the
// wrong type.
func (l Labels) Merge(layers ...Labels) (Labels, error) {
	n := len(l)
	for _, x := range layers {
		n += len(x)
	}
	out := make(Labels, n)
	if err := out.normalizeFrom(l); err != nil {
		return nil, err
	}
	for _, src := range layers {
		if err := out.normalizeFrom(src); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// normalizeFrom sets l's labels to src's, normalized.
func (l Labels) normalizeFrom(src Labels) error {
	for k, v := range src {
		nv, err := NormalizeLabel(k, v)
		if err != nil {
			return err
		}
		l[k] = nv
	}
	return nil
}

// NormalizeLabel returns v converted to the canonical type of the known label
// key, or v unchanged for an unknown label. Strings are parsed (as struct tags
// give them): "60" for an int or seconds label, "a,b" for a list.
func NormalizeLabel(key string, v any) (any, error) {
	kind, ok := LabelKinds[key]
	if !ok {
		return v, nil
	}
	switch kind {
	case KindString:
		if s, ok := v.(string); ok {
			return s, nil
		}
		return nil, labelError(key, v, "a string")
	case KindBool:
		switch x := v.(type) {
		case bool:
			return x, nil
		case string:
			b, err := strconv.ParseBool(strings.TrimSpace(x))
			if err != nil {
				return nil, labelError(key, v, "a bool")
			}
			return b, nil
		}
		return nil, labelError(key, v, "a bool")
	case KindInt:
		if n, ok := toInt64(v); ok {
			return n, nil
		}
		return nil, labelError(key, v, "an integer")
	case KindSeconds:
		switch x := v.(type) {
		case time.Duration:
			return secondsValue(x.Seconds()), nil
		case float32, float64:
			f, _ := toFloat64(x)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, labelError(key, v, "a number of seconds")
			}
			return secondsValue(f), nil
		case string:
			if d, err := time.ParseDuration(strings.TrimSpace(x)); err == nil {
				return secondsValue(d.Seconds()), nil
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, labelError(key, v, "a number of seconds")
			}
			return secondsValue(f), nil
		}
		if n, ok := toInt64(v); ok {
			return n, nil
		}
		return nil, labelError(key, v, "a number of seconds")
	case KindStrings:
		switch x := v.(type) {
		case []string:
			return append(make([]string, 0, len(x)), x...), nil
		case string:
			if strings.TrimSpace(x) == "" {
				return []string{}, nil
			}
			parts := strings.Split(x, ",")
			for i := range parts {
				parts[i] = strings.TrimSpace(parts[i])
			}
			return parts, nil
		case []any:
			out := make([]string, len(x))
			for i, e := range x {
				s, ok := e.(string)
				if !ok {
					return nil, labelError(key, v, "a list of strings")
				}
				out[i] = s
			}
			return out, nil
		}
		return nil, labelError(key, v, "a list of strings")
	}
	return v, nil
}

func secondsValue(f float64) any {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return int64(f)
	}
	return f
}

func toInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint:
		return int64(x), uint64(x) <= math.MaxInt64
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		return int64(x), x <= math.MaxInt64
	case float32, float64:
		f, _ := toFloat64(x)
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return int64(f), true
		}
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func toFloat64(v any) (float64, bool) {
	switch x := v.(type) {
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	if n, ok := toInt64(v); ok {
		return float64(n), true
	}
	return 0, false
}

// String returns the string label key and whether it is set to a string.
func (l Labels) String(key string) (string, bool) {
	s, ok := l[key].(string)
	return s, ok
}

// Bool returns the bool label key and whether it is set to a bool.
func (l Labels) Bool(key string) (value, ok bool) {
	value, ok = l[key].(bool)
	return value, ok
}

// Int returns the integer label key and whether it is set to a whole number.
func (l Labels) Int(key string) (int64, bool) {
	if _, isString := l[key].(string); isString {
		return 0, false
	}
	return toInt64(l[key])
}

// Duration returns the seconds label key as a time.Duration and whether it
// is set to a number. Seconds beyond what a time.Duration holds (about 292
// years either way) give the largest or smallest one.
func (l Labels) Duration(key string) (time.Duration, bool) {
	v, present := l[key]
	if !present {
		return 0, false
	}
	switch x := v.(type) {
	case string:
		return 0, false
	case time.Duration: // set in code and not normalized (Merge makes it seconds)
		return x, true
	}
	f, ok := toFloat64(v)
	if !ok || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	switch ns := f * float64(time.Second); {
	case ns >= math.MaxInt64:
		return math.MaxInt64, true
	case ns <= math.MinInt64:
		return math.MinInt64, true
	default:
		return time.Duration(ns), true
	}
}

// Strings returns the list label key and whether it is set to a list of
// strings.
func (l Labels) Strings(key string) ([]string, bool) {
	switch x := l[key].(type) {
	case []string:
		return x, true
	case []any:
		out := make([]string, len(x))
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out[i] = s
		}
		return out, true
	}
	return nil, false
}
