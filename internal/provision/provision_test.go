package provision_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/provision"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, natstest.LeakOptions()...) }

func TestLimitsFile(t *testing.T) {
	t.Parallel()
	t.Run("an empty file is the defaults", func(t *testing.T) {
		l, err := provision.Parse(nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.Replicas != 1 || l.Streams[wire.StreamJobs].MaxBytes != 2<<30 || l.Streams[wire.StreamAudit].MaxAge != 7*24*time.Hour {
			t.Fatalf("defaults = %+v", l)
		}
	})
	t.Run("fields given replace the defaults, the others stay", func(t *testing.T) {
		l, err := provision.Parse([]byte("replicas: 3\nlease_ttl: 15s\nstreams:\n  MQ_JOBS: {max_bytes: 500MiB, max_msgs: 100000}\n  MQ_AUDIT: {max_age: 2d, max_bytes: unlimited}\n"))
		if err != nil {
			t.Fatal(err)
		}
		jobs, audit := l.Streams[wire.StreamJobs], l.Streams[wire.StreamAudit]
		if l.Replicas != 3 || l.LeaseTTL != 15*time.Second || jobs.MaxBytes != 500<<20 || jobs.MaxMsgs != 100000 ||
			jobs.MaxAge != 0 || audit.MaxAge != 48*time.Hour || audit.MaxBytes != -1 || l.Streams[wire.StreamInput].MaxBytes != 2<<30 {
			t.Fatalf("limits = %+v", l)
		}
	})
	t.Run("the prompt cache's age and size are set apart from the streams", func(t *testing.T) {
		l, err := provision.Parse([]byte("cache: {max_age: 90d, max_bytes: 4GiB}\n"))
		if err != nil {
			t.Fatal(err)
		}
		if l.CacheMaxAge != 90*24*time.Hour || l.CacheMaxBytes != 4<<30 {
			t.Fatalf("cache limits = %s, %d bytes; want 90 days, 4 GiB", l.CacheMaxAge, l.CacheMaxBytes)
		}
		topo := l.Topology(wire.Names{})
		if topo.CacheMaxAge != l.CacheMaxAge || topo.CacheMaxBytes != l.CacheMaxBytes {
			t.Fatalf("topology %+v does not carry the cache limits", topo)
		}
	})
	for _, bad := range []string{
		"streams:\n  MQ_NOPE: {max_bytes: 1}\n",
		"streams:\n  MQ_JOBS: {max_bytez: 1}\n",
		"streams:\n  MQ_JOBS: {max_bytes: 2GB}\n",
		"streams:\n  MQ_JOBS: {max_age: soon}\n",
		"replicas: 7\n",
		"cache: {max_age: unlimited}\n",
	} {
		t.Run("refuses "+strings.TrimSpace(bad), func(t *testing.T) {
			if _, err := provision.Parse([]byte(bad)); err == nil {
				t.Fatalf("Parse(%q) accepted it", bad)
			}
		})
	}
}

func states(rs []provision.Result) map[string]provision.State {
	out := map[string]provision.State{}
	for _, r := range rs {
		out[r.Name] = r.State
	}
	return out
}

func TestProvisionCreatesThenReportsAndUpdatesOnlyWhenAsked(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := provision.Default()

	rs, err := provision.Run(ctx, js, wire.Names{}, l, provision.Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 15 || states(rs)[wire.StreamJobs] != provision.Missing || states(rs)[wire.BucketCache] != provision.Missing {
		t.Fatalf("dry run on an empty server: %v, want 15 missing (8 streams, 6 buckets, 1 object store)", states(rs))
	}
	if _, err := js.Stream(ctx, wire.StreamJobs); err == nil {
		t.Fatal("a dry run created a stream")
	}

	rs, err = provision.Run(ctx, js, wire.Names{}, l, provision.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, st := range states(rs) {
		if st != provision.Created {
			t.Fatalf("%s: %s, want created", name, st)
		}
	}
	s, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.CachedInfo().Config; c.MaxBytes != 2<<30 || c.Discard != jetstream.DiscardNew || c.Retention != jetstream.WorkQueuePolicy {
		t.Fatalf("MQ_JOBS = bytes %d, discard %s, retention %s; want 2 GiB, new, workqueue", c.MaxBytes, c.Discard, c.Retention)
	}
	cache, err := js.KeyValue(ctx, wire.BucketCache)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := cache.Status(ctx); err != nil || st.TTL() != 30*24*time.Hour {
		t.Fatalf("cache bucket status %v, %v; want a TTL of 30 days", st, err)
	}
	if info, err := js.Stream(ctx, "KV_"+wire.BucketCache); err != nil || info.CachedInfo().Config.MaxBytes != 1<<30 {
		t.Fatalf("cache bucket stream: %v; want max_bytes 1 GiB", err)
	}
	// Every process's Ensure finds nothing to say about a provisioned topology.
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}

	cfg := s.CachedInfo().Config
	cfg.MaxBytes = 64 << 20 // an operator's own limit
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	rs, err = provision.Run(ctx, js, wire.Names{}, l, provision.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := states(rs)
	if st[wire.StreamJobs] != provision.Differs || st[wire.StreamInput] != provision.UpToDate {
		t.Fatalf("after the operator's change: %v, want MQ_JOBS differs and the rest up to date", st)
	}
	for _, r := range rs {
		if r.Name == wire.StreamJobs && !strings.Contains(r.String(), "max_bytes 67108864 (wanted 2147483648)") {
			t.Fatalf("report line %q does not show the difference", r)
		}
	}
	if info, _ := s.Info(ctx); info.Config.MaxBytes != 64<<20 {
		t.Fatalf("provision without --update changed MQ_JOBS max_bytes to %d", info.Config.MaxBytes)
	}

	rs, err = provision.Run(ctx, js, wire.Names{}, l, provision.Options{Update: true})
	if err != nil {
		t.Fatal(err)
	}
	if st := states(rs); st[wire.StreamJobs] != provision.Updated {
		t.Fatalf("with --update: %v, want MQ_JOBS updated", st)
	}
	if info, _ := s.Info(ctx); info.Config.MaxBytes != 2<<30 {
		t.Fatalf("after --update MQ_JOBS max_bytes = %d, want the limits file's", info.Config.MaxBytes)
	}
}

// The example limits file shipped in deploy is the defaults written out: keep them equal.
func TestDeployLimitsFileIsTheDefaults(t *testing.T) {
	t.Parallel()
	l, err := provision.Load("../../deploy/nats/limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d := provision.Default()
	for name, want := range d.Streams {
		if l.Streams[name] != want {
			t.Errorf("deploy/nats/limits.yaml %s = %+v, defaults %+v", name, l.Streams[name], want)
		}
	}
	if l.CacheMaxAge != d.CacheMaxAge || l.CacheMaxBytes != d.CacheMaxBytes {
		t.Errorf("deploy/nats/limits.yaml cache = %s, %d bytes; defaults %s, %d bytes", l.CacheMaxAge, l.CacheMaxBytes, d.CacheMaxAge, d.CacheMaxBytes)
	}
}
