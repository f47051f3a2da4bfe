// Package pyjson writes JSON byte for byte as Python's
// json.dumps(obj, sort_keys=True) does with its other settings at their
// defaults (separators ", " and ": ", ensure_ascii=True), for generic Go
// values, and computes the deduplication fingerprint that Python's
// taskiq-deduplication builds on it: from decoded values (Fingerprint), or
// straight from msgpack bytes (FingerprintMsgpack, several times faster,
// which leaves anything unusual to the former).
//
// Values are what a generic decoder produces: nil, bool, string, integers of
// any Go size, *big.Int, json.Number, float32, float64, maps with string keys,
// slices and arrays, nested to any depth up to 1000, and values that
// implement encoding.TextMarshaler, such as the time.Time a msgpack decoder
// gives for a timestamp. How each is written:
//
//   - nil is null; nil maps and nil slices are null too, as encoding/json
//     and msgpack encode them (Fingerprint alone reads a nil kwargs as {}).
//   - Integers, *big.Int and integral json.Numbers are written exactly, with
//     no float64 round trip. (Python 3.11+ refuses to print ints of more than
//     4300 digits by default; this package has no such limit.)
//   - Floats are written as Python's repr: the shortest digits that read back
//     as the same float64, in fixed notation with at least one decimal ("1.0",
//     "100.0", "0.0001") when the decimal exponent is in [-4, 16), otherwise in
//     scientific notation with a sign and at least two exponent digits
//     ("1e-05", "1e+16", "1.5e-07"). -0.0 keeps its sign.
//   - A float32 is first widened through its own shortest decimal, so
//     float32(0.1) is written 0.1 (as a Python producer's 0.1 is), not
//     0.10000000149011612.
//   - A json.Number must be in JSON's number grammar. Without '.', 'e' or 'E'
//     it is an integer and is written verbatim ("-0" as 0, as Python reads
//     it); otherwise it is parsed as a float64 and written as its repr, so
//     "100.0" stays 100.0 and "1E5" becomes 100000.0.
//   - Strings escape '"', '\\', \n, \r, \t, \b and \f by name and every other
//     character outside ' '..'~' as a lowercase \uXXXX escape: control characters,
//     DEL (Python writes "\u007f"), and all non-ASCII characters, with UTF-16
//     surrogate pairs above U+FFFF ("😀" is "\ud83d\ude00"). '<', '>' and '&'
//     are not escaped. Python strings cannot hold invalid UTF-8; each invalid
//     byte of a Go string is written as \ufffd, as encoding/json does.
//   - Map keys are sorted by code point, which is how Python 3 compares str;
//     byte-wise order of valid UTF-8 is the same order.
//   - Python's json cannot write anything else; for that our rule is Go's
//     encoding/json's: a value of any other type that implements
//     encoding.TextMarshaler is written as the JSON string of its text (a
//     nil pointer as null), whatever its kind. A time.Time (or *time.Time)
//     is converted to UTC first, so one instant is written one way whatever
//     its zone (a decoded timestamp comes back in time.Local): RFC 3339 with
//     as many fractional digits as it needs, "2024-05-01T12:30:00.5Z", the
//     ISO 8601 string pydantic writes for a UTC datetime, though with "Z"
//     and without pydantic's padding to microseconds. json.Marshaler is not
//     consulted: its output would not be canonical.
//
// Errors, all starting "pyjson: ", are returned where Python would fail or
// write something that is not JSON: NaN and infinities (Python writes NaN and
// Infinity), json.Numbers that overflow a float64, []byte and other byte
// slices and arrays (Python's bytes are not JSON serializable), structs and
// other types that do not implement encoding.TextMarshaler, a MarshalText
// that fails (a time.Time outside years 0 to 9999), maps whose keys are not
// strings, two keys that would be written the same, and nesting deeper than
// 1000 levels (Python's RecursionError).
package pyjson

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// maxDepth bounds nesting, as Python's recursion limit does.
const maxDepth = 1000

var errDepth = errors.New("pyjson: nesting deeper than 1000 levels")

// Append appends the canonical JSON of v to dst: what Python's
// json.dumps(v, sort_keys=True) writes. The package documentation lists the
// values it takes. On error it returns dst with its original length.
func Append(dst []byte, v any) ([]byte, error) {
	out, err := appendValue(dst, v, 0)
	if err != nil {
		return dst, err
	}
	return out, nil
}

// Fingerprint returns the first 16 lowercase hex digits of SHA-256 over the
// canonical JSON of {"task": name, "args": [], "kwargs": kwargs}, i.e.
// Python's
// hashlib.sha256(json.dumps({"task":name,"args":[],"kwargs":kwargs}, sort_keys=True).encode()).hexdigest()[:16].
// A nil kwargs is read as an empty map.
func Fingerprint(name string, kwargs map[string]any) (string, error) {
	return fingerprint(name, func(buf []byte) ([]byte, error) {
		if kwargs == nil {
			return append(buf, "{}"...), nil
		}
		return appendMap(buf, kwargs, 1)
	})
}

// fingerprint returns the fingerprint of the document whose kwargs appends
// to a pooled buffer: the first 16 hex digits of the SHA-256 of
// {"args": [], "kwargs": …, "task": name}, with the keys in sorted order.
func fingerprint(name string, kwargs func(buf []byte) ([]byte, error)) (string, error) {
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooled {
			bufPool.Put(bp)
		}
	}()
	buf, err := kwargs(append((*bp)[:0], `{"args": [], "kwargs": `...))
	if err != nil {
		return "", err
	}
	buf = append(buf, `, "task": `...)
	buf = appendString(buf, name)
	buf = append(buf, '}')
	*bp = buf
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:8]), nil
}

// bufPool holds the buffers of fingerprint, but none larger than
// maxPooled, so one huge document does not stay in memory.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooled = 64 << 10

// appendValue appends v, found inside depth containers.
func appendValue(dst []byte, v any, depth int) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case bool:
		return appendBool(dst, x), nil
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
		return appendFloat32(dst, x)
	case json.Number:
		return appendNumber(dst, x)
	case map[string]any:
		if x == nil {
			return append(dst, "null"...), nil
		}
		return appendMap(dst, x, depth)
	case []any:
		if x == nil {
			return append(dst, "null"...), nil
		}
		if depth >= maxDepth {
			return nil, errDepth
		}
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
		return nil, errors.New("pyjson: []byte is not JSON serializable (Python's bytes are not)")
	case time.Time:
		return appendText(dst, x.UTC())
	case *time.Time:
		if x == nil {
			return append(dst, "null"...), nil
		}
		return appendText(dst, x.UTC())
	case encoding.TextMarshaler:
		if rv := reflect.ValueOf(x); rv.Kind() == reflect.Pointer && rv.IsNil() {
			return append(dst, "null"...), nil
		}
		return appendText(dst, x)
	}
	return appendReflect(dst, reflect.ValueOf(v), depth)
}

// appendText appends the text of v as a JSON string.
func appendText(dst []byte, v encoding.TextMarshaler) ([]byte, error) {
	text, err := v.MarshalText()
	if err != nil {
		return nil, fmt.Errorf("pyjson: MarshalText of %T: %w", v, err)
	}
	return appendString(dst, text), nil
}

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, "true"...)
	}
	return append(dst, "false"...)
}

// appendMap appends m, found inside depth containers, with sorted keys.
func appendMap(dst []byte, m map[string]any, depth int) ([]byte, error) {
	if depth >= maxDepth {
		return nil, errDepth
	}
	var stack [16]string
	keys := stack[:0]
	for k := range m {
		keys = append(keys, k)
	}
	return appendObject(dst, keys, func(k string) any { return m[k] }, depth)
}

// appendObject appends the object of keys, each with its value, in the
// order Python sorts the keys (see sortKeys); the object is found inside
// depth containers.
func appendObject(dst []byte, keys []string, value func(key string) any, depth int) ([]byte, error) {
	if err := sortKeys(keys); err != nil {
		return nil, err
	}
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = appendString(dst, k)
		dst = append(dst, ": "...)
		var err error
		if dst, err = appendValue(dst, value(k), depth+1); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// sortKeys sorts keys as Python sorts the strings they are written as, and
// fails if two of them are written the same.
//
// Python 3 orders str by code point. UTF-8 was designed so that byte-wise
// order is code point order (a longer encoding always starts with a greater
// lead byte, and continuation bytes compare like the bits they carry), so
// for valid UTF-8 Go's string order is Python's. Note that this is not
// UTF-16 order, where U+E000..U+FFFF sort after the surrogate pairs of
// U+10000 and above; Python does not use UTF-16 order. Keys holding invalid
// UTF-8 are written with \ufffd for each invalid byte and are sorted as
// written.
func sortKeys(keys []string) error {
	valid := true
	for _, k := range keys {
		if !utf8.ValidString(k) {
			valid = false
			break
		}
	}
	cmp := strings.Compare
	if !valid {
		cmp = compareAsWritten
	}
	slices.SortFunc(keys, cmp)
	for i := 1; i < len(keys); i++ {
		if cmp(keys[i-1], keys[i]) == 0 {
			return fmt.Errorf("pyjson: duplicate map key %q", keys[i])
		}
	}
	return nil
}

// compareAsWritten compares a and b by code point, reading each invalid
// UTF-8 byte as U+FFFD, as appendString writes it.
func compareAsWritten(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			if ra < rb {
				return -1
			}
			return 1
		}
		a, b = a[na:], b[nb:]
	}
	switch {
	case a == "" && b == "":
		return 0
	case a == "":
		return -1
	}
	return 1
}

// appendReflect appends the values of named and composite types that the
// type switch of appendValue does not list.
func appendReflect(dst []byte, rv reflect.Value, depth int) ([]byte, error) {
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return append(dst, "null"...), nil
		}
		if depth >= maxDepth {
			return nil, errDepth
		}
		return appendValue(dst, rv.Elem().Interface(), depth+1)
	case reflect.Map:
		return appendReflectMap(dst, rv, depth)
	case reflect.Slice, reflect.Array:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return nil, fmt.Errorf("pyjson: %s is not JSON serializable (Python's bytes are not)", rv.Type())
		}
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return append(dst, "null"...), nil
		}
		if depth >= maxDepth {
			return nil, errDepth
		}
		dst = append(dst, '[')
		for i := range rv.Len() {
			if i > 0 {
				dst = append(dst, ", "...)
			}
			var err error
			if dst, err = appendValue(dst, rv.Index(i).Interface(), depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case reflect.String:
		return appendString(dst, rv.String()), nil
	case reflect.Bool:
		return appendBool(dst, rv.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(dst, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.AppendUint(dst, rv.Uint(), 10), nil
	case reflect.Float32:
		return appendFloat32(dst, float32(rv.Float()))
	case reflect.Float64:
		return appendFloat(dst, rv.Float())
	}
	return nil, fmt.Errorf("pyjson: value of type %s is not JSON serializable", rv.Type())
}

// appendReflectMap appends a map of a type other than map[string]any. Its
// keys must be strings, or interfaces holding strings.
func appendReflectMap(dst []byte, rv reflect.Value, depth int) ([]byte, error) {
	keyType := rv.Type().Key()
	if keyType.Kind() != reflect.String && keyType.Kind() != reflect.Interface {
		return nil, fmt.Errorf("pyjson: map keys must be strings, not %s", keyType)
	}
	if rv.IsNil() {
		return append(dst, "null"...), nil
	}
	if depth >= maxDepth {
		return nil, errDepth
	}
	keys := make([]string, 0, rv.Len())
	vals := make(map[string]reflect.Value, rv.Len())
	for it := rv.MapRange(); it.Next(); {
		k := it.Key()
		if k.Kind() == reflect.Interface {
			k = k.Elem()
		}
		if k.Kind() != reflect.String {
			if !k.IsValid() {
				return nil, errors.New("pyjson: map keys must be strings, not nil")
			}
			return nil, fmt.Errorf("pyjson: map keys must be strings, not %s", k.Type())
		}
		s := k.String()
		keys = append(keys, s)
		vals[s] = it.Value()
	}
	if len(vals) != len(keys) { // map[any]any with "a" and a named string "a"
		return nil, errors.New("pyjson: duplicate map key")
	}
	return appendObject(dst, keys, func(k string) any { return vals[k].Interface() }, depth)
}

// appendFloat32 appends f as the float64 its shortest decimal reads as.
func appendFloat32(dst []byte, f float32) ([]byte, error) {
	var tmp [32]byte
	// Cannot fail: the shortest digits of a finite float32 are a valid
	// float64; NaN and infinities parse back as themselves.
	f64, _ := strconv.ParseFloat(string(strconv.AppendFloat(tmp[:0], float64(f), 'g', -1, 32)), 64)
	return appendFloat(dst, f64)
}

// appendFloat appends f as Python's repr(f): the shortest digits that read
// back as f (Go and Python both pick the nearest of equally short
// candidates), in fixed notation with at least one decimal when the decimal
// exponent is in [-4, 16), else in scientific notation with a signed
// exponent of at least two digits.
func appendFloat(dst []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("pyjson: %v is not valid JSON (Python would write %s)", f, pythonSpecial(f))
	}
	// [-]d[.ddd]e±dd[d]: at most 1+1+1+16+1+1+3 bytes.
	var tmp [32]byte
	s := strconv.AppendFloat(tmp[:0], f, 'e', -1, 64)
	if s[0] == '-' {
		dst = append(dst, '-')
		s = s[1:]
	}
	ePos := len(s) - 1
	for s[ePos] != 'e' {
		ePos--
	}
	exp := 0
	for _, c := range s[ePos+2:] {
		exp = exp*10 + int(c-'0')
	}
	if s[ePos+1] == '-' {
		exp = -exp
	}
	var digitBuf [24]byte
	digits := append(digitBuf[:0], s[0])
	if ePos > 1 { // s[1] is the decimal point
		digits = append(digits, s[2:ePos]...)
	}

	if exp < -4 || exp >= 16 {
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
	point := exp + 1 // digits before the decimal point
	switch {
	case point <= 0: // 0.000ddd
		dst = append(dst, "0."...)
		for range -point {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	case point >= len(digits): // ddd000.0
		dst = append(dst, digits...)
		for range point - len(digits) {
			dst = append(dst, '0')
		}
		dst = append(dst, ".0"...)
	default: // dd.ddd
		dst = append(dst, digits[:point]...)
		dst = append(dst, '.')
		dst = append(dst, digits[point:]...)
	}
	return dst, nil
}

func pythonSpecial(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case f > 0:
		return "Infinity"
	}
	return "-Infinity"
}

// appendNumber appends a json.Number: integers verbatim, whatever their
// size, and other numbers as the Python float they parse to.
func appendNumber(dst []byte, n json.Number) ([]byte, error) {
	s := string(n)
	isFloat, ok := scanNumber(s)
	if !ok {
		return nil, fmt.Errorf("pyjson: json.Number %q is not a JSON number", s)
	}
	if !isFloat {
		if s == "-0" { // Python's int("-0") is 0
			return append(dst, '0'), nil
		}
		return append(dst, s...), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil { // only out of range: the grammar was checked
		return nil, fmt.Errorf("pyjson: json.Number %q overflows a float64 (Python would write Infinity)", s)
	}
	return appendFloat(dst, f)
}

// scanNumber reports whether s is a number in JSON's grammar, and whether it
// has a fraction or an exponent, which makes it a float to Python.
func scanNumber(s string) (isFloat, ok bool) {
	digits := func(i int) int {
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i
	}
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		i = digits(i)
	default:
		return false, false
	}
	if i < len(s) && s[i] == '.' {
		isFloat = true
		start := i + 1
		if i = digits(start); i == start {
			return false, false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		isFloat = true
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		start := i
		if i = digits(start); i == start {
			return false, false
		}
	}
	return isFloat, i == len(s)
}

const hexDigits = "0123456789abcdef"

// appendString appends s quoted as Python's json with ensure_ascii=True:
// bytes ' '..'~' other than '"' and '\\' as they are, the usual short
// escapes, and everything else as lowercase \uXXXX, with surrogate pairs
// above U+FFFF and \ufffd for each byte of invalid UTF-8. s is a string or
// bytes read in place from a msgpack document, which need no copy.
func appendString[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0 // s[start:i] is pending, needing no escape
	for i := 0; i < len(s); {
		c := s[i]
		if c >= ' ' && c <= '~' && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		if c < utf8.RuneSelf {
			switch c {
			case '"':
				dst = append(dst, '\\', '"')
			case '\\':
				dst = append(dst, '\\', '\\')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default: // other controls and DEL
				dst = appendU(dst, rune(c))
			}
			i++
		} else {
			r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))])) // no copy: a short conversion stays on the stack
			i += size
			if r >= 0x10000 {
				r -= 0x10000
				dst = appendU(dst, 0xd800+r>>10)
				dst = appendU(dst, 0xdc00+r&0x3ff)
			} else {
				dst = appendU(dst, r) // utf8.RuneError, \ufffd, for an invalid byte
			}
		}
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendU appends \uXXXX for r <= 0xffff.
func appendU(dst []byte, r rune) []byte {
	return append(dst, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}
