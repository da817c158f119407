package collector

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// failed publishes a failed result of row i that keeps its job, as a worker does.
func (b *bundle) failed(run string, i int) {
	job, _ := json.Marshal(wire.Job{V: 1, Run: run, Row: i, Query: "q1", Deployment: "default"})
	b.publish(wire.ResultSubject(run, i, "q1"), wire.Result{V: 1, Run: run, Row: i, Query: "q1", Attempt: 1, Calls: 1,
		Error: &wire.Error{Reason: wire.ReasonContentFiltered, Message: "filtered"}, Job: job})
}

// A run's resubmit.jsonl has an entry for each error row and for nothing else: the row,
// its data and its results as stored (a failed one with its job).
func TestOnlyErrorRowsLeaveWhatAResubmissionNeeds(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	const run = "orig"
	b.open(run, wire.OrderInput, "id")
	for i := range 4 {
		b.row(run, i, `{"id":"r`+strconv.Itoa(i)+`"}`)
		if i == 2 {
			b.failed(run, i)
		} else {
			b.result(run, i, `{"q1_answer":"a`+strconv.Itoa(i)+`"}`)
		}
	}
	b.seal(run, 4)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })
	entries := b.lines(run, sink.ResubmitJSONL)
	if len(entries) != 1 || entries[0]["row"] != 2.0 || entries[0]["data"].(map[string]any)["id"] != "r2" {
		t.Fatalf("%s = %v, want one entry, row 2 with its data", sink.ResubmitJSONL, entries)
	}
	res := entries[0]["results"].([]any)
	if len(res) != 1 || res[0].(map[string]any)["job"] == nil {
		t.Fatalf("row 2's results %v, want its failed result with its job", res)
	}
	var open wire.Open
	if b, err := os.ReadFile(filepath.Join(b.cfg.OutDir, run, sink.OpenJSON)); err != nil || json.Unmarshal(b, &open) != nil || open.Run != run {
		t.Fatalf("%s: %s (%v), want the run's open record", sink.OpenJSON, b, err)
	}
	if objs, _ := b.stored(run); objs[sink.ResubmitJSONL] == nil || objs[sink.OpenJSON] == nil {
		t.Errorf("stored %v, want %s and %s among the run's files", objs, sink.ResubmitJSONL, sink.OpenJSON)
	}
}

// A resubmission's rows are merged into the original run's files, every row once with
// its latest outcome (in input order for a run in input order, after the others in
// completion order), even when the collector stops halfway through renaming the merged
// files over the run's: the one that starts again finishes the swap from the merged
// view it left, and merges nothing twice. With CSV, the CSV files are merged the same way.
func TestResubmissionIsMergedOnceAlsoAfterACrashMidSwap(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		order   string
		withCSV bool
		want    []string // the ids of the merged results.jsonl
	}{
		{"input order", wire.OrderInput, false, []string{"r0", "r1", "r2", "r4"}},
		{"input order, with CSV", wire.OrderInput, true, []string{"r0", "r1", "r2", "r4"}},
		{"completion order", wire.OrderCompletion, false, []string{"r0", "r2", "r4", "r1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mergedOnceAfterACrash(t, tt.order, tt.withCSV, tt.want)
		})
	}
}

func mergedOnceAfterACrash(t *testing.T, order string, withCSV bool, want []string) {
	b := setup(t, Config{CSV: withCSV})
	const run, sub = "orig", "orig-r1"
	b.open(run, order, "id")
	for i := range 5 { // rows 1 and 3 fail
		b.row(run, i, `{"id":"r`+strconv.Itoa(i)+`"}`)
		if i%2 == 1 {
			b.failed(run, i)
		} else {
			b.result(run, i, `{"q1_answer":"a`+strconv.Itoa(i)+`"}`)
		}
		// In completion order, row i is out before row i+1 comes.
		b.waitFor("row "+strconv.Itoa(i)+" out", 15*time.Second, func() bool { st, _ := b.status(run); return st.Emitted > i })
	}
	b.seal(run, 5)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })

	b.crashAt(faultMidSwap)
	b.publish(wire.InputOpenSubject(sub), wire.Open{V: 1, Run: sub, Order: order, InputColumns: []string{"id"}, Deployments: []string{"default"},
		Queries: []wire.QueryInfo{{Name: "q1", Columns: []string{"q1_answer"}}}, Created: time.Now(), Resubmit: &wire.Resubmission{Run: run, Attempt: 1}})
	for j, src := range []int{1, 3} { // row 1 succeeds now, row 3 fails again
		b.publish(wire.InputRowSubject(sub, j), wire.Row{V: 1, Run: sub, Row: j, Data: json.RawMessage(`{"id":"r` + strconv.Itoa(src) + `"}`), SourceRow: &src})
		if src == 1 {
			b.result(sub, j, `{"q1_answer":"again"}`)
		} else {
			b.failed(sub, j)
		}
	}
	b.seal(sub, 2)
	b.waitExited(15 * time.Second)
	if sum, _ := readSummary(filepath.Join(b.cfg.OutDir, run)); sum.Attempt != 0 {
		t.Fatalf("the summary says attempt %d before the swap is over", sum.Attempt)
	}
	if _, err := os.Stat(filepath.Join(b.cfg.OutDir, run, ".resubmit-r1", mergeDone)); err != nil {
		t.Fatalf("no complete merged view left to swap in: %v", err)
	}

	b.fault = nil
	b.start()
	b.waitFor("the resubmission to finish", 15*time.Second, func() bool { st, _ := b.status(sub); return st.Finished })
	got := map[string]string{}
	var ids []string
	for _, l := range b.lines(run, sink.ResultsJSONL) {
		ids = append(ids, l["id"].(string))
		got[l["id"].(string)] = l["q1_answer"].(string)
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("rows of the merged results (-want +got):\n%s", diff)
	}
	if got["r1"] != "again" || got["r0"] != "a0" {
		t.Errorf("merged answers %v, want row 1's new answer and the others kept", got)
	}
	errs, entries := b.lines(run, sink.ErrorsJSONL), b.lines(run, sink.ResubmitJSONL)
	if len(errs) != 1 || errs[0]["id"] != "r3" || len(entries) != 1 || entries[0]["row"] != 3.0 {
		t.Errorf("merged errors %v, entries %v; want row 3 once in each", errs, entries)
	}
	st, _ := b.status(run)
	sum, _ := readSummary(filepath.Join(b.cfg.OutDir, run))
	if st.Attempt != 1 || st.OK != 4 || st.Failed != 1 || sum.Attempt != 1 || sum.Stats.RowsOK != 4 || sum.Stats.RowsFailed != 1 {
		t.Errorf("after the merge: status %+v, summary %+v; want attempt 1, 4 rows ok, 1 failed", st, sum)
	}
	if _, err := os.Stat(filepath.Join(b.cfg.OutDir, run, ".resubmit-r1")); !os.IsNotExist(err) {
		t.Errorf("the merged view's directory is left: %v", err)
	}
	if withCSV {
		res, err := os.ReadFile(filepath.Join(b.cfg.OutDir, run, sink.ResultsCSV))
		if err != nil {
			t.Fatal(err)
		}
		wantCSV := "id,q1_answer,q1_usage,q1_model\n" + csvRow("r0", "a0") + csvRow("r1", "again") + csvRow("r2", "a2") + csvRow("r4", "a4")
		if diff := cmp.Diff(wantCSV, string(res)); diff != "" {
			t.Errorf("merged %s (-want +got):\n%s", sink.ResultsCSV, diff)
		}
		if rows := readCSV(t, filepath.Join(b.cfg.OutDir, run, sink.ErrorsCSV)); len(rows) != 2 || rows[1][0] != "r3" {
			t.Errorf("merged %s = %v, want its header and row 3", sink.ErrorsCSV, rows)
		}
	}
	objs, _ := b.stored(run)
	for _, name := range []string{sink.ResultsJSONL, sink.ErrorsJSONL, sink.ResubmitJSONL} {
		if info := objs[name]; info == nil || info.Size != uint64(fileSize(t, filepath.Join(b.cfg.OutDir, run, name))) {
			t.Errorf("the stored %s is not the merged one: %+v", name, info)
		}
	}
}

// A run whose errors.jsonl has lines that resubmit.jsonl has no entry for (started by
// an earlier build) is not merged: its files stay as they were.
func TestAResubmissionOfARunWithoutItsEntriesIsNotMerged(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{NoStore: true})
	const run, sub = "old", "old-r1"
	b.open(run, wire.OrderInput, "id")
	b.row(run, 0, `{"id":"r0"}`)
	b.failed(run, 0)
	b.seal(run, 1)
	b.waitFor("the run to finish", 15*time.Second, func() bool { st, _ := b.status(run); return st.Finished })
	if err := os.Remove(filepath.Join(b.cfg.OutDir, run, sink.ResubmitJSONL)); err != nil {
		t.Fatal(err)
	}
	b.publish(wire.InputOpenSubject(sub), wire.Open{V: 1, Run: sub, Order: wire.OrderInput, InputColumns: []string{"id"}, Deployments: []string{"default"},
		Queries: []wire.QueryInfo{{Name: "q1", Columns: []string{"q1_answer"}}}, Created: time.Now(), Resubmit: &wire.Resubmission{Run: run, Attempt: 1}})
	src := 0
	b.publish(wire.InputRowSubject(sub, 0), wire.Row{V: 1, Run: sub, Row: 0, Data: json.RawMessage(`{"id":"r0"}`), SourceRow: &src})
	b.result(sub, 0, `{"q1_answer":"again"}`)
	b.seal(sub, 1)
	b.waitFor("the merge to be refused", 15*time.Second, func() bool {
		return strings.Contains(b.log.String(), "more lines than its "+sink.ResubmitJSONL)
	})
	if st, _ := b.status(sub); st.Finished {
		t.Error("the resubmission says finished although it was not merged")
	}
	if errs := b.lines(run, sink.ErrorsJSONL); len(errs) != 1 {
		t.Errorf("the run's errors changed: %v", errs)
	}
}

// csvRow is a success row of the test's results.csv: its id, its answer, the usage
// and model every test result carries.
func csvRow(id, answer string) string {
	return id + "," + answer + `,"{""prompt_tokens"":10,""completion_tokens"":2,""total_tokens"":12}",m` + "\n"
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
