package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/provision"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/resubmit"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// resubmitRun runs mqctl resubmit's steps: publish the resubmission, wait for it, and
// return the run's status once the resubmission is merged.
func (e *env) resubmitRun(run string, opts resubmit.Options) (resubmit.Report, wire.RunStatus) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := resubmit.Start(ctx, e.js, e.topo.Names, run, opts, e.log)
	if err != nil {
		e.t.Fatalf("resubmit %s: %v", run, err)
	}
	if rep.Rows > 0 {
		if _, err := status.WaitRun(ctx, e.js, e.topo.Names, rep.Resubmission, nil); err != nil {
			e.t.Fatalf("wait for resubmission %s: %v", rep.Resubmission, err)
		}
	}
	st, ok := e.runStatus(run)
	if !ok {
		e.t.Fatalf("run %s: no status", run)
	}
	return rep, st
}

// finishedRun produces rows rows through pipeline p and waits until the run says
// finished (its files stored).
func (e *env) finishedRun(p *config.Pipeline, rows int) string {
	e.t.Helper()
	rep, err := e.produce(p, csvRows(rows, nil), input.CSV)
	if err != nil {
		e.t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	waitFor(e.t, 30*time.Second, "the run to finish", func() bool { st, _ := e.runStatus(rep.Run); return st.Finished })
	return rep.Run
}

// exactlyOnce checks that the run's files in dir hold rows r0..r(n-1), each exactly
// once, all successful, in input order, and nothing left to resubmit.
func (e *env) exactlyOnce(dir string, n int) {
	e.t.Helper()
	ok, bad := readLines(e.t, filepath.Join(dir, sink.ResultsJSONL)), readLines(e.t, filepath.Join(dir, sink.ErrorsJSONL))
	if len(bad) != 0 {
		e.t.Fatalf("%d error rows remain, e.g. %v", len(bad), bad[0])
	}
	if len(ok) != n {
		e.t.Fatalf("%d result lines, want %d", len(ok), n)
	}
	for i, r := range ok {
		if want := "r" + strconv.Itoa(i); r["id"] != want {
			e.t.Fatalf("results line %d is row %v, want %s (every row once, in input order)", i, r["id"], want)
		}
	}
	if left := readLines(e.t, filepath.Join(dir, sink.ResubmitJSONL)); len(left) != 0 {
		e.t.Fatalf("%s holds %d entries, want none (no error row left)", sink.ResubmitJSONL, len(left))
	}
}

// readLines reads a JSONL file as objects (none when it does not exist).
func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, m)
	}
	return out
}

// failedMarks returns the llmsim markers ("<id>.<query>") of the failed queries of a
// run's error rows, and the ids of those rows.
func failedMarks(t *testing.T, bad []map[string]any) (marks, ids []string) {
	t.Helper()
	for _, r := range bad {
		ids = append(ids, r["id"].(string))
		for _, f := range errorOf(t, r)["failed_queries"].([]any) {
			marks = append(marks, r["id"].(string)+"."+f.(map[string]any)["query"].(string))
		}
	}
	slices.Sort(marks)
	return marks, ids
}

// markedSince returns the sorted markers of llmsim's requests after seq.
// restartCollectorWithoutFiles stops the collector, deletes the run's files from its
// volume (they are in the object store), starts a new collector and turns llmsim's
// faults off: a resubmission must work from what the system stored.
func (e *env) restartCollectorWithoutFiles(stop func(), run string) {
	e.t.Helper()
	stop()
	if err := os.RemoveAll(filepath.Join(e.out, run)); err != nil {
		e.t.Fatal(err)
	}
	e.startCollector("")
	if err := e.sim.Update(llmsim.Update{ResetFaults: true}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) markedSince(seq uint64) []string {
	var out []string
	for _, r := range e.sim.Requests(seq) {
		out = append(out, r.Marker)
	}
	slices.Sort(out)
	return out
}

// Issue 11, acceptance 3: a run with 10 % permanent faults (content filtered answers),
// then mqctl resubmit with the faults off: the run's files hold every input row exactly
// once, all successful; its status and summary say attempt 1; the stored files are the
// merged ones; the audit names the resubmitted rows. Every query of an error row is
// asked again: the failed ones with the job their result kept, the others rendered from
// the run's pipeline (a success result keeps no job).
func TestResubmittedErrorRowsEndInTheRunsFilesOnceAllSuccessful(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 5, Faults: llmsim.Faults{llmsim.FaultContentFilter: 10}})
	e.startWorker(workerOpts{})
	e.startCollector("")
	const rows, queries = 60, 2
	p := e.pipeline(matrixPipeline(1, queries, ""))
	run := e.finishedRun(p, rows)
	first := e.waitSummary(run, time.Second)
	bad := e.lines(run, sink.ErrorsJSONL)
	marks, ids := failedMarks(t, bad)
	failed := len(bad)
	if failed == 0 || len(marks) == failed*queries {
		t.Fatalf("%d error rows, %d failed queries: the test needs error rows with a query answered", failed, len(marks))
	}
	if err := e.sim.Update(llmsim.Update{ResetFaults: true}); err != nil {
		t.Fatal(err)
	}

	t.Run("success results keep no job, failed ones keep theirs", func(t *testing.T) {
		entries := readLines(t, filepath.Join(e.out, run, sink.ResubmitJSONL))
		if len(entries) != failed {
			t.Fatalf("%d entries in %s, want one per error row (%d)", len(entries), sink.ResubmitJSONL, failed)
		}
		for _, en := range entries {
			for _, r := range en["results"].([]any) {
				res := r.(map[string]any)
				if _, has := res["job"]; has == (res["ok"] == true) {
					t.Fatalf("row %v query %v: ok %v, job kept %v; want a job on a failure only", en["row"], res["query"], res["ok"], has)
				}
			}
		}
	})
	t.Run("without the pipeline, asking every query is refused and nothing is published", func(t *testing.T) {
		_, err := resubmit.Start(context.Background(), e.js, e.topo.Names, run, resubmit.Options{}, e.log)
		if !errors.Is(err, resubmit.ErrNeedsPipeline) {
			t.Fatalf("Start without a pipeline = %v, want ErrNeedsPipeline", err)
		}
		if _, ok := e.runStatus(wire.ResubmitRunID(run, 1)); ok {
			t.Fatal("a resubmission was started")
		}
	})
	t.Run("another pipeline is refused", func(t *testing.T) {
		other := e.pipeline(matrixPipeline(2, queries, ""))
		if _, err := resubmit.Start(context.Background(), e.js, e.topo.Names, run, resubmit.Options{Pipeline: other}, e.log); err == nil ||
			!strings.Contains(err.Error(), "not the run's") {
			t.Fatalf("Start with another pipeline = %v, want it refused", err)
		}
	})

	seq := e.sim.Stats().Requests
	res, st := e.resubmitRun(run, resubmit.Options{Pipeline: p})
	if res.Attempt != 1 || res.Rows != failed || res.Jobs != failed*queries || res.Rendered != failed*queries-len(marks) || res.Reused != 0 || res.Skipped != 0 {
		t.Errorf("resubmission %+v, want attempt 1, %d rows, every query of each asked again, %d rendered", res, failed, failed*queries-len(marks))
	}
	if calls := e.sim.Stats().Requests - seq; calls != int64(failed*queries) {
		t.Errorf("the resubmission made %d calls, want %d (every query of each error row once)", calls, failed*queries)
	}
	dir := filepath.Join(e.out, run)
	e.exactlyOnce(dir, rows)
	if st.Attempt != 1 || st.OK != rows || st.Failed != 0 || !st.Finished {
		t.Errorf("run status after the resubmission %+v, want attempt 1, %d ok, 0 failed", st, rows)
	}
	sum := e.waitSummary(run, time.Second)
	if sum.Attempt != 1 || sum.Stats.RowsOK != rows || sum.Stats.RowsFailed != 0 || sum.Stats.Calls != first.Stats.Calls+int64(failed*queries) {
		t.Errorf("summary after the resubmission %+v, want attempt 1, %d ok, the calls of both attempts", sum, rows)
	}

	t.Run("the stored files are the merged ones", func(t *testing.T) {
		elsewhere := filepath.Join(t.TempDir(), run)
		if _, err := archive.Fetch(context.Background(), e.js, e.topo.Names, run, elsewhere); err != nil {
			t.Fatal(err)
		}
		e.exactlyOnce(elsewhere, rows)
	})
	t.Run("the audit names the resubmitted rows", func(t *testing.T) {
		var got []string
		for _, a := range e.auditRecords() {
			if a.Run != res.Resubmission {
				if a.Resubmission != nil {
					t.Fatalf("audit record of the first attempt %+v names a resubmission", a)
				}
				continue
			}
			if a.Resubmission == nil || a.Resubmission.Run != run || a.Resubmission.Attempt != 1 {
				t.Fatalf("audit record of the resubmission %+v, want its original run and attempt 1", a)
			}
			got = append(got, "r"+strconv.Itoa(a.Resubmission.Row))
		}
		slices.Sort(got)
		got = slices.Compact(got)
		slices.Sort(ids)
		if !slices.Equal(got, ids) {
			t.Errorf("the audit names rows %v as resubmitted, want the error rows %v", got, ids)
		}
	})
	t.Run("nothing is left to resubmit", func(t *testing.T) {
		again, st := e.resubmitRun(run, resubmit.Options{Pipeline: p})
		if again.Rows != 0 || again.Attempt != 2 || st.Attempt != 1 {
			t.Errorf("a second resubmission %+v (status attempt %d), want nothing asked", again, st.Attempt)
		}
		if _, ok := e.runStatus(wire.ResubmitRunID(run, 2)); ok {
			t.Error("a second resubmission was started")
		}
	})
}

// --only-failed-queries asks only the failed queries again and keeps the other answers
// (llmsim is asked exactly the failed queries); it works from what the system stored:
// the collector restarted, and the run's files gone from its volume (they are fetched
// from the results bucket), no pipeline given.
func TestResubmittingOnlyFailedQueriesAfterACollectorRestartKeepsTheOtherAnswers(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 9, Faults: llmsim.Faults{llmsim.FaultContentFilter: 10}})
	e.startWorker(workerOpts{})
	stopCollector := e.startCollector("")
	const rows, queries = 40, 3
	run := e.finishedRun(e.pipeline(matrixPipeline(1, queries, "")), rows)
	bad := e.lines(run, sink.ErrorsJSONL)
	marks, _ := failedMarks(t, bad)
	if len(bad) == 0 || len(marks) == len(bad)*queries {
		t.Fatalf("%d error rows, %d failed queries: the test needs rows with some queries answered", len(bad), len(marks))
	}
	okBefore := byID(e.lines(run, sink.ResultsJSONL))

	e.restartCollectorWithoutFiles(stopCollector, run)
	seq := uint64(e.sim.Stats().Requests)
	res, st := e.resubmitRun(run, resubmit.Options{OnlyFailed: true})
	if asked := e.markedSince(seq); !slices.Equal(asked, marks) {
		t.Errorf("llmsim was asked %v, want exactly the failed queries %v", asked, marks)
	}
	if res.Jobs != len(marks) || res.Reused != len(bad)*queries-len(marks) || res.Rendered != 0 {
		t.Errorf("resubmission %+v; want %d queries asked again, the other %d answers kept", res, len(marks), len(bad)*queries-len(marks))
	}
	e.exactlyOnce(filepath.Join(e.out, run), rows)
	if st.OK != rows || st.Failed != 0 || st.Attempt != 1 {
		t.Errorf("run status %+v, want %d ok, attempt 1", st, rows)
	}
	after := byID(e.lines(run, sink.ResultsJSONL))
	for id, r := range okBefore {
		if mustJSON(r) != mustJSON(after[id]) {
			t.Errorf("row %s changed although it had succeeded", id)
		}
	}
}

// A second resubmission starts from the merged files: the rows the first one left in
// error (their failed results, of the first resubmission, keep their jobs) are asked
// again, and the run ends with every row once, all successful, at attempt 2.
func TestASecondResubmissionStartsFromTheMergedFiles(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 11, Faults: llmsim.Faults{llmsim.FaultContentFilter: 20}})
	e.startWorker(workerOpts{})
	e.startCollector("")
	const rows = 40
	p := e.pipeline(matrixPipeline(1, 2, ""))
	run := e.finishedRun(p, rows)
	if err := e.sim.Update(llmsim.Update{Faults: llmsim.Faults{llmsim.FaultContentFilter: 50}}); err != nil {
		t.Fatal(err)
	}
	first, st := e.resubmitRun(run, resubmit.Options{OnlyFailed: true})
	if first.Attempt != 1 || st.Attempt != 1 || st.Failed == 0 || st.OK+st.Failed != rows {
		t.Fatalf("first resubmission %+v, status %+v: want attempt 1 with rows still in error, every row counted once", first, st)
	}
	left := e.lines(run, sink.ErrorsJSONL)
	if entries := readLines(t, filepath.Join(e.out, run, sink.ResubmitJSONL)); len(entries) != len(left) || len(left) != st.Failed {
		t.Fatalf("after the first resubmission: %d error lines, %d entries, status %d failed; want the same", len(left), len(entries), st.Failed)
	}
	if err := e.sim.Update(llmsim.Update{ResetFaults: true}); err != nil {
		t.Fatal(err)
	}
	second, st := e.resubmitRun(run, resubmit.Options{Pipeline: p})
	if second.Attempt != 2 || second.Rows != len(left) || st.Attempt != 2 {
		t.Errorf("second resubmission %+v, status attempt %d; want attempt 2 asking the %d rows left", second, st.Attempt, len(left))
	}
	e.exactlyOnce(filepath.Join(e.out, run), rows)
	if sum := e.waitSummary(run, time.Second); sum.Attempt != 2 || sum.Stats.RowsOK != rows {
		t.Errorf("summary %+v, want attempt 2, %d rows ok", sum, rows)
	}
}

// A run without error rows has nothing to resubmit: no resubmit.jsonl, no
// resubmission, no call, its files and status as they were.
func TestResubmittingARunWithoutErrorRowsDoesNothing(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 3})
	e.startWorker(workerOpts{})
	e.startCollector("")
	run := e.finishedRun(e.pipeline(matrixPipeline(1, 2, "")), 10)
	if _, err := os.Stat(filepath.Join(e.out, run, sink.ResubmitJSONL)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a run without error rows has %s (%v): the success path wrote what only failures need", sink.ResubmitJSONL, err)
	}
	before, _ := os.ReadFile(filepath.Join(e.out, run, sink.ResultsJSONL))
	calls := e.sim.Stats().Requests
	res, st := e.resubmitRun(run, resubmit.Options{})
	if res.Rows != 0 || res.Jobs != 0 || st.Attempt != 0 || st.OK != 10 {
		t.Errorf("resubmission %+v, status %+v; want nothing asked, the status as it was", res, st)
	}
	if _, ok := e.runStatus(wire.ResubmitRunID(run, 1)); ok {
		t.Error("a resubmission was started")
	}
	if n := e.sim.Stats().Requests - calls; n != 0 {
		t.Errorf("%d calls, want none", n)
	}
	if after, _ := os.ReadFile(filepath.Join(e.out, run, sink.ResultsJSONL)); string(after) != string(before) {
		t.Error("the run's results changed")
	}
}

// A run that has not finished cannot be resubmitted.
func TestResubmittingAnUnfinishedRunIsRefused(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 3})
	if err := queue.Ensure(context.Background(), e.js, e.topo); err != nil {
		t.Fatal(err)
	}
	_, err := resubmit.Start(context.Background(), e.js, e.topo.Names, "never-ran", resubmit.Options{}, e.log)
	if !errors.Is(err, resubmit.ErrNotFinished) {
		t.Fatalf("Start of an unknown run = %v, want ErrNotFinished", err)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// Issue 11 with the least-privilege roles (deploy/nats/accounts.conf): mqctl resubmit
// as mq-admin, the worker and the collector each as their role; the collector, started
// again without the run's files on its volume, reads them back from the results bucket
// to merge the resubmission. No permission is missing.
func TestResubmissionRunsWithLeastPrivilegeRoles(t *testing.T) {
	e, _ := secureSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := provision.Run(ctx, e.js, e.topo.Names, provision.Default(), provision.Options{}); err != nil {
		t.Fatalf("provision as mq-admin: %v", err)
	}
	if err := e.sim.Update(llmsim.Update{Faults: llmsim.Faults{llmsim.FaultContentFilter: 20}}); err != nil {
		t.Fatal(err)
	}
	mark := len(e.logBuf.String())
	e.startWorker(workerOpts{})
	stopCollector := e.startCollector("")
	const rows = 20
	p := e.pipeline(matrixPipeline(1, 2, ""))
	run := e.finishedRun(p, rows)
	if len(e.lines(run, sink.ErrorsJSONL)) == 0 {
		t.Fatal("no error row: the test proves nothing")
	}
	e.restartCollectorWithoutFiles(stopCollector, run)
	_, st := e.resubmitRun(run, resubmit.Options{Pipeline: p})
	e.exactlyOnce(filepath.Join(e.out, run), rows)
	if st.OK != rows || st.Attempt != 1 {
		t.Errorf("run status %+v, want %d ok, attempt 1", st, rows)
	}
	for _, stop := range e.stopped {
		stop()
	}
	if logs := e.logBuf.String()[mark:]; strings.Contains(strings.ToLower(logs), "permissions violation") {
		t.Fatalf("a role lacked a permission:\n%s", grepLines(logs, "ermissions"))
	}
}
