package archive_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

type bundle struct {
	t   *testing.T
	ctx context.Context
	js  jetstream.JetStream
	obs jetstream.ObjectStore
}

func setup(t *testing.T) *bundle {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, wire.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{t: t, ctx: ctx, js: js, obs: obs}
}

// runFiles writes a run's output set into a fresh directory: a results file larger
// than one object chunk, an error file, a summary.
func runFiles(t *testing.T, csv bool) (string, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	var big bytes.Buffer
	for i := range 5000 {
		big.WriteString(`{"id":"r` + strings.Repeat("x", i%50) + `","q_answer":"é ✓"}` + "\n")
	}
	files := map[string][]byte{
		sink.ResultsJSONL:  big.Bytes(),
		sink.ErrorsJSONL:   []byte(`{"id":"r1","_error":{"reason":"query_failed"}}` + "\n"),
		sink.ResubmitJSONL: []byte(`{"row":1,"data":{"id":"r1"}}` + "\n"),
		sink.OpenJSON:      []byte(`{"v":1,"run":"r"}` + "\n"),
		sink.Summary:       []byte("{\n  \"run\": \"r\"\n}\n"),
	}
	if csv {
		files[sink.ResultsCSV] = []byte("id,q_answer\nr0,yes\n")
		files[sink.ErrorsCSV] = []byte("id,_error\n")
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir, files
}

func (b *bundle) putStatus(st wire.RunStatus) {
	b.t.Helper()
	kv, err := b.js.KeyValue(b.ctx, wire.BucketRuns)
	if err != nil {
		b.t.Fatal(err)
	}
	data, _ := json.Marshal(st)
	if _, err := kv.Put(b.ctx, st.Run, data); err != nil {
		b.t.Fatal(err)
	}
}

// Fetch on another machine (another directory) writes the stored files byte for byte;
// storing the same files again uploads nothing.
func TestStoredFilesFetchByteIdentical(t *testing.T) {
	for _, csv := range []bool{false, true} {
		t.Run(map[bool]string{false: "without CSV", true: "with CSV"}[csv], func(t *testing.T) {
			b := setup(t)
			dir, files := runFiles(t, csv)
			names := sink.OutputFiles(csv)
			n, err := archive.Store(b.ctx, b.obs, "run-1", dir, names, nil)
			if err != nil || n != len(names) {
				t.Fatalf("Store = %d, %v; want %d files uploaded", n, err, len(names))
			}
			if n, err := archive.Store(b.ctx, b.obs, "run-1", dir, names, nil); err != nil || n != 0 {
				t.Fatalf("Store again = %d, %v; want nothing uploaded twice", n, err)
			}
			elsewhere := filepath.Join(t.TempDir(), "fetched", "run-1")
			got, err := archive.Fetch(b.ctx, b.js, wire.Names{}, "run-1", elsewhere)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if len(got) != len(files) {
				t.Fatalf("Fetch wrote %v, want the %d files stored", got, len(files))
			}
			for name, want := range files {
				data, err := os.ReadFile(filepath.Join(elsewhere, name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(data, want) {
					t.Errorf("%s: fetched %d bytes differ from the %d stored", name, len(data), len(want))
				}
			}
			entries, _ := os.ReadDir(elsewhere)
			if len(entries) != len(files) {
				t.Errorf("fetch left %d entries in the directory, want only the %d files (no temp files)", len(entries), len(files))
			}
		})
	}
}

// A run without resubmit.jsonl (no error row) or open.json (stored by an earlier
// build) is fetched whole all the same.
func TestFetchOfARunStoredWithoutItsResubmissionFiles(t *testing.T) {
	b := setup(t)
	dir, files := runFiles(t, false)
	delete(files, sink.ResubmitJSONL)
	delete(files, sink.OpenJSON)
	if _, err := archive.Store(b.ctx, b.obs, "run-old", dir, []string{sink.ResultsJSONL, sink.ErrorsJSONL, sink.Summary}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := archive.Fetch(b.ctx, b.js, wire.Names{}, "run-old", filepath.Join(t.TempDir(), "run-old"))
	if err != nil || len(got) != len(files) {
		t.Fatalf("Fetch = %v, %v; want the %d files stored", got, err, len(files))
	}
}

// FetchOnly writes the files asked for and no other (mqctl resubmit reads neither the
// success rows nor the CSV files).
func TestFetchOnlyWritesTheFilesAskedFor(t *testing.T) {
	b := setup(t)
	dir, files := runFiles(t, true)
	if _, err := archive.Store(b.ctx, b.obs, "run-3", dir, sink.OutputFiles(true), nil); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(t.TempDir(), "run-3")
	only := []string{sink.ErrorsJSONL, sink.ResubmitJSONL, sink.OpenJSON}
	got, err := archive.FetchOnly(b.ctx, b.js, wire.Names{}, "run-3", elsewhere, only)
	if err != nil || len(got) != len(only) {
		t.Fatalf("FetchOnly = %v, %v; want the %d files asked for", got, err, len(only))
	}
	entries, _ := os.ReadDir(elsewhere)
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(elsewhere, e.Name())); err != nil || !bytes.Equal(b, files[e.Name()]) || !slices.Contains(only, e.Name()) {
			t.Errorf("%s fetched (%v): want only %v, byte-identical", e.Name(), err, only)
		}
	}
}

// A file that changed since it was stored (a different digest) is uploaded again.
func TestStoreUploadsAChangedFileAgain(t *testing.T) {
	b := setup(t)
	dir, _ := runFiles(t, false)
	if _, err := archive.Store(b.ctx, b.obs, "run-2", dir, sink.OutputFiles(false), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, sink.Summary), []byte("{\"run\": \"R\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := archive.Store(b.ctx, b.obs, "run-2", dir, sink.OutputFiles(false), nil); err != nil || n != 1 {
		t.Fatalf("Store = %d, %v; want the changed summary.json uploaded", n, err)
	}
}

// The guard (the collector's lease fence) is passed before each upload: a closed fence
// stores nothing.
func TestStoreStopsAtItsGuard(t *testing.T) {
	b := setup(t)
	dir, _ := runFiles(t, false)
	fenced := errors.New("fenced")
	_, err := archive.Store(b.ctx, b.obs, "run-3", dir, sink.OutputFiles(false), func() error { return fenced })
	if !errors.Is(err, fenced) {
		t.Fatalf("Store with a closed guard: %v, want it stopped by the guard", err)
	}
	if _, err := b.obs.GetInfo(b.ctx, wire.ResultObject("run-3", sink.ResultsJSONL)); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("object stored past a closed guard: %v", err)
	}
}

// Issue 10: fetching a run without stored files says why: the run is unknown, not
// complete yet, or complete but not stored (and where its files are).
func TestFetchSaysWhyARunHasNoStoredFiles(t *testing.T) {
	b := setup(t)
	b.putStatus(wire.RunStatus{Run: "open-run", State: wire.RunOpen, Emitted: 4})
	b.putStatus(wire.RunStatus{Run: "sealed-run", State: wire.RunSealed, Total: 10, Emitted: 7})
	b.putStatus(wire.RunStatus{Run: "storing-run", State: wire.RunSealed, Total: 10, Emitted: 10})
	b.putStatus(wire.RunStatus{Run: "unstored-run", State: wire.RunCompleted, Total: 3, Emitted: 3, Finished: true, OutDir: "/out/unstored-run"})
	b.putStatus(wire.RunStatus{Run: "expired-run", State: wire.RunCompleted, Total: 3, Emitted: 3, Finished: true, Stored: true, OutDir: "/out/expired-run"})
	for _, tt := range []struct {
		run     string
		want    error
		message []string
	}{
		{"no-such-run", archive.ErrUnknownRun, []string{"run no-such-run: unknown run", "no status in mq_runs and no files in mq_results"}},
		{"open-run", archive.ErrNotComplete, []string{"run open-run: run not complete yet (state open, 4 of ? rows written)"}},
		{"sealed-run", archive.ErrNotComplete, []string{"not complete yet (state sealed, 7 of 10 rows written)", "stored when it completes"}},
		{"storing-run", archive.ErrNotComplete, []string{"10 of 10 rows written; its files are being stored"}},
		{"unstored-run", archive.ErrNotStored, []string{"did not store its files", "--store-results=false", "/out/unstored-run"}},
		{"expired-run", archive.ErrNotStored, []string{"no longer in mq_results", "TTL", "/out/expired-run"}},
	} {
		t.Run(tt.run, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), tt.run)
			_, err := archive.Fetch(b.ctx, b.js, wire.Names{}, tt.run, dir)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Fetch(%s) = %v, want %v", tt.run, err, tt.want)
			}
			for _, m := range tt.message {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not say %q", err, m)
				}
			}
			if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("Fetch created %s for a run it could not fetch", dir)
			}
		})
	}
	t.Run("an invalid run id is refused before any lookup", func(t *testing.T) {
		if _, err := archive.Fetch(b.ctx, b.js, wire.Names{}, "../etc", t.TempDir()); err == nil || errors.Is(err, archive.ErrUnknownRun) {
			t.Fatalf("Fetch(../etc) = %v, want an invalid run id", err)
		}
	})
}

// List shows each run with stored files, complete once its summary is stored.
func TestListShowsTheRunsStored(t *testing.T) {
	b := setup(t)
	if runs, err := archive.List(b.ctx, b.js, wire.Names{}); err != nil || len(runs) != 0 {
		t.Fatalf("List of an empty bucket = %v, %v", runs, err)
	}
	dir, files := runFiles(t, false)
	if _, err := archive.Store(b.ctx, b.obs, "run-a", dir, sink.OutputFiles(false), nil); err != nil {
		t.Fatal(err)
	}
	// A run whose store stopped before its summary.
	if _, err := archive.Store(b.ctx, b.obs, "run-b", dir, []string{sink.ResultsJSONL}, nil); err != nil {
		t.Fatal(err)
	}
	runs, err := archive.List(b.ctx, b.js, wire.Names{})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 {
		t.Fatalf("List = %+v, want runs a and b", runs)
	}
	byRun := map[string]archive.Run{}
	for _, r := range runs {
		byRun[r.Run] = r
	}
	var size uint64
	for _, f := range files {
		size += uint64(len(f))
	}
	if a := byRun["run-a"]; !a.Complete || a.Files != len(files) || a.Bytes != size || a.Stored.IsZero() {
		t.Errorf("run-a: %+v, want complete, %d files, %d bytes, a time", a, len(files), size)
	}
	if r := byRun["run-b"]; r.Complete || r.Files != 1 {
		t.Errorf("run-b: %+v, want 1 file, not complete", r)
	}
}
