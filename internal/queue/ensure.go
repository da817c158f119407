package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// ErrNotAllowed means the server refused this connection's user a JetStream API call
// that Ensure needs: the role lacks a permission, or the stream must be provisioned
// first (mqctl provision).
var ErrNotAllowed = errors.New("not allowed for this NATS user")

// ErrNotProvisioned means a stream or bucket is missing and this connection's user may
// not create it: an operator must run mqctl provision. It comes with ErrNotAllowed.
var ErrNotProvisioned = errors.New("not provisioned")

// Ensure creates every stream and KV bucket of the topology that does not exist yet.
// Safe to call from every process at start-up; API calls are retried through cluster
// elections. It never updates an existing stream or bucket: an operator's limits and
// replicas survive every restart, and no process rewrites a stream's config while
// another creates a consumer on it (nats-server 2.15 races those two internally).
// It needs only the permission to look streams up ($JS.API.STREAM.INFO.<stream>) when
// everything exists; it fails with ErrNotAllowed, naming the permission, when a lookup
// is refused or a missing stream may not be created.
func Ensure(ctx context.Context, js jetstream.JetStream, t Topology) error {
	return EnsureLog(ctx, js, t, zerolog.Nop())
}

// EnsureLog is Ensure, logging a warning for each existing stream or bucket whose
// configuration differs from the topology's in a way that changes behaviour (subjects,
// retention, discard, per-subject rules, storage) or has fewer replicas than asked.
// Different limits (max age, bytes, messages) are the operator's and are not logged.
func EnsureLog(ctx context.Context, js jetstream.JetStream, t Topology, log zerolog.Logger) error {
	return ensure(ctx, js, topologyItems(js, t.Defaults()), log)
}

// EnsureAwait is EnsureLog for a long-running process (worker, collector, producer
// service): when a stream or bucket is missing and this user may not create it
// (ErrNotProvisioned: least-privilege roles, a Helm install whose provision hook runs
// after the pods start), it waits for an operator's mqctl provision instead of failing,
// so that the process stays up (not ready, as it has not started) rather than
// restarting in a crash loop, and starts within a second of the provisioning. It logs
// the wait at once and every minute after, and looks the streams up each second (only
// looks: a create this user may not make is a permission violation the server
// reports). Other errors are returned.
func EnsureAwait(ctx context.Context, js jetstream.JetStream, t Topology, log zerolog.Logger) error {
	const poll, remind = time.Second, time.Minute
	items := topologyItems(js, t.Defaults())
	for {
		err := ensure(ctx, js, items, log)
		if !errors.Is(err, ErrNotProvisioned) {
			return err
		}
		log.Error().Err(err).Msg("waiting for mqctl provision: not ready until every stream and bucket exists")
		since, reminded := time.Now(), time.Now()
		for missing := err; missing != nil; missing = firstMissing(ctx, js, items) {
			if time.Since(reminded) >= remind {
				reminded = time.Now()
				log.Warn().Err(missing).Stringer("waited", time.Since(since).Round(time.Second)).Msg("still waiting for mqctl provision")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(poll):
			}
		}
	}
}

// firstMissing looks the items' streams up and returns an error naming the first one
// that does not exist (or cannot be looked up now), nil when all exist.
func firstMissing(ctx context.Context, js jetstream.JetStream, items []ensureItem) error {
	for _, it := range items {
		if _, err := js.Stream(ctx, it.want.Name); err != nil {
			return fmt.Errorf("stream %s: %w", it.want.Name, err)
		}
	}
	return nil
}

// topologyItems are the streams, KV buckets and object stores of t, to look up or create.
func topologyItems(js jetstream.JetStream, t Topology) []ensureItem {
	var items []ensureItem
	for _, cfg := range t.Streams() {
		items = append(items, ensureItem{want: cfg, create: func(ctx context.Context) error {
			_, err := js.CreateStream(ctx, cfg)
			return err
		}})
	}
	for _, kv := range t.Buckets() {
		items = append(items, ensureItem{want: BucketStreamConfig(kv), create: func(ctx context.Context) error {
			_, err := js.CreateKeyValue(ctx, kv)
			if errors.Is(err, jetstream.ErrBucketExists) {
				return jetstream.ErrStreamNameAlreadyInUse
			}
			return err
		}})
	}
	return append(items, objectStoreItems(js, t)...)
}

// EnsureResults creates the results bucket (wire.BucketResults, an object store) if it
// does not exist (the collector, when an operator deleted it): objects expire
// ResultsTTL after they were stored. Like Ensure, it never changes an existing bucket.
func EnsureResults(ctx context.Context, js jetstream.JetStream, t Topology) error {
	return ensure(ctx, js, objectStoreItems(js, t.Defaults()), zerolog.Nop())
}

func objectStoreItems(js jetstream.JetStream, t Topology) []ensureItem {
	var items []ensureItem
	for _, obj := range t.ObjectStores() {
		items = append(items, ensureItem{want: ObjectStoreStreamConfig(obj), create: func(ctx context.Context) error {
			_, err := js.CreateObjectStore(ctx, obj)
			if errors.Is(err, jetstream.ErrBucketExists) {
				return jetstream.ErrStreamNameAlreadyInUse
			}
			return err
		}})
	}
	return items
}

// ensureItem is one stream (or the stream behind a bucket) Ensure looks up or creates.
type ensureItem struct {
	want   jetstream.StreamConfig
	create func(ctx context.Context) error
}

// ensure looks every item up at once and creates those missing: a process's start-up
// waits about one API round trip, not one per stream (14 in a row). The result is the
// sequential one: the error of the first item in order that fails, and an item that
// fails stops those after it (which may retry until ctx ends, e.g. a bucket whose
// account lookup the user may not make), never those before it. Warnings are logged
// in item order.
func ensure(ctx context.Context, js jetstream.JetStream, items []ensureItem, log zerolog.Logger) error {
	have := make([]*jetstream.StreamConfig, len(items))
	errs := make([]error, len(items))
	stops := make([]context.CancelFunc, len(items))
	ctxs := make([]context.Context, len(items))
	for i := range items {
		ctxs[i], stops[i] = context.WithCancel(ctx)
		defer stops[i]()
	}
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() {
			if have[i], errs[i] = ensureOne(ctxs[i], js, it); errs[i] != nil {
				for _, stop := range stops[i+1:] {
					stop()
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", items[i].want.Name, err)
		}
	}
	for i, it := range items {
		name := it.want.Name
		if have[i] == nil {
			log.Info().Str("stream", name).Msg("created stream")
			continue
		}
		for _, d := range Diff(it.want, *have[i]) {
			if d.Kind == Semantics || (d.Kind == Replicas && d.Have < d.Want) {
				log.Warn().Str("stream", name).Str("field", d.Field).Str("want", d.WantText).Str("have", d.HaveText).
					Msg("existing stream differs from what multiquery would create; check it (mqctl provision shows every difference)")
			}
		}
	}
	return nil
}

// ensureOne looks one item's stream up and returns its configuration, or creates it
// when it does not exist and returns nil.
func ensureOne(ctx context.Context, js jetstream.JetStream, it ensureItem) (*jetstream.StreamConfig, error) {
	name := it.want.Name
	var have *jetstream.StreamConfig
	err := Retry(ctx, func(ctx context.Context) error {
		s, err := js.Stream(ctx, name)
		if err == nil {
			c := s.CachedInfo().Config
			have = &c
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			if Denied(js, apiInfo+name) {
				return fmt.Errorf("look up stream %s: %w: the user needs publish permission on %s", name, ErrNotAllowed, apiInfo+name)
			}
			return err
		}
		err = it.create(ctx)
		switch {
		case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
			return nil // another process created it meanwhile
		case err != nil && Denied(js, apiCreate+name):
			return fmt.Errorf("stream %s is missing (%w) and this NATS user may not create it (%w): run mqctl provision", name, ErrNotProvisioned, ErrNotAllowed)
		}
		return err
	})
	return have, err
}

// JetStream API subjects of the calls Ensure makes.
const (
	apiInfo   = "$JS.API.STREAM.INFO."
	apiCreate = "$JS.API.STREAM.CREATE."
)

// BucketStreamConfig is the stream behind a KV bucket, as far as Diff compares it.
func BucketStreamConfig(kv jetstream.KeyValueConfig) jetstream.StreamConfig {
	history := int64(max(kv.History, 1))
	maxBytes := kv.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:              "KV_" + kv.Bucket,
		Subjects:          []string{"$KV." + kv.Bucket + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           kv.Storage,
		Replicas:          max(kv.Replicas, 1),
		MaxMsgsPerSubject: history,
		MaxAge:            kv.TTL,
		MaxBytes:          maxBytes,
		MaxMsgs:           -1,
		Discard:           jetstream.DiscardNew,
	}
}

// ObjectStoreStreamConfig is the stream behind an object store bucket, as far as Diff
// compares it (as nats.go creates it).
func ObjectStoreStreamConfig(o jetstream.ObjectStoreConfig) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:      "OBJ_" + o.Bucket,
		Subjects:  []string{"$O." + o.Bucket + ".C.>", "$O." + o.Bucket + ".M.>"},
		Retention: jetstream.LimitsPolicy,
		Storage:   o.Storage,
		Replicas:  max(o.Replicas, 1),
		MaxAge:    o.TTL,
		MaxBytes:  -1,
		MaxMsgs:   -1,
		Discard:   jetstream.DiscardNew,
	}
}

// DiffKind says what a difference changes.
type DiffKind int

// The kinds of difference between a stream's configuration and the topology's.
const (
	Limit     DiffKind = iota // max age, bytes, messages, message size, dedup window: the operator's
	Replicas                  // the number of replicas
	Semantics                 // subjects, retention, discard, per-subject rules, storage: multiquery relies on them
)

// Difference is one field of a stream whose existing value differs from the wanted one.
type Difference struct {
	Field              string
	Kind               DiffKind
	WantText, HaveText string
	Want, Have         int64 // numeric values, for Replicas
}

// Diff lists the fields in which have (an existing stream's configuration) differs
// from want. Unlimited is unlimited whether written 0 or -1.
func Diff(want, have jetstream.StreamConfig) []Difference {
	var out []Difference
	add := func(field string, kind DiffKind, w, h string) {
		if w != h {
			out = append(out, Difference{Field: field, Kind: kind, WantText: w, HaveText: h})
		}
	}
	ws, hs := slices.Sorted(slices.Values(want.Subjects)), slices.Sorted(slices.Values(have.Subjects))
	add("subjects", Semantics, fmt.Sprint(ws), fmt.Sprint(hs))
	add("retention", Semantics, want.Retention.String(), have.Retention.String())
	add("storage", Semantics, want.Storage.String(), have.Storage.String())
	add("discard", Semantics, want.Discard.String(), have.Discard.String())
	add("max_msgs_per_subject", Semantics, unlimited(want.MaxMsgsPerSubject), unlimited(have.MaxMsgsPerSubject))
	add("discard_new_per_subject", Semantics, strconv.FormatBool(want.DiscardNewPerSubject), strconv.FormatBool(have.DiscardNewPerSubject))
	if want.Replicas != have.Replicas {
		out = append(out, Difference{Field: "replicas", Kind: Replicas, WantText: strconv.Itoa(want.Replicas),
			HaveText: strconv.Itoa(have.Replicas), Want: int64(want.Replicas), Have: int64(have.Replicas)})
	}
	add("max_age", Limit, duration(want.MaxAge), duration(have.MaxAge))
	add("max_bytes", Limit, unlimited(want.MaxBytes), unlimited(have.MaxBytes))
	add("max_msgs", Limit, unlimited(want.MaxMsgs), unlimited(have.MaxMsgs))
	add("max_msg_size", Limit, unlimited(int64(want.MaxMsgSize)), unlimited(int64(have.MaxMsgSize)))
	if want.Duplicates > 0 {
		add("duplicate_window", Limit, duration(want.Duplicates), duration(have.Duplicates))
	}
	return out
}

func unlimited(v int64) string {
	if v <= 0 {
		return "unlimited"
	}
	return strconv.FormatInt(v, 10)
}

func duration(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}
