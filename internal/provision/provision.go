package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// State is what provision found or did for one stream or bucket.
type State string

// The states of a Result.
const (
	Created  State = "created"
	UpToDate State = "up to date"
	Differs  State = "differs" // exists with other settings, left as it is
	Updated  State = "updated"
	Missing  State = "missing" // absent, not created (dry run)
)

// Result is one stream or bucket: its state and how the existing one differed.
type Result struct {
	Kind  string // "stream" or "bucket"
	Name  string // stream name, or bucket name
	State State
	Diffs []queue.Difference
}

// String is the report line of r.
func (r Result) String() string {
	s := fmt.Sprintf("%s %s: %s", r.Kind, r.Name, r.State)
	var parts []string
	for _, d := range r.Diffs {
		parts = append(parts, fmt.Sprintf("%s %s (wanted %s)", d.Field, d.HaveText, d.WantText))
	}
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	if r.State == Differs {
		s += "; not changed (give --update to apply the limits)"
	}
	return s
}

// Options say whether provision may change what exists.
type Options struct {
	// Update applies the wanted configuration to an existing stream or bucket that
	// differs (limits, replicas up or down, subjects). Without it nothing existing is
	// changed.
	Update bool
	// DryRun creates and changes nothing; it reports what it would do.
	DryRun bool
}

// Run creates every stream, KV bucket and object store of the limits' topology (and the
// collector's lease bucket) of the deployment with names that is absent, and reports how
// each existing one differs; with o.Update it updates those that differ.
func Run(ctx context.Context, js jetstream.JetStream, names wire.Names, l Limits, o Options) ([]Result, error) {
	topo := l.Topology(names)
	var out []Result
	for _, want := range topo.Streams() {
		r, err := one(ctx, js, "stream", want.Name, want, o,
			func(ctx context.Context) error { _, err := js.CreateStream(ctx, want); return err },
			func(ctx context.Context) error { _, err := js.UpdateStream(ctx, want); return err })
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	buckets := append(topo.Buckets(), lease.BucketConfig(names.BucketLease(), topo.Defaults().Replicas, l.LeaseTTL))
	for _, kv := range buckets {
		r, err := one(ctx, js, "bucket", kv.Bucket, queue.BucketStreamConfig(kv), o,
			func(ctx context.Context) error { _, err := js.CreateKeyValue(ctx, kv); return err },
			func(ctx context.Context) error { _, err := js.UpdateKeyValue(ctx, kv); return err })
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	for _, obj := range topo.ObjectStores() {
		r, err := one(ctx, js, "object store", obj.Bucket, queue.ObjectStoreStreamConfig(obj), o,
			func(ctx context.Context) error { _, err := js.CreateObjectStore(ctx, obj); return err },
			func(ctx context.Context) error { _, err := js.UpdateObjectStore(ctx, obj); return err })
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// one provisions one stream (a bucket's stream for a bucket).
func one(ctx context.Context, js jetstream.JetStream, kind, name string, want jetstream.StreamConfig, o Options,
	create, update func(context.Context) error) (Result, error) {
	r := Result{Kind: kind, Name: name}
	var have *jetstream.StreamConfig
	err := queue.Retry(ctx, func(ctx context.Context) error {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		c := s.CachedInfo().Config
		have = &c
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("look up %s %s: %w", kind, name, err)
	}
	if have == nil {
		if o.DryRun {
			r.State = Missing
			return r, nil
		}
		if err := queue.Retry(ctx, create); err != nil {
			return r, fmt.Errorf("create %s %s: %w", kind, name, err)
		}
		r.State = Created
		return r, nil
	}
	r.Diffs = queue.Diff(want, *have)
	switch {
	case len(r.Diffs) == 0:
		r.State = UpToDate
	case !o.Update || o.DryRun:
		r.State = Differs
	default:
		if err := queue.Retry(ctx, update); err != nil {
			return r, fmt.Errorf("update %s %s: %w", kind, name, err)
		}
		r.State = Updated
	}
	return r, nil
}
