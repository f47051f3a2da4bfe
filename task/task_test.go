package task_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/middleware"
	"github.com/kiq-go/kiq/task"
	"github.com/stretchr/testify/require"
)

type WelcomeArgs struct {
	task.Meta `deduplication_key_fields:"user_id" deduplication_ttl:"60" team:"growth"`
	UserID    int    `msgpack:"user_id"`
	Locale    string `msgpack:"locale"`
}

func fetchOne(t *testing.T, b broker.Broker) *broker.Message {
	t.Helper()
	c, err := b.Consume(context.Background(), broker.ConsumeOptions{})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ds, err := c.Fetch(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, c.Ack(ctx, ds...))
	require.NoError(t, c.Close(ctx))
	return ds[0].Message
}

func TestStructTagsAreTypedLabels(t *testing.T) {
	labels, err := task.LabelsOf[WelcomeArgs]()
	require.NoError(t, err)
	require.Equal(t, task.Labels{
		"deduplication_key_fields": []string{"user_id"},
		"deduplication_ttl":        int64(60),
		"team":                     "growth",
	}, labels)
}

func TestLabelPrecedence(t *testing.T) {
	b := broker.NewInMemory()
	tk := task.Define(b, "send_welcome", func(context.Context, WelcomeArgs) error { return nil },
		task.WithLabels(task.Labels{"deduplication_ttl": 30, "team": "core"}))
	require.Equal(t, int64(30), tk.Labels()["deduplication_ttl"], "Define beats struct tags")
	require.Equal(t, "core", tk.Labels()["team"])

	_, err := tk.Kicker().WithLabels(task.Labels{"deduplication_ttl": 5 * time.Second}).Kiq(context.Background(), WelcomeArgs{UserID: 42})
	require.NoError(t, err)
	msg := fetchOne(t, b)
	ttl, _ := msg.Labels.Duration("deduplication_ttl")
	require.Equal(t, 5*time.Second, ttl, "the kicker beats Define")
	fields, _ := msg.Labels.Strings("deduplication_key_fields")
	require.Equal(t, []string{"user_id"}, fields, "struct tags fill in the rest")
}

func TestKiqSendsArgsAndID(t *testing.T) {
	b := broker.NewInMemory()
	tk := task.Define(b, "send_welcome", func(context.Context, WelcomeArgs) error { return nil })
	h, err := tk.Kicker().WithTaskID("my-id").Kiq(context.Background(), WelcomeArgs{UserID: 42, Locale: "en"})
	require.NoError(t, err)
	require.Equal(t, "my-id", h.TaskID())
	msg := fetchOne(t, b)
	require.Equal(t, "my-id", msg.TaskID)
	require.Equal(t, "send_welcome", msg.TaskName)

	var kwargs map[string]any
	require.NoError(t, b.Formatter().DecodeArgs(msg.Args, &kwargs))
	require.Equal(t, map[string]any{"user_id": int64(42), "locale": "en"}, kwargs, "task.Meta adds nothing to the arguments")
}

func TestKickerIsImmutable(t *testing.T) {
	b := broker.NewInMemory()
	tk := task.Define(b, "t", func(context.Context, WelcomeArgs) error { return nil })
	k := tk.Kicker().WithLabels(task.Labels{"a": 1})
	k2 := k.WithLabels(task.Labels{"a": 2}).WithTaskID("x")
	m1, err := k.Message(WelcomeArgs{})
	require.NoError(t, err)
	m2, err := k2.Message(WelcomeArgs{})
	require.NoError(t, err)
	require.Equal(t, 1, m1.Labels["a"])
	require.Equal(t, 2, m2.Labels["a"])
	require.NotEqual(t, "x", m1.TaskID)
}

func TestHandleRunsTheFunctionWithDecodedArgs(t *testing.T) {
	b := broker.NewInMemory()
	var got WelcomeArgs
	tk := task.Define(b, "t", func(ctx context.Context, a WelcomeArgs) error { got = a; return nil })
	msg, err := tk.Kicker().Message(WelcomeArgs{UserID: 7, Locale: "fr"})
	require.NoError(t, err)
	h, ok := b.Registry().Lookup("t")
	require.True(t, ok)
	_, err = h.Execute(context.Background(), msg)
	require.NoError(t, err)
	require.Equal(t, 7, got.UserID)
	require.Equal(t, "fr", got.Locale)
}

func TestHandleReportsWrongArgumentTypes(t *testing.T) {
	b := broker.NewInMemory()
	tk := task.Define(b, "t", func(ctx context.Context, a WelcomeArgs) error { return nil })
	raw, err := b.Formatter().EncodeArgs(map[string]any{"user_id": "not a number"})
	require.NoError(t, err)
	_, err = tk.Execute(context.Background(), &broker.Message{TaskID: "x", TaskName: "t", Args: raw})
	require.ErrorIs(t, err, broker.ErrMalformed)
}

func TestDefineResultReturnsTheValue(t *testing.T) {
	b := broker.NewInMemory()
	tk := task.DefineResult(b, "add", func(ctx context.Context, a [2]int) (int, error) { return a[0] + a[1], nil })
	msg, err := tk.Kicker().Message([2]int{2, 3})
	require.NoError(t, err)
	v, err := tk.Execute(context.Background(), msg)
	require.NoError(t, err)
	require.Equal(t, 5, v)
}

func TestDefinePanicsOnProgrammingErrors(t *testing.T) {
	b := broker.NewInMemory()
	task.Define(b, "t", func(context.Context, WelcomeArgs) error { return nil })
	require.PanicsWithValue(t, `kiq: task name already defined: "t"`, func() {
		task.Define(b, "t", func(context.Context, WelcomeArgs) error { return nil })
	})
	require.Panics(t, func() {
		task.Define(b, "u", func(context.Context, WelcomeArgs) error { return nil }, task.WithLabels(task.Labels{"max_retries": "lots"}))
	})
	type BadTag struct {
		task.Meta `deduplication_ttl:"soon"`
	}
	require.Panics(t, func() { task.Define(b, "v", func(context.Context, BadTag) error { return nil }) })
	require.Panics(t, func() { task.Define(b, "", func(context.Context, WelcomeArgs) error { return nil }) })
}

// baseArgs carries labels that arguments embedding it inherit.
type baseArgs struct {
	task.Meta `deduplication_ttl:"60"`
	UserID    int `msgpack:"user_id"`
}

// otherBase embeds a task.Meta too.
type otherBase struct {
	task.Meta `deduplication_ttl:"30"`
}

// defineNoop defines a task "t" of arguments Args that does nothing.
func defineNoop[Args any](b broker.Broker) {
	task.Define(b, "t", func(context.Context, Args) error { return nil })
}

// The task.Meta read is the one Go's field promotion reaches: by value or
// pointer, through embedded structs, the shallowest winning.
func TestMetaIsReadWherePromotionReachesIt(t *testing.T) {
	type Ext struct {
		baseArgs
		Extra string
	}
	type ByPointer struct {
		*task.Meta `deduplication_ttl:"30"`
	}
	type Deep struct{ *Ext }
	type Override struct {
		task.Meta `deduplication_ttl:"5"`
		baseArgs
	}
	type Batch struct { // arguments of their own inside Args are not looked into
		Items []WelcomeArgs `msgpack:"items"`
		One   WelcomeArgs   `msgpack:"one"`
	}
	for _, c := range []struct {
		labels func() (task.Labels, error)
		want   task.Labels
	}{
		{task.LabelsOf[Ext], task.Labels{"deduplication_ttl": int64(60)}},
		{task.LabelsOf[ByPointer], task.Labels{"deduplication_ttl": int64(30)}},
		{task.LabelsOf[Deep], task.Labels{"deduplication_ttl": int64(60)}},
		{task.LabelsOf[Override], task.Labels{"deduplication_ttl": int64(5)}},
		{task.LabelsOf[Batch], nil},
	} {
		got, err := c.labels()
		require.NoError(t, err)
		require.Equal(t, c.want, got)
	}
}

// A task.Meta promotion cannot reach, or two it reaches at one depth, make
// Define panic instead of being skipped; so does a bad tag found through
// promotion.
func TestDefinePanicsOnAMetaItCannotRead(t *testing.T) {
	type Named struct {
		Labels task.Meta `deduplication_ttl:"60"`
	}
	type Twice struct {
		baseArgs
		otherBase
	}
	type BadByPointer struct {
		*task.Meta `deduplication_ttl:"soon"`
	}
	for _, c := range []struct {
		define func(broker.Broker)
		msg    string
	}{
		{defineNoop[Named], "task.Meta in the field Labels: embed it (promotion does not reach a named field)"},
		{defineNoop[Twice], "task.Meta embedded twice at one depth, as baseArgs.Meta and otherBase.Meta"},
	} {
		require.PanicsWithValue(t, `kiq: task.Define "t": `+c.msg, func() { c.define(broker.NewInMemory()) })
	}
	require.Panics(t, func() { defineNoop[BadByPointer](broker.NewInMemory()) })
}

func TestParseTag(t *testing.T) {
	l, err := task.ParseTag(`  deduplication:"false" note:"a \"quoted\" value" max_retries:"2"`)
	require.NoError(t, err)
	require.Equal(t, task.Labels{"deduplication": false, "note": `a "quoted" value`, "max_retries": int64(2)}, l)
	for _, bad := range []string{`key`, `key:value`, `key:"open`, `:"x"`, `deduplication:"perhaps"`} {
		_, err := task.ParseTag(bad)
		require.ErrorIs(t, err, broker.ErrBadLabel, bad)
	}
}

type rejecter struct {
	middleware.Base
	err error
}

func (r rejecter) PreSend(context.Context, *broker.Message) error { return r.err }

type sentinelErr struct{ why string }

func (e *sentinelErr) Error() string { return e.why }

func TestKiqWrapsMiddlewareAndLabelErrors(t *testing.T) {
	cause := &sentinelErr{"nope"}
	b := broker.NewInMemory().WithMiddlewares(rejecter{err: cause})
	tk := task.Define(b, "t", func(context.Context, WelcomeArgs) error { return nil })
	_, err := tk.Kiq(context.Background(), WelcomeArgs{})
	var got *sentinelErr
	require.ErrorAs(t, err, &got)
	require.Same(t, cause, got)
	require.Equal(t, 0, queued(t, b))

	b2 := broker.NewInMemory()
	tk2 := task.Define(b2, "t", func(context.Context, WelcomeArgs) error { return nil })
	_, err = tk2.Kicker().WithLabels(task.Labels{"timeout": "later"}).Kiq(context.Background(), WelcomeArgs{})
	require.ErrorIs(t, err, broker.ErrBadLabel)
	require.Equal(t, 0, queued(t, b2))
	require.False(t, errors.Is(err, broker.ErrMalformed))
}

// queued counts the tasks waiting on b's default queue.
func queued(t *testing.T, b *broker.InMemory) int {
	t.Helper()
	s, err := b.Stats(context.Background(), broker.DefaultQueue)
	require.NoError(t, err)
	return int(s.Pending + s.Scheduled)
}
