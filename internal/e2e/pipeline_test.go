package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
)

// Acceptance 1: 100 rows x 10 queries with 30 % injected 429s all succeed, each output
// field carrying its own row's and query's marker.
func TestCapacityErrorsAreRetriedUntilEveryRowSucceeds(t *testing.T) {
	e := setup(t, llmsim.Config{Faults: llmsim.Faults{"429": 30}, InjectedRetryAfter: 5 * time.Millisecond, Seed: 1})
	e.startWorker(workerOpts{concurrency: 64})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(2, 5, ""))
	rep, err := e.produce(p, csvRows(100, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	if rep.Rows != 100 || rep.Jobs != 1000 || rep.RowErrors != 0 {
		t.Fatalf("report = %+v, want 100 rows, 1000 jobs, 0 row errors", rep)
	}
	sum := e.waitSummary(rep.Run, 90*time.Second)
	if sum.Stats.RowsOK != 100 || sum.Stats.RowsFailed != 0 {
		t.Fatalf("summary rows ok/failed = %d/%d, want 100/0", sum.Stats.RowsOK, sum.Stats.RowsFailed)
	}
	if st := e.sim.Stats(); st.Injected429 == 0 {
		t.Fatalf("llmsim injected no 429 (stats %+v): the test proves nothing", st)
	}
	rows := e.lines(rep.Run, sink.ResultsJSONL)
	if errs := e.lines(rep.Run, sink.ErrorsJSONL); len(rows) != 100 || len(errs) != 0 {
		t.Fatalf("got %d result lines and %d error lines, want 100 and 0", len(rows), len(errs))
	}
	seen := map[string]bool{}
	for i, r := range rows {
		id, _ := r["id"].(string)
		if seen[id] {
			t.Fatalf("row %s emitted twice", id)
		}
		seen[id] = true
		if want := fmt.Sprintf("r%d", i); id != want {
			t.Fatalf("line %d is row %q, want %q (input order)", i, id, want)
		}
		for _, q := range queryNames(2, 5) {
			marker := id + "." + q
			for _, col := range []string{q + "_echo", q + "_why"} {
				v, _ := r[col].(string)
				if !strings.Contains(v, marker) {
					t.Fatalf("row %s column %s = %q, want it to carry marker %q", id, col, v, marker)
				}
			}
			if r[q+"_usage"] == nil || r[q+"_model"] == nil {
				t.Fatalf("row %s lacks %s_usage or %s_model", id, q, q)
			}
		}
		if _, ok := r["_error"]; ok {
			t.Fatalf("success row %s carries _error", id)
		}
	}
}
