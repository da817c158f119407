package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

func (e *env) waitState(run, want string, within time.Duration) status.Report {
	e.t.Helper()
	nc, _ := e.nats.Connect(e.t)
	deadline := time.Now().Add(within)
	for {
		r, err := status.Get(context.Background(), nc, e.js, e.topo.Names, run, 50*time.Millisecond)
		if err == nil && r.State == want {
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("run %s: state %q (err %v) after %s, want %q", run, r.State, err, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Issue 5, acceptance 5: a wrong key fails no row; the run shows blocked within seconds
// and completes once a worker with the right key runs.
func TestWrongKeyBlocksTheRunWithoutFailingRows(t *testing.T) {
	e := setup(t, llmsim.Config{Keys: []string{"right-key"}})
	bad := e.startWorker(workerOpts{key: "wrong-key"})
	e.startCollector("")
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 2, "")), csvRows(20, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	r := e.waitState(rep.Run, "blocked", 10*time.Second)
	if r.Failed != 0 {
		t.Fatalf("%d rows failed while blocked, want 0", r.Failed)
	}
	t.Logf("blocked: %s", r.Reason)
	bad()
	e.startWorker(workerOpts{key: "right-key"})
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != 20 || sum.Stats.RowsFailed != 0 {
		t.Fatalf("rows ok/failed = %d/%d, want 20/0", sum.Stats.RowsOK, sum.Stats.RowsFailed)
	}
}

// Run control: a paused run's jobs wait without calls until it resumes; a cancelled
// run's unanswered queries end as error rows with reason cancelled, none dropped.
func TestPauseResumeAndCancel(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 100 * time.Millisecond})
	p := e.pipeline(matrixPipeline(1, 1, ""))
	rep, err := e.produce(p, csvRows(30, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	if err := status.SetControl(context.Background(), e.js, e.topo.Names, rep.Run, wire.ControlPaused); err != nil {
		t.Fatal(err)
	}
	e.startCollector("")
	e.startWorker(workerOpts{concurrency: 2})
	e.waitState(rep.Run, "paused", 5*time.Second)
	time.Sleep(time.Second)
	if n := e.sim.Stats().Requests; n != 0 {
		t.Fatalf("llmsim saw %d calls of a paused run, want 0", n)
	}
	if err := status.SetControl(context.Background(), e.js, e.topo.Names, rep.Run, wire.ControlRunning); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.sim.Stats().Requests < 4 {
		if time.Now().After(deadline) {
			t.Fatal("no call after resume")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := status.SetControl(context.Background(), e.js, e.topo.Names, rep.Run, wire.ControlCancelled); err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 30*time.Second)
	ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
	if len(ok)+len(bad) != 30 || len(bad) == 0 {
		t.Fatalf("%d ok + %d error rows, want 30 in all with some cancelled", len(ok), len(bad))
	}
	for _, r := range bad {
		if qe := failedQuery(t, r, "cs1_k1"); qe["reason"] != wire.ReasonCancelled {
			t.Fatalf("row %v: reason %v, want %s", r["id"], qe["reason"], wire.ReasonCancelled)
		}
	}
	if err := status.SetControl(context.Background(), e.js, e.topo.Names, rep.Run, wire.ControlRunning); err == nil {
		t.Fatal("a cancelled run was resumed")
	}
}
