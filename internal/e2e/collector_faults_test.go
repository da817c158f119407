package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/wire"
)

// runLeftovers lists what is left of a run on the bus: stream subjects (MQ_AUDIT and
// MQ_DEAD aside: documented retention), consumers, and KV keys but its final status.
func runLeftovers(t *testing.T, js jetstream.JetStream, run string) (bus, consumers []string) {
	t.Helper()
	ctx := context.Background()
	for name := range js.StreamNames(ctx).Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for ci := range s.ListConsumers(ctx).Info() {
			if strings.Contains(ci.Name, run) || strings.Contains(ci.Config.FilterSubject, run) {
				consumers = append(consumers, name+" "+ci.Name)
			}
		}
		if name == wire.StreamAudit || name == wire.StreamDead {
			continue
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			t.Fatal(err)
		}
		for subj := range info.State.Subjects {
			if subj == "$KV."+wire.BucketRuns+"."+run { // the final status record
				continue
			}
			if strings.Contains("."+subj+".", "."+run+".") {
				bus = append(bus, name+" "+subj)
			}
		}
	}
	return bus, consumers
}

// Issue 8, item 14 (acceptance 4): nothing of a completed run is left in streams or
// buckets except its final status record, the audit retention (MQ_AUDIT, MQ_DEAD) and
// its stored files (mq_results, under the bucket's TTL; issue 10).
func TestCompletedRunLeavesOnlyItsStatusAndAudit(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rep, err := e.produce(p, csvRows(20, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	ctx := context.Background()
	runs, err := e.js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	// A control record, as mqctl pause/resume leaves it.
	if _, err := runs.Put(ctx, rep.Run+".control", []byte(`{"state":"running"}`)); err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		bus, consumers := runLeftovers(t, e.js, rep.Run)
		if len(bus) == 0 && len(consumers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left of completed run %s:\n streams and buckets: %q\n consumers: %q\n%s", rep.Run, bus, consumers, e.logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := runs.Get(ctx, rep.Run); err != nil {
		t.Fatalf("final status record: %v", err)
	}
	stored, err := archive.List(ctx, e.js, e.topo.Names)
	if err != nil || len(stored) != 1 || stored[0].Run != rep.Run || !stored[0].Complete {
		t.Fatalf("results bucket = %+v (%v), want the run's files", stored, err)
	}
}
