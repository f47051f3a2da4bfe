package broker

// ListQueue's Redis layout. P is the key prefix (default "kiq") and q a
// queue name. Every key of a queue carries the hash tag {q}, so each script
// touches one Redis Cluster slot, and every key a script touches is passed
// to it in KEYS, never built inside Lua.
//
//	P:{q}:msg              hash   task id -> encoded message, while the task exists
//	P:{q}:pending          list   task ids ready to run; producers push left, consumers take right
//	P:{q}:scheduled        zset   task id -> due time (ms): delayed tasks and retries
//	P:{q}:wip:<consumer>   list   task ids a consumer holds (in flight), newest at the left
//	P:{q}:land:<consumer>  list   ids a consumer's BLMOVE moved, for the take.lua behind it
//	P:{q}:consumers        zset   consumer id -> heartbeat deadline (ms, Redis clock)
//	P:{q}:dead             list   msgpack-encoded DeadLetters, newest first, capped
//
// The life of a message: Kick stores it in msg and pushes its id on pending
// (or adds it to scheduled), in one script that may first take a
// deduplication lock. A consumer moves ids from pending to its wip list
// atomically (LMOVE in take.lua for a batch; when idle, BLMOVE into its
// land list, with take.lua behind it in one pipeline) and reads their
// messages in the same round trip. Ack removes the id from wip
// and the message from msg. Because msg holds every task that exists, a task
// is found by id wherever it is: pending, scheduled or in flight.
//
// A consumer heartbeats its deadline in consumers; any consumer of the
// queue that finds a deadline passed moves the dead one's wip ids back to
// the head of pending (reap.lua). Nothing is removed from Redis before it was
// acknowledged, retried, dead-lettered or handed back.
//
// Wake-up tokens: a consumer blocked in BLMOVE sleeps at most until the
// earliest scheduled task is due. When a kick or a retry schedules a task
// earlier than that, the script pushes an empty id ("") on pending so that
// a blocked consumer wakes and sleeps again for the shorter time. Consumers
// drop tokens; at most one waits at the head of pending.
//
// All times are Redis's (TIME in the scripts), never the clients' clocks.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kiq-go/kiq/internal/batch"
	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lua/kick.lua
	kickLua string
	//go:embed lua/take.lua
	takeLua string
	//go:embed lua/ack.lua
	ackLua string
	//go:embed lua/retry.lua
	retryLua string
	//go:embed lua/dead.lua
	deadLua string
	//go:embed lua/handback.lua
	handBackLua string
	//go:embed lua/reap.lua
	reapLua string
	//go:embed lua/heartbeat.lua
	heartbeatLua string

	kickScript      = redis.NewScript(kickLua)
	takeScript      = redis.NewScript(takeLua)
	ackScript       = redis.NewScript(ackLua)
	retryScript     = redis.NewScript(retryLua)
	deadScript      = redis.NewScript(deadLua)
	handBackScript  = redis.NewScript(handBackLua)
	reapScript      = redis.NewScript(reapLua)
	heartbeatScript = redis.NewScript(heartbeatLua)
)

// ErrMessageTooLarge is returned by Kick for a message over the broker's
// size limit (WithMaxMessageSize).
var ErrMessageTooLarge = errors.New("kiq: message too large")

// ErrTaskExists is returned by Kick for a task id already pending,
// scheduled or in flight on the queue.
var ErrTaskExists = errors.New("kiq: a task with this id exists already")

// Defaults of ListQueue's options.
const (
	DefaultKeyPrefix         = "kiq"
	DefaultHeartbeatInterval = 2 * time.Second
	DefaultHeartbeatTTL      = 15 * time.Second
	DefaultDeadLetterLimit   = 10000
)

// maxBlock is the longest a consumer blocks in one BLMOVE: the bound on how
// late it notices anything it is not woken for (its context ending is
// noticed at once; see lqConsumer.block).
const maxBlock = time.Second

// ListQueue is the Redis list broker: at-least-once, with blocking
// consumption (no polling), batched takes and acknowledgements (one round
// trip each), scheduled delivery, dead letters, and redelivery of the tasks
// of a consumer that died. See the layout above and docs/architecture.md.
//
// It needs Redis 6.2 or later (LMOVE, BLMOVE, ZADD GT).
type ListQueue struct {
	base

	client     redis.UniversalClient
	kicks      *batch.Coalescer[*kickReq] // coalesces concurrent kicks into script calls
	ownsClient bool
	queue      string
	prefix     string
	hbInterval time.Duration
	hbTTL      time.Duration
	deadLimit  int
	maxSize    int
	maxBlock   time.Duration
	log        *slog.Logger
}

// ListQueueOption configures NewListQueue.
type ListQueueOption func(*ListQueue)

// WithQueueName sets the queue of messages without a queue label, and the
// one consumed by default. Default "taskiq" ([DefaultQueue]).
func WithQueueName(name string) ListQueueOption { return func(b *ListQueue) { b.queue = name } }

// WithClient makes the broker use an existing client; the URL given to
// NewListQueue may then be "". Shutdown does not close it.
func WithClient(c redis.UniversalClient) ListQueueOption {
	return func(b *ListQueue) { b.client = c }
}

// WithKeyPrefix sets the prefix of the broker's keys. Default "kiq".
func WithKeyPrefix(p string) ListQueueOption { return func(b *ListQueue) { b.prefix = p } }

// WithFormatter sets the message encoding. Default [Msgpack].
func WithFormatter(f Formatter) ListQueueOption { return func(b *ListQueue) { b.formatter = f } }

// WithHeartbeat sets how often a consumer renews its liveness (default 2 s)
// and how long after its last renewal it counts as dead, so that its tasks
// are delivered again (default 15 s). The TTL must exceed the interval;
// leave it several intervals so that a slow network or a paused process is
// not taken for a dead one.
func WithHeartbeat(interval, ttl time.Duration) ListQueueOption {
	return func(b *ListQueue) { b.hbInterval, b.hbTTL = interval, ttl }
}

// WithDeadLetterLimit sets how many dead letters a queue keeps, newest
// first. Default 10000.
func WithDeadLetterLimit(n int) ListQueueOption { return func(b *ListQueue) { b.deadLimit = n } }

// WithMaxMessageSize sets the largest encoded message Kick accepts and a
// consumer decodes; a larger one found on the queue is dead-lettered
// unread. Default 8 MiB.
func WithMaxMessageSize(n int) ListQueueOption { return func(b *ListQueue) { b.maxSize = n } }

// WithLogger sets the logger of background errors (heartbeats, reaping,
// hand-backs). Default slog.Default().
func WithLogger(l *slog.Logger) ListQueueOption { return func(b *ListQueue) { b.log = l } }

// NewListQueue returns a Redis list broker for the Redis at url
// (redis://[user:password@]host:port[/db], rediss:// for TLS, unix://), or
// for the client given WithClient. It opens no connection: the first Kick
// or Consume does. A malformed URL or option is an error, which never
// contains the URL's password.
func NewListQueue(url string, opts ...ListQueueOption) (*ListQueue, error) {
	b := &ListQueue{
		base:       base{formatter: Msgpack},
		queue:      DefaultQueue,
		prefix:     DefaultKeyPrefix,
		hbInterval: DefaultHeartbeatInterval,
		hbTTL:      DefaultHeartbeatTTL,
		deadLimit:  DefaultDeadLetterLimit,
		maxSize:    8 << 20,
	}
	for _, o := range opts {
		o(b)
	}
	if err := b.validate(); err != nil {
		return nil, err
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.client == nil {
		ropts, err := ParseRedisURL(url)
		if err != nil {
			return nil, err
		}
		b.client, b.ownsClient = redis.NewClient(ropts), true
	}
	b.kicks = batch.NewCoalescer(2, b.sendKicks)
	b.maxBlock = blockLimit(b.client)
	return b, nil
}

func (b *ListQueue) validate() error {
	switch {
	case b.maxSize <= 0:
		return fmt.Errorf("kiq: list queue: max message size must be positive, got %d", b.maxSize)
	case b.queue == "":
		return errors.New("kiq: list queue: empty queue name")
	case b.hbInterval <= 0 || b.hbTTL <= b.hbInterval:
		return fmt.Errorf("kiq: list queue: heartbeat TTL (%v) must exceed a positive interval (%v)", b.hbTTL, b.hbInterval)
	case b.deadLimit <= 0:
		return fmt.Errorf("kiq: list queue: dead-letter limit must be positive, got %d", b.deadLimit)
	case b.formatter == nil:
		return errors.New("kiq: list queue: nil formatter")
	}
	return nil
}

// blockLimit returns how long one BLMOVE may block on c: maxBlock, or less
// when the client's read timeout would cut the wait short (go-redis extends
// the read timeout only for the blocking commands it builds itself).
func blockLimit(c redis.UniversalClient) time.Duration {
	var rt time.Duration
	switch x := c.(type) {
	case *redis.Client:
		rt = x.Options().ReadTimeout
	case *redis.ClusterClient:
		rt = x.Options().ReadTimeout
	case *redis.Ring:
		rt = x.Options().ReadTimeout
	}
	if rt <= 0 { // no read deadline, or an unknown client (default 3 s)
		return maxBlock
	}
	return max(min(maxBlock, rt/2), time.Millisecond)
}

// ParseRedisURL parses a Redis URL as go-redis does, into the options of
// the clients Kiq makes from a URL: a context's deadline bounds every
// command (ContextTimeoutEnabled). Its error never contains the URL's
// password, as written, unescaped or quoted.
func ParseRedisURL(rawURL string) (*redis.Options, error) {
	if strings.TrimSpace(rawURL) == "" {
		return nil, errors.New("kiq: bad Redis URL: empty")
	}
	opts, err := redis.ParseURL(rawURL)
	if err == nil {
		opts.ContextTimeoutEnabled = true
		return opts, nil
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err // url.Parse's error repeats the whole URL
	}
	return nil, fmt.Errorf("kiq: bad Redis URL: %s", redactUserinfo(err.Error(), rawURL))
}

// redactUserinfo hides in msg the user info of rawURL (user:password) and
// the password, as written, unescaped, and quoted.
func redactUserinfo(msg, rawURL string) string {
	i, j := strings.Index(rawURL, "://"), strings.LastIndex(rawURL, "@")
	if i < 0 || j <= i+3 {
		return msg
	}
	info := rawURL[i+3 : j]
	secrets := []string{info}
	if _, pass, ok := strings.Cut(info, ":"); ok {
		secrets = append(secrets, pass)
	}
	for _, s := range secrets { // range reads secrets once: appends are not revisited
		if u, err := url.PathUnescape(s); err == nil && u != s {
			secrets = append(secrets, u)
		}
	}
	for _, s := range secrets {
		q := strconv.Quote(s)
		secrets = append(secrets, q[1:len(q)-1])
	}
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}

// WithResultBackend sets where the worker stores results and Wait reads
// them, and returns b. Shutdown closes it.
func (b *ListQueue) WithResultBackend(rb ResultBackend) *ListQueue {
	b.results = rb
	return b
}

// WithMiddlewares registers middlewares, in order, and returns b.
func (b *ListQueue) WithMiddlewares(mws ...Middleware) *ListQueue {
	b.addMiddlewares(b, mws)
	return b
}

// Client returns the broker's Redis client.
func (b *ListQueue) Client() redis.UniversalClient { return b.client }

// KeyPrefix returns the prefix of the broker's keys.
func (b *ListQueue) KeyPrefix() string { return b.prefix }

// QueueName returns the default queue.
func (b *ListQueue) QueueName() string { return b.queue }

// RedeliveryTimeout bounds how long after a consumer dies its tasks are
// delivered again: the heartbeat TTL, plus one interval for another
// consumer's heartbeat to notice.
func (b *ListQueue) RedeliveryTimeout() time.Duration { return b.hbTTL + b.hbInterval }

// failoverAddr is the Addr go-redis gives the options of a Sentinel
// (failover) client: it says nothing about the server behind it.
const failoverAddr = "FailoverClient"

// LocksAtomically reports whether a lock held in c can be taken in the
// enqueue script: both must be single-server clients (*redis.Client, not a
// cluster or a ring) of the same server and database, that is the same
// client, or clients with the same network, address, database and user.
// Two spellings of one address ("localhost" and "127.0.0.1") count as
// different servers.
func (b *ListQueue) LocksAtomically(c redis.UniversalClient) bool {
	mine, ok1 := b.client.(*redis.Client)
	theirs, ok2 := c.(*redis.Client)
	if !ok1 || !ok2 || mine == nil || theirs == nil {
		return false
	}
	if mine == theirs {
		return true
	}
	a, o := mine.Options(), theirs.Options()
	return a.Addr != failoverAddr &&
		a.Network == o.Network && a.Addr == o.Addr && a.DB == o.DB && a.Username == o.Username
}

// Startup checks the connection and runs the middlewares' Startup hooks.
func (b *ListQueue) Startup(ctx context.Context) error {
	if err := b.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("kiq: list queue: %w", err)
	}
	return b.startup(ctx)
}

// Shutdown runs the middlewares' Shutdown hooks and closes the client if
// NewListQueue opened it. Close consumers first.
func (b *ListQueue) Shutdown(ctx context.Context) error {
	err := b.shutdown(ctx)
	if b.ownsClient {
		err = errors.Join(err, b.client.Close())
	}
	return err
}

func (b *ListQueue) key(queue, part string) string {
	return b.prefix + ":{" + queue + "}:" + part
}

// Kick stores msg and queues it, or schedules it when it has a delay (from
// now, by Redis's clock). With msg.Lock set, the lock is taken in the same
// script, one round trip in all (see [LockingBroker] and [Lock.TakeOver]).
// A task id already on the queue is an error wrapping [ErrTaskExists].
//
// Concurrent kicks are coalesced: those made while a batch is in flight go
// out together in the next, one script call per queue, and each returns
// once Redis has its message.
func (b *ListQueue) Kick(ctx context.Context, msg *Message) error {
	raw, err := b.encodeForKick(msg)
	if err != nil {
		return err
	}
	k := &kickReq{msg: msg, raw: raw}
	if err := b.kicks.Do(ctx, k); err != nil {
		return fmt.Errorf("kiq: kick %s: %w", msg.TaskName, err)
	}
	return k.err
}

// kickBatch is the most messages one kick script call carries.
const kickBatch = 1000

// KickMany sends msgs, grouped by queue, a thousand at a time in one script
// call: one round trip per thousand messages. Each message is kicked as by
// Kick, its lock included, and gets its own error.
func (b *ListQueue) KickMany(ctx context.Context, msgs []*Message) []error {
	errs := make([]error, len(msgs))
	ks := make([]*kickReq, 0, len(msgs))
	for i, m := range msgs {
		raw, err := b.encodeForKick(m)
		if err != nil {
			errs[i] = err
			continue
		}
		ks = append(ks, &kickReq{msg: m, raw: raw, index: i})
	}
	b.sendKicks(ctx, ks)
	for _, k := range ks {
		errs[k.index] = k.err
	}
	return errs
}

// kickReq is one message on its way to the kick script, and its outcome.
type kickReq struct {
	msg   *Message
	raw   bytesArg // msg encoded
	index int      // KickMany: the message's place in its argument
	err   error    // set by sendKicks

	// The message's other arguments to the script, set by sendKicks.
	id                stringArg
	delay, ttl, grace intArg
}

// A kick's arguments to the kick script go to go-redis as pointers into
// the kick: a pointer in an interface costs no allocation, where a string,
// a slice or an int64 is copied to the heap. go-redis writes each through
// its MarshalBinary, and shows it (in a trace's statement, say) through its
// String, as it would show the value itself.
type (
	stringArg struct {
		s   string
		buf [32]byte // room for a generated task id
	}
	bytesArg []byte
	intArg   struct {
		n   int64
		buf [20]byte
	}
)

// MarshalBinary returns the string's bytes.
func (a *stringArg) MarshalBinary() ([]byte, error) { return append(a.buf[:0], a.s...), nil }

// String returns the string.
func (a *stringArg) String() string { return a.s }

// MarshalBinary returns the bytes.
func (a *bytesArg) MarshalBinary() ([]byte, error) { return *a, nil }

// String returns the bytes as a string.
func (a *bytesArg) String() string { return string(*a) }

// MarshalBinary returns the integer in decimal.
func (a *intArg) MarshalBinary() ([]byte, error) { return strconv.AppendInt(a.buf[:0], a.n, 10), nil }

// String returns the integer in decimal.
func (a *intArg) String() string { return strconv.FormatInt(a.n, 10) }

// kickCall is one kick script call: the messages of one queue, at most
// kickBatch of them.
type kickCall struct {
	kicks []*kickReq
	keys  []string
	plain bool // no message has a lock or a delay
	args  []any
	cmd   *redis.Cmd
}

// The kick script's first argument: how many arguments each message has.
var plainKick, fullKick any = "2", "5"

// sendKicks kicks ks, grouped by queue in script calls of at most kickBatch
// messages, all sent in one pipeline, and sets each one's err.
func (b *ListQueue) sendKicks(ctx context.Context, ks []*kickReq) {
	var calls []*kickCall
	open := map[string]*kickCall{} // queue -> its call being filled
	for _, k := range ks {
		q := k.msg.Queue(b.queue)
		c := open[q]
		if c == nil || len(c.kicks) == kickBatch {
			c = &kickCall{
				keys:  []string{b.key(q, "msg"), b.key(q, "pending"), b.key(q, "scheduled")},
				plain: true,
			}
			open[q] = c
			calls = append(calls, c)
		}
		k.id.s, k.delay.n, k.ttl.n, k.grace.n = k.msg.TaskID, k.msg.Delay().Milliseconds(), 0, -1
		if l := k.msg.Lock; l != nil {
			c.keys = append(c.keys, l.Key)
			k.ttl.n = max(l.TTL.Milliseconds(), 1)
			if l.TakeOver {
				k.grace.n = max(l.Grace.Milliseconds(), 0)
			}
		}
		c.plain = c.plain && k.ttl.n == 0 && k.delay.n <= 0
		c.kicks = append(c.kicks, k)
	}
	if len(calls) == 0 {
		return
	}
	for _, c := range calls { // see kick.lua: two arguments per plain message, else five
		per, shape := 5, fullKick
		if c.plain {
			per, shape = 2, plainKick
		}
		c.args = append(make([]any, 0, 1+per*len(c.kicks)), shape)
		for _, k := range c.kicks {
			c.args = append(c.args, &k.id, &k.raw)
			if !c.plain {
				c.args = append(c.args, &k.delay, &k.ttl, &k.grace)
			}
		}
	}
	if len(calls) == 1 { // a lone kick, or one queue's batch: no pipeline needed
		calls[0].cmd = kickScript.EvalSha(ctx, b.client, calls[0].keys, calls[0].args...)
	} else {
		_, _ = b.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, c := range calls {
				c.cmd = kickScript.EvalSha(ctx, pipe, c.keys, c.args...)
			}
			return nil
		})
	}
	for _, c := range calls {
		if redis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT") { // a new or restarted server: EVAL loads it
			c.cmd = kickScript.Eval(ctx, b.client, c.keys, c.args...)
		}
		// See kick.lua: a character per message, alone or followed by the
		// holders in an array.
		var codes string
		var res []any
		reply, err := c.cmd.Result()
		switch r := reply.(type) {
		case string:
			codes = r
		case []any:
			if len(r) > 0 {
				codes, _ = r[0].(string)
				res = r[1:]
			}
		}
		for j, k := range c.kicks {
			switch {
			case err != nil:
				k.err = fmt.Errorf("kiq: kick %s: %w", k.msg.TaskName, err)
			case j >= len(codes):
				k.err = fmt.Errorf("kiq: kick %s: short reply", k.msg.TaskName)
			case codes[j] != '0' && codes[j] != '2': // no holder comes with it
				k.err = kickResult(k.msg, codes[j], "")
			case len(res) == 0:
				k.err = fmt.Errorf("kiq: kick %s: short reply", k.msg.TaskName)
			default:
				holder, _ := res[0].(string)
				res = res[1:]
				k.err = kickResult(k.msg, codes[j], holder)
			}
		}
	}
}

// encodeForKick checks msg and encodes it.
func (b *ListQueue) encodeForKick(msg *Message) ([]byte, error) {
	if msg.TaskID == "" {
		return nil, errors.New("kiq: kick: empty task id")
	}
	if msg.Lock != nil && !b.LocksAtomically(msg.Lock.Client) {
		return nil, ErrLockUnsupported
	}
	if msg.EnqueuedAt == 0 {
		msg.EnqueuedAt = time.Now().UnixMilli()
	}
	raw, err := b.formatter.EncodeMessage(msg)
	if err != nil {
		return nil, err
	}
	if len(raw) > b.maxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrMessageTooLarge, len(raw), b.maxSize)
	}
	return raw, nil
}

// kickResult turns the kick script's code for msg, and the lock's holder
// that comes with codes '0' and '2', into Kick's error.
func kickResult(msg *Message, code byte, holder string) error {
	switch {
	case code == '1':
		return nil
	case code == '2' && msg.Lock != nil:
		if msg.Lock.TakenOver != nil {
			msg.Lock.TakenOver(msg, holder)
		}
		return nil
	case code == '0' && msg.Lock != nil:
		if msg.Lock.Held != nil {
			return msg.Lock.Held(msg, holder)
		}
		return fmt.Errorf("kiq: lock %s held by task %s", msg.Lock.Key, holder)
	case code == 'x':
		return fmt.Errorf("%w: %s", ErrTaskExists, msg.TaskID)
	}
	return fmt.Errorf("kiq: kick %s: unexpected reply %q", msg.TaskName, code)
}

// Consume registers a consumer of opts.Queues (default: the broker's queue)
// and starts its heartbeat goroutine, which also redelivers the tasks of
// dead consumers of those queues. The consumer lives until it is closed or
// ctx ends; after ctx ends without Close, it counts as dead once its
// heartbeat TTL passes, and its tasks are delivered again.
func (b *ListQueue) Consume(ctx context.Context, opts ConsumeOptions) (Consumer, error) {
	queues := opts.Queues
	if len(queues) == 0 {
		queues = []string{b.queue}
	}
	for _, q := range queues {
		if q == "" {
			return nil, errors.New("kiq: consume: empty queue name")
		}
	}
	c := &lqConsumer{b: b, id: NewTaskID()[16:] /* the random half */, queues: append([]string(nil), queues...)}
	if err := c.heartbeat(ctx); err != nil {
		return nil, err
	}
	c.life, c.end = context.WithCancel(ctx)
	c.hbDone = make(chan struct{})
	go c.heartbeats()
	return c, nil
}
