package queue_test

import (
	"context"
	"testing"
	"time"

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
