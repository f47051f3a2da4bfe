// Package task defines typed tasks: Define registers a Go function under a
// stable name on a broker and returns a Task[Args] to kick it with.
//
// The task's name, not its Go type, identifies it on the wire, so renaming
// the Args type or the function never orphans queued tasks; renaming the
// task does.
//
// Labels come from three places, each overriding the one before:
//
//  1. struct tags on the task.Meta that Args embeds, directly or through an
//     embedded struct (see LabelsOf),
//  2. task.WithLabels given to Define,
//  3. the kicker's WithLabels at call time.
package task

import (
	"context"
	"fmt"
	"maps"
	"reflect"

	"github.com/kiq-go/kiq/broker"
	"github.com/kiq-go/kiq/kicker"
)

// Labels are a task's or a call's labels (see broker.Labels).
type Labels = broker.Labels

// Meta is embedded in an argument struct to give task-level labels as
// struct tags, one tag key per label:
//
//	type WelcomeArgs struct {
//		task.Meta `deduplication_key_fields:"user_id" deduplication_ttl:"60"`
//		UserID int `msgpack:"user_id"`
//	}
//
// Values are typed by the label they name ("60" is the int 60 for
// deduplication_ttl; "a,b" a list for deduplication_key_fields); unknown
// labels stay strings. Meta adds nothing to the encoded arguments.
//
// Embed Meta in Args, or in a struct Args embeds: the one Go's field
// promotion reaches is read (see LabelsOf). Define panics on one it cannot
// read (a named field, two at one depth) rather than ignore its tags.
type Meta struct{}

// Option configures Define.
type Option func(*options)

type options struct {
	labels Labels
}

// WithLabels sets task-level labels, overriding the struct tags of Args.
func WithLabels(l Labels) Option {
	return func(o *options) {
		if o.labels == nil {
			o.labels = make(Labels, len(l))
		}
		maps.Copy(o.labels, l)
	}
}

// Task is a task defined on a broker, kicked with arguments of type Args.
type Task[Args any] struct {
	target *kicker.Target
	run    func(context.Context, Args) (any, error)
}

// Define registers fn under name on b and returns the task.
//
// Define panics, like http.HandleFunc, on a programming error found at
// start-up: a name already defined on b, labels (in tags or options) whose
// values do not fit their label, or a task.Meta that LabelsOf cannot read.
func Define[Args any](b broker.Broker, name string, fn func(context.Context, Args) error, opts ...Option) *Task[Args] {
	return define(b, name, func(ctx context.Context, a Args) (any, error) { return nil, fn(ctx, a) }, opts)
}

// ResultTask is a task whose function returns a value of type Res, which
// is stored in a result backend.
type ResultTask[Args, Res any] struct {
	*Task[Args]
}

// DefineResult is Define for a function that returns a result.
func DefineResult[Args, Res any](b broker.Broker, name string, fn func(context.Context, Args) (Res, error), opts ...Option) *ResultTask[Args, Res] {
	t := define(b, name, func(ctx context.Context, a Args) (any, error) { return fn(ctx, a) }, opts)
	return &ResultTask[Args, Res]{Task: t}
}

func define[Args any](b broker.Broker, name string, run func(context.Context, Args) (any, error), opts []Option) *Task[Args] {
	if name == "" {
		panic("kiq: task.Define: empty task name")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	tagLabels, err := LabelsOf[Args]()
	if err != nil {
		panic(fmt.Sprintf("kiq: task.Define %q: %v", name, err))
	}
	labels, err := tagLabels.Merge(o.labels)
	if err != nil {
		panic(fmt.Sprintf("kiq: task.Define %q: %v", name, err))
	}
	t := &Task[Args]{
		target: &kicker.Target{Broker: b, Name: name, Labels: labels},
		run:    run,
	}
	if err := b.Registry().Register(name, t); err != nil {
		panic(err.Error())
	}
	return t
}

// Name returns the task's name.
func (t *Task[Args]) Name() string { return t.target.Name }

// Labels returns a copy of the task-level labels.
func (t *Task[Args]) Labels() Labels { return maps.Clone(t.target.Labels) }

// Kicker returns a kicker to set call-level labels or a task id before Kiq.
func (t *Task[Args]) Kicker() *kicker.Kicker[Args] { return kicker.New[Args](t.target) }

// Kiq sends the task with args and the task-level labels. It is
// t.Kicker().Kiq(ctx, args).
func (t *Task[Args]) Kiq(ctx context.Context, args Args) (*kicker.Handle, error) {
	return t.Kicker().Kiq(ctx, args)
}

// KiqMany sends one task per element of args in bulk; see
// kicker.Kicker.KiqMany.
func (t *Task[Args]) KiqMany(ctx context.Context, args []Args) ([]*kicker.Handle, []error) {
	return t.Kicker().KiqMany(ctx, args)
}

// Execute decodes msg's arguments and runs the task. It implements
// broker.Handler for the worker.
func (t *Task[Args]) Execute(ctx context.Context, msg *broker.Message) (any, error) {
	var args Args
	if err := t.target.Broker.Formatter().DecodeArgs(msg.Args, &args); err != nil {
		return nil, fmt.Errorf("kiq: task %s: %w", t.target.Name, err)
	}
	return t.run(ctx, args)
}

var metaType = reflect.TypeFor[Meta]()

// LabelsOf returns the labels given by the struct tags of the task.Meta
// embedded in Args, typed as their labels, or nil when Args embeds none.
//
// The task.Meta read is the one Go's field promotion reaches: embedded in
// Args, by value or by pointer, or in a struct Args embeds, at any depth;
// the shallowest wins, so Args may override the labels of a struct it
// embeds by embedding a task.Meta of its own. Two at the same depth, and a
// task.Meta held in a named field (which promotion never reaches), are
// errors, never silently skipped. Fields of a named struct type are values
// of their own, as in Items []OtherArgs, and are not looked into.
func LabelsOf[Args any]() (Labels, error) {
	typ := reflect.TypeFor[Args]()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		return nil, nil
	}
	// Breadth first through the embedded structs, one depth at a time.
	level := []embedded{{typ: typ}}
	seen := map[reflect.Type]bool{typ: true}
	var found *reflect.StructField
	var foundAt string
	for len(level) > 0 {
		var next []embedded
		for _, e := range level {
			for i := range e.typ.NumField() {
				f := e.typ.Field(i)
				ft := f.Type
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				switch {
				case ft == metaType && !f.Anonymous:
					return nil, fmt.Errorf("task.Meta in the field %s%s: embed it (promotion does not reach a named field)", e.path, f.Name)
				case ft == metaType && found != nil:
					return nil, fmt.Errorf("task.Meta embedded twice at one depth, as %s and %s%s", foundAt, e.path, f.Name)
				case ft == metaType:
					found, foundAt = &f, e.path+f.Name
				case f.Anonymous && ft.Kind() == reflect.Struct && !seen[ft]:
					seen[ft] = true
					next = append(next, embedded{typ: ft, path: e.path + f.Name + "."})
				}
			}
		}
		if found != nil {
			return ParseTag(string(found.Tag))
		}
		level = next
	}
	return nil, nil
}

// embedded is a struct type LabelsOf looks into, and the path of embedded
// fields that leads to it ("" for Args, "Base." in an embedded Base).
type embedded struct {
	typ  reflect.Type
	path string
}

// ParseTag parses a struct tag (`key:"value" key2:"value2"`, the format of
// reflect.StructTag) into labels typed as their labels.
func ParseTag(tag string) (Labels, error) {
	labels := Labels{}
	for tag != "" {
		// The grammar of reflect.StructTag.Lookup: skip spaces, a key of
		// non-control, non-space, non-quote, non-colon characters, a colon, a
		// quoted Go string.
		i := 0
		for i < len(tag) && tag[i] == ' ' {
			i++
		}
		tag = tag[i:]
		if tag == "" {
			break
		}
		i = 0
		for i < len(tag) && tag[i] > ' ' && tag[i] != ':' && tag[i] != '"' && tag[i] != 0x7f {
			i++
		}
		if i == 0 || i+1 >= len(tag) || tag[i] != ':' || tag[i+1] != '"' {
			return nil, fmt.Errorf("%w: malformed struct tag near %q", broker.ErrBadLabel, tag)
		}
		key := tag[:i]
		tag = tag[i+1:]
		i = 1
		for i < len(tag) && tag[i] != '"' {
			if tag[i] == '\\' {
				i++
			}
			i++
		}
		if i >= len(tag) {
			return nil, fmt.Errorf("%w: unterminated value for %q in struct tag", broker.ErrBadLabel, key)
		}
		value, ok := reflect.StructTag(key + ":" + tag[:i+1]).Lookup(key)
		if !ok {
			return nil, fmt.Errorf("%w: malformed value for %q in struct tag", broker.ErrBadLabel, key)
		}
		tag = tag[i+1:]
		v, err := broker.NormalizeLabel(key, value)
		if err != nil {
			return nil, err
		}
		labels[key] = v
	}
	return labels, nil
}
