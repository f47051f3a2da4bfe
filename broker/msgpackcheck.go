package broker

import (
	"encoding/binary"
	"errors"
	"reflect"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// maxMsgpackDepth bounds the nesting of decoded input.
const maxMsgpackDepth = 512

var errMsgpackBounds = errors.New("declared length exceeds the input, or nesting too deep")

// checkMsgpack walks one msgpack value without allocating and fails when a
// declared length could not be satisfied by the bytes that remain, or
// nesting exceeds maxMsgpackDepth. The decoder preallocates by declared
// length: without this check, five hostile bytes (an array of 2³¹
// elements) ask it for gigabytes.
func checkMsgpack(b []byte) error {
	// pending[i] is how many values remain to read at depth i.
	pending := make([]uint64, 1, 8)
	pending[0] = 1
	i := 0
	for len(pending) > 0 {
		if pending[len(pending)-1] == 0 {
			pending = pending[:len(pending)-1]
			continue
		}
		pending[len(pending)-1]--
		if i >= len(b) {
			return errMsgpackBounds
		}
		c := b[i]
		i++
		var size, items uint64 // bytes to skip; values to read inside
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			items = 2 * uint64(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			items = uint64(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			size = uint64(c & 0x1f)
		default:
			var n uint64
			var lenBytes int
			switch c {
			case 0xc4, 0xd9: // bin8, str8
				lenBytes = 1
			case 0xc5, 0xda, 0xdc, 0xde: // bin16, str16, array16, map16
				lenBytes = 2
			case 0xc6, 0xdb, 0xdd, 0xdf: // bin32, str32, array32, map32
				lenBytes = 4
			case 0xc7: // ext8
				lenBytes = 1
			case 0xc8: // ext16
				lenBytes = 2
			case 0xc9: // ext32
				lenBytes = 4
			case 0xca, 0xce, 0xd2:
				size = 4
			case 0xcb, 0xcf, 0xd3:
				size = 8
			case 0xcc, 0xd0:
				size = 1
			case 0xcd, 0xd1:
				size = 2
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: a type byte and 1..16 bytes
				size = 1 + 1<<(c-0xd4)
			default: // 0xc1 is never used
				return errMsgpackBounds
			}
			if lenBytes > 0 {
				if len(b)-i < lenBytes {
					return errMsgpackBounds
				}
				switch lenBytes {
				case 1:
					n = uint64(b[i])
				case 2:
					n = uint64(binary.BigEndian.Uint16(b[i:]))
				case 4:
					n = uint64(binary.BigEndian.Uint32(b[i:]))
				}
				i += lenBytes
				switch c {
				case 0xdc, 0xdd:
					items = n
				case 0xde, 0xdf:
					items = 2 * n
				case 0xc7, 0xc8, 0xc9:
					size = 1 + n // the type byte, then the data
				default:
					size = n
				}
			}
		}
		if size > uint64(len(b)-i) || items > uint64(len(b)-i) {
			return errMsgpackBounds
		}
		i += int(size)
		if items > 0 {
			if len(pending) >= maxMsgpackDepth {
				return errMsgpackBounds
			}
			pending = append(pending, items)
		}
	}
	return nil
}

// msgpack reads past an extension's header for a map header wherever it
// decodes a map, and preallocates the map at the length declared there:
// bytes that checkMsgpack counts as the extension's data, so their length
// was never checked. For maps of interface values the preallocation is not
// capped either: seven hostile bytes ask for gigabytes. The maps Kiq
// decodes, labels and the map[string]any and map[any]any in arguments and
// results (msgpack decodes every such field through its registered
// decoder, process-wide), refuse an extension where the map belongs;
// otherwise they decode as msgpack decodes them.
func init() {
	msgpack.Register(map[string]any(nil), nil, func(d *msgpack.Decoder, v reflect.Value) error {
		m, err := decodeMap(d)
		v.Set(reflect.ValueOf(m))
		return err
	})
	msgpack.Register(map[any]any(nil), nil, func(d *msgpack.Decoder, v reflect.Value) error {
		if err := refuseExtension(d); err != nil {
			return err
		}
		m, err := d.DecodeUntypedMap()
		v.Set(reflect.ValueOf(m))
		return err
	})
}

var errExtensionForMap = errors.New("an extension value where a map belongs")

func refuseExtension(d *msgpack.Decoder) error {
	c, err := d.PeekCode()
	if err != nil {
		return err
	}
	if msgpcode.IsExt(c) {
		return errExtensionForMap
	}
	return nil
}

// decodeMap decodes a map[string]any as msgpack does, refusing an
// extension where the map belongs.
func decodeMap(d *msgpack.Decoder) (map[string]any, error) {
	if err := refuseExtension(d); err != nil {
		return nil, err
	}
	return d.DecodeMap()
}
