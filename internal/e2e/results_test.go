package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// runStatus reads a run's status from the runs bucket (ok false: none yet).
func (e *env) runStatus(run string) (wire.RunStatus, bool) {
	e.t.Helper()
	kv, err := e.js.KeyValue(context.Background(), e.topo.Names.BucketRuns())
	if err != nil {
		e.t.Fatal(err)
	}
	entry, err := kv.Get(context.Background(), run)
	if err != nil {
		return wire.RunStatus{}, false
	}
	var st wire.RunStatus
	return st, json.Unmarshal(entry.Value(), &st) == nil
}

// Issue 10, acceptance: after a run with failing rows, `mqctl get RUN` on another
// machine (here another directory; archive.Fetch is what mqctl get runs) yields
// results.jsonl, errors.jsonl and summary.json byte-identical to the collector's files,
// with the same mode; with them what mqctl resubmit reads (resubmit.jsonl: the run has
// error rows; open.json).
func TestGetFetchesARunsFilesByteIdenticalElsewhere(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rep, err := e.produce(p, csvRows(30, func(i int) (string, string) {
		if i%10 == 3 {
			return "invalid_json", "cs1_k2"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != 27 || sum.Stats.RowsFailed != 3 {
		t.Fatalf("summary: %d ok, %d failed; want 27 and 3", sum.Stats.RowsOK, sum.Stats.RowsFailed)
	}
	waitFor(t, 30*time.Second, "the run's status to say finished", func() bool { st, _ := e.runStatus(rep.Run); return st.Finished })
	if st, _ := e.runStatus(rep.Run); !st.Stored {
		t.Fatalf("final status %+v: not stored", st)
	}

	elsewhere := filepath.Join(t.TempDir(), "another-machine", rep.Run)
	files, err := archive.Fetch(context.Background(), e.js, e.topo.Names, rep.Run, elsewhere)
	if err != nil {
		t.Fatalf("mqctl get %s: %v", rep.Run, err)
	}
	if len(files) != 5 {
		t.Fatalf("fetched %+v, want results.jsonl, errors.jsonl, resubmit.jsonl, open.json and summary.json", files)
	}
	for _, name := range []string{sink.ResultsJSONL, sink.ErrorsJSONL, sink.ResubmitJSONL, sink.OpenJSON, sink.Summary} {
		orig := filepath.Join(e.out, rep.Run, name)
		want, err := os.ReadFile(orig)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(elsewhere, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 || !bytes.Equal(got, want) {
			t.Errorf("%s: fetched %d bytes, the collector wrote %d (want identical and not empty)", name, len(got), len(want))
		}
		so, _ := os.Stat(orig)
		sg, _ := os.Stat(filepath.Join(elsewhere, name))
		if so.Mode().Perm() != sg.Mode().Perm() || so.Mode().Perm()&0o044 != 0o044 {
			t.Errorf("%s: mode %v on the collector, %v fetched; want the same, readable by all (0644)", name, so.Mode().Perm(), sg.Mode().Perm())
		}
	}
}

// Issue 10: mqctl get of a run that is not complete says so, and fetches it once it is;
// of a run never published says it is unknown.
func TestGetOfAnIncompleteOrUnknownRunSaysWhich(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, ""))
	rep, err := e.produce(p, csvRows(5, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	waitFor(t, 30*time.Second, "the collector to read the seal", func() bool {
		st, ok := e.runStatus(rep.Run)
		return ok && st.State == wire.RunSealed
	})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), rep.Run)
	if _, err := archive.Fetch(ctx, e.js, e.topo.Names, rep.Run, dir); !errors.Is(err, archive.ErrNotComplete) {
		t.Fatalf("get of a run without workers: %v, want %v", err, archive.ErrNotComplete)
	}
	if _, err := archive.Fetch(ctx, e.js, e.topo.Names, "never-published", dir); !errors.Is(err, archive.ErrUnknownRun) {
		t.Fatalf("get of a run never published: %v, want %v", err, archive.ErrUnknownRun)
	}

	e.startWorker(workerOpts{})
	waitFor(t, 60*time.Second, "the run to finish", func() bool { st, _ := e.runStatus(rep.Run); return st.Finished })
	if _, err := archive.Fetch(ctx, e.js, e.topo.Names, rep.Run, dir); err != nil {
		t.Fatalf("get of the completed run: %v", err)
	}
	if n, err := sink.CountLines(filepath.Join(dir, sink.ResultsJSONL)); err != nil || n != 5 {
		t.Fatalf("fetched results.jsonl: %d rows (%v), want 5", n, err)
	}
}
