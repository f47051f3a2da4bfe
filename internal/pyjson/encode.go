// Package pyjson writes JSON exactly as Python's
// json.dumps(obj, sort_keys=True) does with its default settings (separators
// ", " and ": ", ensure_ascii=True), for generic Go values, and computes the
// deduplication fingerprint of Python's taskiq-deduplication on it.
package pyjson

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth bounds nesting, as Python's recursion limit does.
const maxDepth = 1000

// Append appends the canonical JSON of v to dst. v is built of nil, bool,
// string, Go integers of any size, *big.Int, json.Number, float32 and
// float64, maps with string keys, slices and arrays. Structs, []byte, NaN and
// infinities are errors. Invalid UTF-8 in strings is written as \ufffd, as
// encoding/json does; Python strings cannot hold it.
func Append(dst []byte, v any) ([]byte, error) {
	return appendValue(dst, v, 0)
}

// Fingerprint returns the first 16 lowercase hex digits of the SHA-256 of
// the canonical JSON of {"task": name, "args": [], "kwargs": kwargs}:
// Python's hashlib.sha256(json.dumps({...}, sort_keys=True).encode()).hexdigest()[:16].
func Fingerprint(name string, kwargs map[string]any) (string, error) {
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	// Keys in sorted order: args, kwargs, task.
	buf := make([]byte, 0, 128)
	buf = append(buf, `{"args": [], "kwargs": `...)
	buf, err := appendValue(buf, kwargs, 1)
	if err != nil {
		return "", err
	}
	buf = append(buf, `, "task": `...)
	buf = appendString(buf, name)
	buf = append(buf, '}')
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:8]), nil
}

var errDepth = errors.New("pyjson: nesting deeper than 1000 levels")

func appendValue(dst []byte, v any, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, errDepth
	}
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case bool:
		if x {
			return append(dst, "true"...), nil
		}
		return append(dst, "false"...), nil
	case string:
		return appendString(dst, x), nil
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int8:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int16:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int32:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case uint:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint8:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint16:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint32:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint64:
		return strconv.AppendUint(dst, x, 10), nil
	case *big.Int:
		if x == nil {
			return append(dst, "null"...), nil
		}
		return x.Append(dst, 10), nil
	case float64:
		return appendFloat(dst, x)
	case float32:
		// The shortest decimal of the float32, read as a float64: 0.1 stays
		// 0.1 rather than 0.10000000149011612.
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return appendFloat(dst, f)
	case json.Number:
		return appendNumber(dst, x)
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		// Python orders str keys by code point; UTF-8 byte order is the same.
		slices.Sort(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			dst = appendString(dst, k)
			dst = append(dst, ": "...)
			var err error
			if dst, err = appendValue(dst, x[k], depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			var err error
			if dst, err = appendValue(dst, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case []byte:
		return nil, errors.New("pyjson: bytes are not JSON serializable")
	}
	return appendReflect(dst, reflect.ValueOf(v), depth)
}

// appendReflect handles the typed maps, slices and pointers a caller may
// pass, by converting them to the generic forms.
func appendReflect(dst []byte, rv reflect.Value, depth int) ([]byte, error) {
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return append(dst, "null"...), nil
		}
		return appendValue(dst, rv.Elem().Interface(), depth+1)
	case reflect.Map:
		if rv.Type().Key().Kind() != reflect.String {
			return nil, fmt.Errorf("pyjson: map keys must be strings, not %s", rv.Type().Key())
		}
		m := make(map[string]any, rv.Len())
		for it := rv.MapRange(); it.Next(); {
			m[it.Key().String()] = it.Value().Interface()
		}
		return appendValue(dst, m, depth)
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return append(dst, "null"...), nil
		}
		s := make([]any, rv.Len())
		for i := range s {
			s[i] = rv.Index(i).Interface()
		}
		return appendValue(dst, s, depth)
	case reflect.String:
		return appendString(dst, rv.String()), nil
	case reflect.Bool:
		return appendValue(dst, rv.Bool(), depth)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(dst, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.AppendUint(dst, rv.Uint(), 10), nil
	case reflect.Float32, reflect.Float64:
		return appendFloat(dst, rv.Float())
	}
	return nil, fmt.Errorf("pyjson: %s is not JSON serializable", rv.Type())
}

// appendFloat writes f as Python's float repr: the shortest digits that read
// back as f, in fixed notation with at least one decimal when the decimal
// exponent is in [-4, 16), else in scientific notation with a signed exponent
// of at least two digits.
func appendFloat(dst []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("pyjson: %v is not valid JSON", f)
	}
	// 'e' with -1 gives the shortest digits: [-]d[.ddd]e±XX.
	var tmp [32]byte
	s := strconv.AppendFloat(tmp[:0], f, 'e', -1, 64)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	ePos := slices.Index(s, 'e')
	mant, expPart := s[:ePos], s[ePos+1:]
	exp, _ := strconv.Atoi(string(expPart))
	digits := make([]byte, 0, len(mant))
	for _, c := range mant {
		if c != '.' {
			digits = append(digits, c)
		}
	}
	decpt := exp + 1 // value = 0.digits × 10^decpt
	if neg {
		dst = append(dst, '-')
	}
	if decpt <= -4 || decpt > 16 {
		dst = append(dst, digits[0])
		if len(digits) > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:]...)
		}
		dst = append(dst, 'e')
		if exp < 0 {
			dst = append(dst, '-')
			exp = -exp
		} else {
			dst = append(dst, '+')
		}
		if exp < 10 {
			dst = append(dst, '0')
		}
		return strconv.AppendInt(dst, int64(exp), 10), nil
	}
	switch {
	case decpt <= 0: // 0.000ddd
		dst = append(dst, "0."...)
		for range -decpt {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	case decpt >= len(digits): // ddd000.0
		dst = append(dst, digits...)
		for range decpt - len(digits) {
			dst = append(dst, '0')
		}
		dst = append(dst, ".0"...)
	default: // dd.ddd
		dst = append(dst, digits[:decpt]...)
		dst = append(dst, '.')
		dst = append(dst, digits[decpt:]...)
	}
	return dst, nil
}

// appendNumber writes a json.Number: integers verbatim, whatever their size,
// and other numbers as the Python float they parse to.
func appendNumber(dst []byte, n json.Number) ([]byte, error) {
	s := string(n)
	if !isJSONNumber(s) {
		return nil, fmt.Errorf("pyjson: %q is not a JSON number", s)
	}
	if !slices.ContainsFunc([]byte(s), func(c byte) bool { return c == '.' || c == 'e' || c == 'E' }) {
		return append(dst, s...), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("pyjson: %q: %w", s, err)
	}
	return appendFloat(dst, f)
}

// isJSONNumber reports whether s is a number in JSON's grammar.
func isJSONNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	return i == len(s)
}

const hexDigits = "0123456789abcdef"

// appendString writes s as Python's json with ensure_ascii: \" \\ \n \r \t
// \b \f, other control characters, DEL and all non-ASCII as lowercase \uXXXX
// (Python escapes everything outside ' '..'~'),
// with surrogate pairs above U+FFFF.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch c {
			case '"':
				dst = append(dst, `\"`...)
			case '\\':
				dst = append(dst, `\\`...)
			case '\n':
				dst = append(dst, `\n`...)
			case '\r':
				dst = append(dst, `\r`...)
			case '\t':
				dst = append(dst, `\t`...)
			case '\b':
				dst = append(dst, `\b`...)
			case '\f':
				dst = append(dst, `\f`...)
			default:
				if c < 0x20 || c == 0x7f {
					dst = appendU(dst, rune(c))
				} else {
					dst = append(dst, c)
				}
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r >= 0x10000 {
			hi, lo := utf16.EncodeRune(r)
			dst = appendU(appendU(dst, hi), lo)
			continue
		}
		dst = appendU(dst, r) // utf8.RuneError for invalid bytes: \ufffd
	}
	return append(dst, '"')
}

func appendU(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}
