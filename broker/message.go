package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Message is the envelope of one task on the wire. Only the outermost call
// (task.Define's handler, the kicker) sees the typed arguments; brokers,
// middlewares and the worker work on this untyped form.
type Message struct {
	// TaskID identifies this task, and stays the same across its retries.
	TaskID string `msgpack:"task_id"`
	// TaskName is the stable name the task was defined with; the worker
	// finds the handler by it.
	TaskName string `msgpack:"task_name"`
	// Labels are the merged labels of the task and the call.
	Labels Labels `msgpack:"labels"`
	// Args holds the arguments encoded by the broker's [Formatter].
	Args msgpack.RawMessage `msgpack:"args"`
	// Attempt counts the deliveries that ended in a retry: 0 on the first
	// run, 1 on the first retry.
	Attempt int `msgpack:"attempt,omitempty"`
	// EnqueuedAt is when the message was first kicked, in Unix milliseconds.
	EnqueuedAt int64 `msgpack:"enqueued_at,omitempty"`

	// Lock, when set by a middleware's PreSend, asks the broker to take a
	// Redis lock before the message becomes visible (see [Lock]). It never
	// travels on the wire.
	Lock *Lock `msgpack:"-"`
	// Unlock, when set by a middleware's PostExecute, asks the consumer to
	// release that lock (compare-and-delete against TaskID) in the same
	// script that settles the delivery as done or dead, where the broker
	// shares the lock's Redis (LockingBroker). A consumer that cannot leaves
	// it: the middleware releases it itself then. Never on the wire.
	Unlock *Lock `msgpack:"-"`
}

// Queue returns the queue named by the message's queue label, or def.
func (m *Message) Queue(def string) string {
	if q, ok := m.Labels.String(LabelQueue); ok && q != "" {
		return q
	}
	return def
}

// Delay returns how long after EnqueuedAt the message may be delivered: the
// delay label, or 0.
func (m *Message) Delay() time.Duration {
	d, _ := m.Labels.Duration(LabelDelay)
	return max(d, 0)
}

// NewTaskID returns a new task id: a UUIDv7 (RFC 9562) as 32 lowercase hex
// digits, the form of Taskiq's uuid4().hex. Its first 48 bits are the Unix
// time in milliseconds, so ids sort by creation time; the rest is random.
// The version digit tells Kiq's ids from Taskiq's (see [IsGeneratedTaskID]).
func NewTaskID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	ms := uint64(time.Now().UnixMilli())
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x70 // version 7
	b[8] = b[8]&0x3f | 0x80 // variant 10
	var h [32]byte
	hex.Encode(h[:], b[:])
	return string(h[:])
}

// IsGeneratedTaskID reports whether id has the form NewTaskID gives: 32
// lowercase hex digits of a version 7 UUID. Only locks held under such ids
// are taken over when their holder has vanished (see [Lock.TakeOver]): an
// id of another form was given by the caller or by another producer (Python
// Taskiq's are version 4), whose tasks Kiq cannot look for.
func IsGeneratedTaskID(id string) bool {
	if len(id) != 32 || id[12] != '7' || !strings.ContainsRune("89ab", rune(id[16])) {
		return false
	}
	for _, c := range []byte(id) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Lock asks a broker to enqueue a message only if it can take a Redis lock:
// SET Key TaskID NX PX TTL. Brokers that share the lock's Redis do both in
// one script; [LockingBroker] tells whether a broker can.
type Lock struct {
	// Client is the Redis that holds the lock.
	Client redis.UniversalClient
	// Key is the lock's full key.
	Key string
	// TTL is how long the lock lives unless extended or released.
	TTL time.Duration
	// Held builds the error returned when another task holds the lock:
	// msg is the message whose kick found it held, holder the id of that
	// task. (The message is passed, not captured, so that one function
	// serves every kick.)
	Held func(msg *Message, holder string) error
	// TakeOver lets the broker take a held lock over when its holder is a
	// task id Kiq generated ([IsGeneratedTaskID]) that exists nowhere on the
	// message's queue (not pending, scheduled, in flight or awaiting a
	// retry), and the lock has more than Grace left to live: a
	// lock nearer its end may belong to a send still under way on a path
	// that locks before it enqueues, and it ends soon anyway.
	TakeOver bool
	// Grace is the remaining life under which a lock is never taken over;
	// see TakeOver.
	Grace time.Duration
	// TakenOver, when set, is called after the broker took msg's lock over
	// from holder.
	TakenOver func(msg *Message, holder string)
	// Released, when set on a [Message.Unlock], is called after the
	// consumer's settling script (ack or dead letter) deleted the lock: the
	// task still held it. It is not called when the lock was gone or held
	// by another task, when the delivery was handed back, or when the
	// settling call failed.
	Released func()
}

// LockingBroker is implemented by brokers that can take a [Lock] atomically
// with the enqueue.
type LockingBroker interface {
	Broker
	// LocksAtomically reports whether Kick takes a Lock held in c in the same
	// script as the enqueue.
	LocksAtomically(c redis.UniversalClient) bool
}

// Formatter encodes messages and task arguments. Msgpack is the default; a
// formatter for Taskiq's JSON message lets Go and Python share queues.
type Formatter interface {
	// EncodeMessage returns the wire form of m.
	EncodeMessage(m *Message) ([]byte, error)
	// DecodeMessage parses a wire message. Its error wraps ErrMalformed.
	DecodeMessage(b []byte) (*Message, error)
	// EncodeArgs encodes a task's arguments (a struct).
	EncodeArgs(v any) ([]byte, error)
	// DecodeArgs decodes arguments into v: a pointer to the argument struct,
	// or to a map[string]any, which receives int64, uint64, float64, string,
	// bool, nil, []any and map[string]any values.
	DecodeArgs(b []byte, v any) error
}

// ErrMalformed is wrapped by errors about input that cannot be decoded: a
// message, or arguments of the wrong type.
var ErrMalformed = errors.New("kiq: malformed message")

// Msgpack is the default [Formatter]. Argument structs are encoded as maps
// keyed by their msgpack field names.
var Msgpack Formatter = msgpackFormatter{}

type msgpackFormatter struct{}

// maxDecodeLen bounds the size of a message the formatter decodes.
const maxDecodeLen = 64 << 20

// messageEncoder is a pooled buffer and the encoder writing into it.
type messageEncoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

var messageEncoders = sync.Pool{New: func() any {
	e := &messageEncoder{}
	e.enc = msgpack.NewEncoder(&e.buf) // writes straight into buf: bytes.Buffer is a byte writer
	return e
}}

// maxPooledBuffer is the largest buffer put back in messageEncoders: a rare
// huge message does not pin its buffer for good.
const maxPooledBuffer = 64 << 10

func getEncoder() *messageEncoder {
	e := messageEncoders.Get().(*messageEncoder)
	e.buf.Reset()
	return e
}

func putEncoder(e *messageEncoder) {
	if e.buf.Cap() <= maxPooledBuffer {
		messageEncoders.Put(e)
	}
}

// EncodeMessage writes m field by field, as msgpack.Marshal would by its
// tags (a map keyed by the msgpack names, omitempty honoured) but without
// reflection: it is on every kick's path.
func (msgpackFormatter) EncodeMessage(m *Message) ([]byte, error) {
	e := getEncoder()
	defer putEncoder(e)
	enc := e.enc
	n := 4
	if m.Attempt != 0 {
		n++
	}
	if m.EnqueuedAt != 0 {
		n++
	}
	err := errors.Join(
		enc.EncodeMapLen(n),
		enc.EncodeString("task_id"), enc.EncodeString(m.TaskID),
		enc.EncodeString("task_name"), enc.EncodeString(m.TaskName),
		enc.EncodeString("labels"), encodeLabels(enc, m.Labels),
		enc.EncodeString("args"),
	)
	if len(m.Args) == 0 {
		err = errors.Join(err, enc.EncodeNil())
	} else {
		e.buf.Write(m.Args)
	}
	if m.Attempt != 0 {
		err = errors.Join(err, enc.EncodeString("attempt"), enc.EncodeInt(int64(m.Attempt)))
	}
	if m.EnqueuedAt != 0 {
		err = errors.Join(err, enc.EncodeString("enqueued_at"), enc.EncodeInt(m.EnqueuedAt))
	}
	if err != nil {
		return nil, fmt.Errorf("kiq: encode message: %w", err)
	}
	return bytes.Clone(e.buf.Bytes()), nil
}

func encodeLabels(enc *msgpack.Encoder, l Labels) error {
	if l == nil {
		return enc.EncodeNil()
	}
	if err := enc.EncodeMapLen(len(l)); err != nil {
		return err
	}
	for k, v := range l {
		if err := enc.EncodeString(k); err != nil {
			return err
		}
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

func (msgpackFormatter) DecodeMessage(b []byte) (*Message, error) {
	if len(b) > maxDecodeLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if err := checkMsgpack(b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	e := getDecoder(b)
	defer putDecoder(e)
	m, ok := decodeEnvelope(e, b)
	if !ok {
		m = new(Message)
		e.reset(b)
		if err := e.dec.Decode(m); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	if m.TaskID == "" || m.TaskName == "" {
		return nil, fmt.Errorf("%w: missing task_id or task_name", ErrMalformed)
	}
	if m.Attempt < 0 {
		return nil, fmt.Errorf("%w: negative attempt %d", ErrMalformed, m.Attempt)
	}
	return m, nil
}

// decoder is a pooled msgpack decoder, the reader it reads from, and room
// for an envelope's key.
type decoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
	key [len("enqueued_at")]byte // the longest name
}

var decoders = sync.Pool{New: func() any {
	e := &decoder{}
	e.dec = msgpack.NewDecoder(&e.r) // reads straight from r: bytes.Reader is a byte scanner
	return e
}}

// getDecoder returns a pooled decoder reading b; give it back with
// putDecoder.
func getDecoder(b []byte) *decoder {
	e := decoders.Get().(*decoder)
	e.reset(b)
	return e
}

// reset makes e read b from its start, with loose interface decoding (a
// map[string]any's integers as int64, its floats as float64), the way
// every decoder of Kiq's is set.
func (e *decoder) reset(b []byte) {
	e.r.Reset(b)
	e.dec.Reset(&e.r)
	e.dec.UseLooseInterfaceDecoding(true)
}

// putDecoder pools e, holding no bytes of what it read.
func putDecoder(e *decoder) {
	e.r.Reset(nil)
	decoders.Put(e)
}

// decodeEnvelope decodes b, a map that e reads from its start, field by
// field as msgpack.Unmarshal would by Message's tags (the primitives its
// reflection calls, nil-aware like it for the labels and the arguments),
// but without reflection: it is on every delivery's path. ok is false for what it leaves to msgpack: a
// top-level value that is not a map (a nil, or a struct encoded as an
// array), a key longer than any field's name, and any error, which msgpack
// then reports.
func decodeEnvelope(e *decoder, b []byte) (m *Message, ok bool) {
	if len(b) == 0 || !(msgpcode.IsFixedMap(b[0]) || b[0] == msgpcode.Map16 || b[0] == msgpcode.Map32) {
		return nil, false
	}
	d := e.dec
	n, err := d.DecodeMapLen()
	if err != nil {
		return nil, false
	}
	m = new(Message)
	for range n {
		kn, err := d.DecodeBytesLen() // -1 for a nil key, which msgpack reads as ""
		if err != nil || kn > len(e.key) {
			return nil, false
		}
		k := e.key[:max(kn, 0)]
		if err := d.ReadFull(k); err != nil {
			return nil, false
		}
		switch string(k) {
		case "task_id":
			m.TaskID, err = d.DecodeString()
		case "task_name":
			m.TaskName, err = d.DecodeString()
		case "labels":
			m.Labels = nil
			var isNil bool
			if isNil, err = readNil(d); err == nil && !isNil {
				err = m.Labels.DecodeMsgpack(d)
			}
		case "args":
			// The value's bytes, as msgpack.RawMessage decodes them, copied
			// from b at once rather than recorded as the decoder skips them.
			m.Args = nil
			var isNil bool
			if isNil, err = readNil(d); err == nil && !isNil {
				start := len(b) - e.r.Len()
				err = d.Skip()
				m.Args = bytes.Clone(b[start : len(b)-e.r.Len()])
			}
		case "attempt":
			var a int64
			a, err = d.DecodeInt64()
			m.Attempt = int(a)
		case "enqueued_at":
			m.EnqueuedAt, err = d.DecodeInt64()
		default:
			err = d.Skip()
		}
		if err != nil {
			return nil, false
		}
	}
	return m, true
}

// readNil reads a nil if one comes next. For a nil, msgpack leaves a field
// whose type decodes itself (Labels, RawMessage) at its zero value.
func readNil(d *msgpack.Decoder) (bool, error) {
	c, err := d.PeekCode()
	if err != nil || c != msgpcode.Nil {
		return false, err
	}
	return true, d.DecodeNil()
}

// EncodeArgs encodes v as msgpack.Marshal would, through a pooled encoder:
// one allocation, the copy returned.
func (msgpackFormatter) EncodeArgs(v any) ([]byte, error) {
	e := getEncoder()
	defer putEncoder(e)
	if err := e.enc.Encode(v); err != nil {
		return nil, fmt.Errorf("kiq: encode arguments: %w", err)
	}
	return bytes.Clone(e.buf.Bytes()), nil
}

func (msgpackFormatter) DecodeArgs(b []byte, v any) error {
	if err := checkMsgpack(b); err != nil {
		return fmt.Errorf("%w: arguments: %v", ErrMalformed, err)
	}
	e := getDecoder(b)
	defer putDecoder(e)
	d := e.dec
	if m, ok := v.(*map[string]any); ok {
		// msgpack decodes into a *map[string]any without its registered
		// decoder (see decodeMap); its own decoder is used instead.
		var err error
		if *m, err = decodeMap(d); err != nil {
			return fmt.Errorf("%w: arguments: %v", ErrMalformed, err)
		}
		return nil
	}
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: arguments: %v", ErrMalformed, err)
	}
	return nil
}

// TaskLocator is implemented by brokers that can tell whether a task still
// exists in a queue: pending, in flight, scheduled or awaiting a retry. The
// deduplication middleware uses it to take over locks of vanished tasks.
type TaskLocator interface {
	TaskExists(ctx context.Context, queue, taskID string) (bool, error)
}

// Redeliverer is implemented by brokers that redeliver the tasks of a
// crashed consumer: RedeliveryTimeout bounds how long after the crash that
// happens.
type Redeliverer interface {
	RedeliveryTimeout() time.Duration
}
