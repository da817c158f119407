package collector

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// carriedResult publishes query q's result of row i carrying the row's data (a row whose
// first query's job carried it: wire.Job.Data), a success with fields or, with fields
// empty, a failure.
func (b *bundle) carriedResult(run string, i int, q, fields, data string) {
	b.t.Helper()
	res := wire.Result{V: 1, Run: run, Row: i, Query: q, Attempt: 1, Model: "m"}
	if data != "" {
		res.Data = json.RawMessage(data)
	}
	if fields == "" {
		res.Error = &wire.Error{Reason: wire.ReasonRetryExhausted, Message: "gave up"}
	} else {
		res.OK = true
		if err := json.Unmarshal([]byte(fields), &res.Fields); err != nil {
			b.t.Fatal(err)
		}
	}
	b.publish(wire.ResultSubject(run, i, q), res)
}

// openTwo publishes a run's open record with queries q1 and q2, in that order.
func (b *bundle) openTwo(run string) {
	b.publish(wire.InputOpenSubject(run), wire.Open{V: 1, Run: run, Order: wire.OrderInput, Deployments: []string{"default"},
		Queries: []wire.QueryInfo{{Name: "q1", Columns: []string{"q1_answer"}}, {Name: "q2", Columns: []string{"q2_answer"}}}, Created: time.Now()})
}

// A row whose data rides in its first query's job has no input row message: the
// collector takes its input from that query's result, kept in memory or read back from
// the result when memory is short, and writes it as it writes any row.
func TestARowCarriedInItsFirstResultIsWrittenWithItsData(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		limit int64
	}{{"data kept in memory", 0}, {"data read back from the result", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{MemoryLimit: tc.limit})
			const run = "carried"
			b.open(run, wire.OrderInput)
			for i := range 3 {
				b.carriedResult(run, i, "q1", fmt.Sprintf(`{"q1_answer":"a%d"}`, i), fmt.Sprintf(`{"id":"r%d"}`, i))
			}
			b.seal(run, 3)
			if s := b.summary(run, 15*time.Second); s.Stats.RowsOK != 3 || s.Stats.RowsFailed != 0 {
				t.Fatalf("summary: %+v", s)
			}
			lines := b.lines(run, sink.ResultsJSONL)
			if diff := cmp.Diff([]string{"r0", "r1", "r2"}, ids(lines)); diff != "" {
				t.Fatalf("rows written (-want +got):\n%s", diff)
			}
			for i, l := range lines {
				if l["q1_answer"] != fmt.Sprintf("a%d", i) {
					t.Fatalf("row %d: %v", i, l)
				}
			}
		})
	}
}

// With several queries, only the first query's result carries the row: a row waits for
// it (its other results alone are not a row), a failed first query still brings the
// data (the error row keeps the input columns), and data the row cannot be written with
// makes an error row, as it does in an input row message.
func TestACarriedRowWaitsForItsFirstQueryAndKeepsItsDataOnFailure(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	const run = "carried-two"
	b.openTwo(run)
	b.carriedResult(run, 0, "q2", `{"q2_answer":"b0"}`, "")
	b.carriedResult(run, 1, "q2", `{"q2_answer":"b1"}`, "")
	b.carriedResult(run, 2, "q2", `{"q2_answer":"b2"}`, "")
	b.seal(run, 3)
	b.waitFor("the seal to be read", 10*time.Second, func() bool { st, ok := b.status(run); return ok && st.State != wire.RunOpen })
	time.Sleep(100 * time.Millisecond) // room for a wrong write
	if st, _ := b.status(run); st.Emitted != 0 {
		t.Fatalf("rows written before their first query's result (their input): %+v", st)
	}
	b.carriedResult(run, 0, "q1", `{"q1_answer":"a0"}`, `{"id":"r0"}`)
	b.carriedResult(run, 1, "q1", "", `{"id":"r1"}`)
	b.carriedResult(run, 2, "q1", `{"q1_answer":"a2"}`, `{"id":"r2","q1_answer":"mine"}`)
	b.summary(run, 15*time.Second)
	ok := b.lines(run, sink.ResultsJSONL)
	if len(ok) != 1 || ok[0]["id"] != "r0" || ok[0]["q1_answer"] != "a0" || ok[0]["q2_answer"] != "b0" {
		t.Fatalf("success rows: %v", ok)
	}
	bad := b.lines(run, sink.ErrorsJSONL)
	if len(bad) != 2 || bad[0]["id"] != "r1" {
		t.Fatalf("error rows: %v (want r1 with its input columns, then row 2)", bad)
	}
	e, _ := bad[1]["_error"].(map[string]any)
	if e["reason"] != wire.ReasonMalformedRecord || e["field"] != "q1_answer" {
		t.Fatalf("row 2's _error: %v, want %s naming q1_answer", bad[1]["_error"], wire.ReasonMalformedRecord)
	}
}
