package collector

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// publishSmallRun publishes a sealed run of three rows, one of them an error row.
func (b *bundle) publishSmallRun(run string) {
	b.open(run, wire.OrderInput, "id")
	b.row(run, 0, `{"id":"r0"}`)
	b.malformedRow(run, 1)
	b.row(run, 2, `{"id":"r2"}`)
	b.result(run, 0, `{"q1_answer":"a0"}`)
	b.result(run, 2, `{"q1_answer":"a2"}`)
	b.seal(run, 3)
}

// stored is what the results bucket holds of a run: each object's info by file name,
// and the number of messages of the bucket's stream (one meta per object plus its
// chunks: an upload done twice without its old chunks removed would show).
func (b *bundle) stored(run string) (map[string]*jetstream.ObjectInfo, uint64) {
	b.t.Helper()
	ctx := context.Background()
	obs, err := b.js.ObjectStore(ctx, wire.BucketResults)
	if err != nil {
		b.t.Fatal(err)
	}
	out := map[string]*jetstream.ObjectInfo{}
	for _, name := range sink.OutputFiles(true) {
		if info, err := obs.GetInfo(ctx, wire.ResultObject(run, name)); err == nil {
			out[name] = info
		}
	}
	st, err := obs.Status(ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	s, err := b.js.Stream(ctx, "OBJ_"+st.Bucket())
	if err != nil {
		b.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	return out, info.State.Msgs
}

// checkStoredOnce checks that the run's output set is stored byte for byte, each file
// as one object with nothing else in the bucket, by fetching it elsewhere.
func (b *bundle) checkStoredOnce(run string) map[string]*jetstream.ObjectInfo {
	b.t.Helper()
	objs, msgs := b.stored(run)
	var names []string
	var want uint64
	for name, info := range objs {
		names = append(names, name)
		want += 1 + uint64(info.Chunks)
	}
	sort.Strings(names)
	// The run has an error row: its resubmit.jsonl is stored with the rest.
	if diff := cmp.Diff([]string{sink.ErrorsJSONL, sink.OpenJSON, sink.ResubmitJSONL, sink.ResultsJSONL, sink.Summary}, names); diff != "" {
		b.t.Fatalf("objects of run %s (-want +got):\n%s", run, diff)
	}
	if msgs != want {
		b.t.Fatalf("results bucket holds %d messages, want %d (one meta and the chunks of each object, once)", msgs, want)
	}
	dir := b.t.TempDir()
	if _, err := archive.Fetch(context.Background(), b.js, wire.Names{}, run, dir); err != nil {
		b.t.Fatalf("fetch run %s: %v", run, err)
	}
	for _, name := range names {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			b.t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(b.cfg.OutDir, run, name))
		if err != nil {
			b.t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			b.t.Fatalf("%s fetched from the bucket differs from the collector's file:\n got %q\nwant %q", name, got, want)
		}
	}
	return objs
}

// crashAt makes the next collector stop at a fault point, as if killed there.
func (b *bundle) crashAt(point string) {
	b.t.Helper()
	b.stop()
	b.fault = func(p string) error {
		if p == point {
			return fmt.Errorf("at %s: %w", p, errFault)
		}
		return nil
	}
	b.start()
}

// waitExited waits for the collector to stop at its fault point.
func (b *bundle) waitExited(timeout time.Duration) {
	b.t.Helper()
	select {
	case <-b.exited:
	case <-time.After(timeout):
		b.t.Fatalf("the collector did not stop at its fault point within %s", timeout)
	}
	b.stop()
}

// A completed run's output set is in the results bucket before its status says
// finished, and the status says it is stored.
func TestCompletedRunIsStoredBeforeItSaysFinished(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	const run = "stored"
	b.publishSmallRun(run)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })
	st, _ := b.status(run)
	if !st.Stored || st.State != wire.RunCompleted {
		t.Fatalf("final status %+v: want completed and stored", st)
	}
	b.checkStoredOnce(run)
}

// Acceptance (issue 10): a collector killed after the run's files are final but before
// they are stored stores them when it (or its successor) starts again, and only then
// says the run finished; each file is stored once.
func TestCollectorKilledBeforeTheStoreStoresOnRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	const run = "killed-before-store"
	b.crashAt(faultBeforeStore)
	b.publishSmallRun(run)
	b.waitExited(15 * time.Second)

	if _, err := os.Stat(filepath.Join(b.cfg.OutDir, run, sink.Summary)); err != nil {
		t.Fatalf("the crash came before the files were final: %v", err)
	}
	if objs, _ := b.stored(run); len(objs) != 0 {
		t.Fatalf("stored before the store: %v", objs)
	}
	if st, _ := b.status(run); st.Finished {
		t.Fatalf("status says finished before the files are stored: %+v", st)
	}

	b.fault = nil
	b.start()
	b.waitFor("the run to finish after the restart", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })
	if st, _ := b.status(run); !st.Stored || st.Total != 3 || st.OK != 2 || st.Failed != 1 {
		t.Fatalf("final status %+v: want stored, 3 rows, 2 ok, 1 failed", st)
	}
	b.checkStoredOnce(run)
	if n := len(b.lines(run, sink.ResultsJSONL)) + len(b.lines(run, sink.ErrorsJSONL)); n != 3 {
		t.Fatalf("%d rows written after the restart, want 3", n)
	}
}

// A collector killed after the store but before the status uploads nothing again when
// it starts again (the objects are the same ones), then says the run finished.
func TestCollectorKilledAfterTheStoreDoesNotStoreAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	const run = "killed-after-store"
	b.crashAt(faultBeforeStatus)
	b.publishSmallRun(run)
	b.waitExited(15 * time.Second)
	before := b.checkStoredOnce(run)
	if st, _ := b.status(run); st.Finished {
		t.Fatalf("status says finished, yet the collector stopped before writing it: %+v", st)
	}

	b.fault = nil
	b.start()
	b.waitFor("the run to finish after the restart", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })
	after := b.checkStoredOnce(run)
	for name, info := range before {
		if after[name].NUID != info.NUID {
			t.Errorf("%s was uploaded again after the restart (object %s, was %s)", name, after[name].NUID, info.NUID)
		}
	}
}

// A store that fails (the bucket is full) keeps the run from saying finished and is
// tried again until it succeeds; other runs go on meanwhile.
func TestFailedStoreIsRetriedBeforeTheRunFinishes(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ctx := context.Background()
	s, err := b.js.Stream(ctx, "OBJ_"+wire.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxBytes = 64 // no object fits
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	const run = "store-fails"
	b.publishSmallRun(run)
	b.summary(run, 15*time.Second)
	b.waitFor("a failed store", 15*time.Second, func() bool { return testCounter(b.c.m.storeFailures) >= 1 })
	if st, _ := b.status(run); st.Finished {
		t.Fatalf("status says finished while the store fails: %+v", st)
	}
	b.publishSmallRun("other-run")
	b.summary("other-run", 15*time.Second)

	cfg.MaxBytes = -1
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the run to finish once the bucket has room", 20*time.Second, func() bool { st, _ := b.status(run); return st.Finished && st.Stored })
	b.waitFor("the other run to finish", 20*time.Second, func() bool { st, _ := b.status("other-run"); return st.Finished && st.Stored })
	for _, r := range []string{run, "other-run"} {
		objs, _ := b.stored(r)
		if len(objs) != 5 {
			t.Fatalf("run %s: %d objects stored, want 5", r, len(objs))
		}
	}
}

// With NoStore the run finishes without touching the results bucket, and its status
// says it is not stored.
func TestNoStoreLeavesTheFilesOnTheVolumeOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{NoStore: true})
	const run = "not-stored"
	b.publishSmallRun(run)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })
	if st, _ := b.status(run); st.Stored {
		t.Fatalf("status says stored with NoStore: %+v", st)
	}
	if objs, _ := b.stored(run); len(objs) != 0 {
		t.Fatalf("objects stored with NoStore: %v", objs)
	}
}

// testCounter reads a counter.
func testCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// A bucket deleted while the collector starts, after it checked the topology and before
// it opened the bucket, is created again there: before, the collector stopped with
// "bucket not found" (seen under load, where the window is wide).
func TestAResultsBucketDeletedAsTheCollectorStartsIsCreatedAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.stop()
	b.fault = func(p string) error {
		if p == faultBeforeOpen {
			if err := b.js.DeleteObjectStore(context.Background(), wire.BucketResults); err != nil {
				return fmt.Errorf("delete the results bucket: %w", err)
			}
		}
		return nil
	}
	b.start()
	const run = "bucket-deleted-at-start"
	b.publishSmallRun(run)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished && st.Stored })
	b.checkStoredOnce(run)
}

// A results bucket deleted by an operator is created again by the next store.
func TestADeletedResultsBucketIsCreatedAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	if err := b.js.DeleteObjectStore(context.Background(), wire.BucketResults); err != nil {
		t.Fatal(err)
	}
	const run = "bucket-deleted"
	b.publishSmallRun(run)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished && st.Stored })
	b.checkStoredOnce(run)
}
