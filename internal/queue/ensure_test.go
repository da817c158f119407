package queue_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Every process calls Ensure at start: it creates what is missing and never rewrites an
// existing stream, so an operator's limits survive every restart of every process.
func TestEnsureKeepsAnOperatorsLimits(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxBytes = 64 << 20 // the operator bounds the jobs stream
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil { // a process restarts
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxBytes != 64<<20 {
		t.Fatalf("MQ_JOBS max_bytes = %d after a process start, want the operator's %d", info.Config.MaxBytes, 64<<20)
	}
	if err := js.DeleteStream(ctx, wire.StreamResults); err != nil {
		t.Fatal(err)
	}
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(ctx, wire.StreamResults); err != nil {
		t.Fatalf("a missing stream was not created again: %v", err)
	}
}

// A process that finds a stream set up differently says so when the difference changes
// behaviour (here: dead letters would be refused instead of the oldest dropped), and
// stays quiet about limits, which are the operator's.
func TestEnsureWarnsWhenAnExistingStreamBehavesDifferently(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	if err := queue.EnsureLog(ctx, js, queue.Topology{}, log); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), `"level":"warn"`) {
		t.Fatalf("Ensure warned about the topology it created itself:\n%s", buf.String())
	}
	for name, edit := range map[string]func(*jetstream.StreamConfig){
		wire.StreamDead:  func(c *jetstream.StreamConfig) { c.Discard = jetstream.DiscardNew },
		wire.StreamAudit: func(c *jetstream.StreamConfig) { c.MaxAge, c.MaxBytes = time.Hour, 1<<20 },
	} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		edit(&cfg)
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	buf.Reset()
	if err := queue.EnsureLog(ctx, js, queue.Topology{}, log); err != nil {
		t.Fatal(err)
	}
	warns := strings.Count(buf.String(), `"level":"warn"`)
	if warns != 1 || !strings.Contains(buf.String(), `"stream":"MQ_DEAD","field":"discard"`) {
		t.Fatalf("got %d warnings, want one about MQ_DEAD's discard policy:\n%s", warns, buf.String())
	}
}

func TestDiffTreatsZeroAndMinusOneAsUnlimited(t *testing.T) {
	t.Parallel()
	want := jetstream.StreamConfig{Subjects: []string{"a.>", "b.>"}, MaxBytes: -1, MaxMsgs: -1, Replicas: 3}
	have := jetstream.StreamConfig{Subjects: []string{"b.>", "a.>"}, MaxBytes: 0, MaxMsgs: -1, Replicas: 1}
	d := queue.Diff(want, have)
	if len(d) != 1 || d[0].Field != "replicas" || d[0].Kind != queue.Replicas || d[0].Want != 3 || d[0].Have != 1 {
		t.Fatalf("Diff = %+v, want only replicas 3 vs 1", d)
	}
}

// The results bucket is an object store whose objects expire after ResultsTTL (30 days
// unless the topology says otherwise); like the streams, an existing bucket keeps the
// operator's settings.
func TestEnsureCreatesTheResultsBucketWithItsTTL(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, queue.Topology{ResultsTTL: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, wire.BucketResults)
	if err != nil {
		t.Fatalf("results bucket: %v", err)
	}
	st, err := obs.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 48*time.Hour {
		t.Fatalf("results bucket TTL = %s, want 48h", st.TTL())
	}
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil { // another process, default TTL
		t.Fatal(err)
	}
	if st, err = obs.Status(ctx); err != nil || st.TTL() != 48*time.Hour {
		t.Fatalf("results bucket TTL after another process started = %v (%v), want 48h kept", st.TTL(), err)
	}
	if queue.DefaultResultsTTL != 30*24*time.Hour || (queue.Topology{}).Defaults().ResultsTTL != queue.DefaultResultsTTL {
		t.Fatalf("default results TTL = %s, want 720h", (queue.Topology{}).Defaults().ResultsTTL)
	}
}

// BenchmarkEnsureExisting is a process's start-up check when everything exists: one
// lookup per stream and bucket of the topology.
func BenchmarkEnsureExisting(b *testing.B) {
	_, js := natstest.Start(b).Connect(b)
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
			b.Fatal(err)
		}
	}
}
