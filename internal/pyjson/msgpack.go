package pyjson

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// FingerprintMsgpack is Fingerprint of the kwargs that raw, one msgpack
// map, decodes to, computed from the bytes without decoding them into Go
// values. The values are read as a loose msgpack decoder reads them into
// any (vmihailenco/msgpack with UseLooseInterfaceDecoding, as Kiq's
// formatter decodes): integers as int64 or uint64, float32 as the float64
// it converts to, str and bin as strings, and timestamps (extension type
// -1) as a time.Time, which Append writes as its RFC 3339 text in UTC.
//
// ok is false when raw holds anything it leaves to that decoder and Append:
// a top-level value that is not a map, bytes after it, map keys that are
// not strings, not valid UTF-8 or repeated, extension types other than
// timestamps, timestamps of any length but 4, 8 and 12 bytes or outside
// years 0 to 9999, NaN and infinities, nesting deeper than 64 levels, or
// malformed input. The caller then decodes raw and calls Fingerprint,
// which gives the same fingerprint, or the error.
func FingerprintMsgpack(name string, raw []byte) (fp string, ok bool) {
	if len(raw) == 0 || !isMap(raw[0]) {
		return "", false
	}
	fp, err := fingerprint(name, func(buf []byte) ([]byte, error) {
		buf, rest, ok := appendMsgpack(buf, raw, 1)
		if !ok || len(rest) != 0 {
			return nil, errNotRead
		}
		return buf, nil
	})
	return fp, err == nil
}

var errNotRead = errors.New("pyjson: left to the decoder")

// maxMsgpackDepth bounds the nesting FingerprintMsgpack follows itself.
const maxMsgpackDepth = 64

func isMap(c byte) bool { return c >= 0x80 && c <= 0x8f || c == 0xde || c == 0xdf }

// appendMsgpack appends the canonical JSON of the msgpack value at the
// start of b, found inside depth containers, and returns the bytes after
// it.
func appendMsgpack(dst, b []byte, depth int) (out, rest []byte, ok bool) {
	if len(b) == 0 || depth > maxMsgpackDepth {
		return nil, nil, false
	}
	c, b := b[0], b[1:]
	switch {
	case c <= 0x7f:
		return strconv.AppendInt(dst, int64(c), 10), b, true
	case c >= 0xe0:
		return strconv.AppendInt(dst, int64(int8(c)), 10), b, true
	case c >= 0xa0 && c <= 0xbf:
		return appendMsgpackString(dst, b, int(c&0x1f))
	case c >= 0x90 && c <= 0x9f:
		return appendMsgpackArray(dst, b, int(c&0x0f), depth)
	case c >= 0x80 && c <= 0x8f:
		return appendMsgpackMap(dst, b, int(c&0x0f), depth)
	}
	switch c {
	case 0xc0:
		return append(dst, "null"...), b, true
	case 0xc2:
		return append(dst, "false"...), b, true
	case 0xc3:
		return append(dst, "true"...), b, true
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8, 16, 32, 64
		n, b, ok := readUint(b, 1<<(c-0xcc))
		return strconv.AppendUint(dst, n, 10), b, ok
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8, 16, 32, 64
		size := 1 << (c - 0xd0)
		n, b, ok := readUint(b, size)
		shift := 64 - 8*size // sign-extend
		return strconv.AppendInt(dst, int64(n<<shift)>>shift, 10), b, ok
	case 0xca, 0xcb: // float 32, 64
		n, b, ok := readUint(b, 4<<(c-0xca))
		f := math.Float64frombits(n)
		if c == 0xca {
			f = float64(math.Float32frombits(uint32(n)))
		}
		out, err := appendFloat(dst, f)
		return out, b, ok && err == nil
	case 0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6: // str 8, 16, 32; bin 8, 16, 32
		n, b, ok := readLen(b, c)
		if !ok {
			return nil, nil, false
		}
		return appendMsgpackString(dst, b, n)
	case 0xdc, 0xdd:
		n, b, ok := readLen(b, c)
		if !ok {
			return nil, nil, false
		}
		return appendMsgpackArray(dst, b, n, depth)
	case 0xde, 0xdf:
		n, b, ok := readLen(b, c)
		if !ok {
			return nil, nil, false
		}
		return appendMsgpackMap(dst, b, n, depth)
	case 0xd6, 0xd7: // fixext 4, 8: the lengths of a timestamp
		return appendMsgpackExt(dst, b, 4<<(c-0xd6))
	case 0xc7, 0xc8, 0xc9: // ext 8, 16, 32
		n, b, ok := readUint(b, 1<<(c-0xc7))
		if !ok || n >= uint64(len(b)) { // the type byte, then n bytes
			return nil, nil, false
		}
		return appendMsgpackExt(dst, b, int(n))
	}
	return nil, nil, false // fixext 1, 2 and 16, and 0xc1, which is never used
}

// timestampExt is the msgpack extension type of timestamps.
const timestampExt = -1

// appendMsgpackExt appends the extension value of n bytes whose type byte
// starts b: a timestamp, decoded as vmihailenco/msgpack decodes it (seconds
// and nanoseconds through time.Unix) and written as Append writes a
// time.Time. Other types are left to the decoder.
func appendMsgpackExt(dst, b []byte, n int) ([]byte, []byte, bool) {
	if len(b) < 1+n || int8(b[0]) != timestampExt {
		return nil, nil, false
	}
	data, rest := b[1:1+n], b[1+n:]
	var t time.Time
	switch n {
	case 4: // seconds: uint32
		t = time.Unix(int64(binary.BigEndian.Uint32(data)), 0)
	case 8: // nanoseconds: 30 bits, then seconds: 34 bits
		v := binary.BigEndian.Uint64(data)
		t = time.Unix(int64(v&(1<<34-1)), int64(v>>34))
	case 12: // nanoseconds: uint32, then seconds: int64
		t = time.Unix(int64(binary.BigEndian.Uint64(data[4:])), int64(binary.BigEndian.Uint32(data)))
	default:
		return nil, nil, false // the decoder fails
	}
	out, err := appendText(dst, t.UTC())
	return out, rest, err == nil
}

// readUint reads a big-endian unsigned integer of size bytes.
func readUint(b []byte, size int) (uint64, []byte, bool) {
	if len(b) < size {
		return 0, nil, false
	}
	var n uint64
	switch size {
	case 1:
		n = uint64(b[0])
	case 2:
		n = uint64(binary.BigEndian.Uint16(b))
	case 4:
		n = uint64(binary.BigEndian.Uint32(b))
	default:
		n = binary.BigEndian.Uint64(b)
	}
	return n, b[size:], true
}

// readLen reads the length that follows the code c of a str, bin, array
// or map of 8, 16 or 32 bits of length.
func readLen(b []byte, c byte) (int, []byte, bool) {
	size := 4
	switch c {
	case 0xd9, 0xc4:
		size = 1
	case 0xda, 0xc5, 0xdc, 0xde:
		size = 2
	}
	n, b, ok := readUint(b, size)
	if !ok || n > uint64(len(b)) { // every element takes a byte at least
		return 0, nil, false
	}
	return int(n), b, true
}

func appendMsgpackString(dst, b []byte, n int) ([]byte, []byte, bool) {
	if len(b) < n {
		return nil, nil, false
	}
	return appendString(dst, b[:n]), b[n:], true
}

func appendMsgpackArray(dst, b []byte, n, depth int) ([]byte, []byte, bool) {
	dst = append(dst, '[')
	for i := range n {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		var ok bool
		if dst, b, ok = appendMsgpack(dst, b, depth+1); !ok {
			return nil, nil, false
		}
	}
	return append(dst, ']'), b, true
}

// msgpackEntry is one entry of a map being written: its key, and where its
// value's JSON was written.
type msgpackEntry struct {
	key        []byte // in the document: UTF-8, so bytes sort as Python sorts str
	start, end int
}

// appendMsgpackMap writes the map of n entries at the start of b with its
// keys sorted, as appendMap does. Each value is written once, in the
// order found, after dst; the entries are then assembled in key order
// after those, and moved down to where the map starts.
func appendMsgpackMap(dst, b []byte, n, depth int) ([]byte, []byte, bool) {
	var stack [8]msgpackEntry
	entries := stack[:0]
	base := len(dst)
	for range n {
		key, rest, ok := readKey(b)
		if !ok {
			return nil, nil, false
		}
		start := len(dst)
		if dst, b, ok = appendMsgpack(dst, rest, depth+1); !ok {
			return nil, nil, false
		}
		entries = append(entries, msgpackEntry{key: key, start: start, end: len(dst)})
	}
	slices.SortFunc(entries, func(x, y msgpackEntry) int { return bytes.Compare(x.key, y.key) })
	assembled := len(dst)
	dst = append(dst, '{')
	for i, e := range entries {
		if i > 0 {
			if bytes.Equal(entries[i-1].key, e.key) {
				return nil, nil, false // the decoder keeps the last; leave it to the decoder
			}
			dst = append(dst, ", "...)
		}
		dst = appendString(dst, e.key)
		dst = append(dst, ": "...)
		dst = append(dst, dst[e.start:e.end]...)
	}
	dst = append(dst, '}')
	n = copy(dst[base:], dst[assembled:])
	return dst[:base+n], b, true
}

// readKey reads a map key: a str of valid UTF-8.
func readKey(b []byte) ([]byte, []byte, bool) {
	if len(b) == 0 {
		return nil, nil, false
	}
	c, b := b[0], b[1:]
	n := int(c & 0x1f)
	if c < 0xa0 || c > 0xbf {
		if c != 0xd9 && c != 0xda && c != 0xdb {
			return nil, nil, false
		}
		var ok bool
		if n, b, ok = readLen(b, c); !ok {
			return nil, nil, false
		}
	}
	if len(b) < n || !utf8.Valid(b[:n]) {
		return nil, nil, false
	}
	return b[:n], b[n:], true
}
