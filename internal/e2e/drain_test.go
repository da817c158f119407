package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
)

func waitInFlight(t *testing.T, e *env, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for e.sim.Stats().InFlight < n {
		if time.Now().After(deadline) {
			t.Fatalf("llmsim never had %d calls in flight", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SIGTERM drains: a stopping worker finishes its in-flight calls, or past its drain
// timeout NAKs them; none is left to wait out AckWait.
func TestDrain(t *testing.T) {
	t.Run("in-flight calls finish and their results are kept", func(t *testing.T) {
		e := setup(t, llmsim.Config{Latency: 800 * time.Millisecond})
		p := e.pipeline(matrixPipeline(1, 1, ""))
		rep, err := e.produce(p, csvRows(8, nil), input.CSV)
		if err != nil {
			t.Fatal(err)
		}
		stop := e.startWorker(workerOpts{concurrency: 8})
		waitInFlight(t, e, 8)
		stop()
		e.startCollector("")
		sum := e.waitSummary(rep.Run, 30*time.Second)
		if sum.Stats.RowsOK != 8 {
			t.Fatalf("%d rows ok, want 8: the drained calls' results were lost", sum.Stats.RowsOK)
		}
		if st := e.sim.Stats(); st.Requests != 8 {
			t.Fatalf("llmsim saw %d calls, want 8 (no job retried after the drain)", st.Requests)
		}
	})
	t.Run("past the drain timeout jobs are NAKed, not left to AckWait", func(t *testing.T) {
		// Calls that would take 10 minutes, and an AckWait of 10 minutes: a drained job
		// that was not NAKed would come back only after the test's timeout.
		e := setup(t, llmsim.Config{Latency: 10 * time.Minute})
		e.topo.AckWait = 10 * time.Minute
		p := e.pipeline(matrixPipeline(1, 1, ""))
		rep, err := e.produce(p, csvRows(4, nil), input.CSV)
		if err != nil {
			t.Fatal(err)
		}
		stop := e.startWorker(workerOpts{concurrency: 4}) // drain timeout 5 s in tests
		waitInFlight(t, e, 4)
		began := time.Now()
		stop()
		if d := time.Since(began); d > 2*time.Minute {
			t.Fatalf("drain took %s: it waited for the calls instead of the 5 s drain timeout", d)
		}
		lat := 10 * time.Millisecond
		if err := e.sim.Update(llmsim.Update{Latency: &lat}); err != nil {
			t.Fatal(err)
		}
		e.startWorker(workerOpts{concurrency: 4})
		e.startCollector("")
		sum := e.waitSummary(rep.Run, 2*time.Minute)
		if sum.Stats.RowsOK != 4 {
			t.Fatalf("%d rows ok, want 4", sum.Stats.RowsOK)
		}
	})
	t.Run("a job fetched ahead and not yet called goes back at once", func(t *testing.T) {
		// One slot: a call in flight and a job in the reserve waiting for its slot.
		// Draining finishes the call and gives the waiting job back uncalled: NAKed,
		// so the next worker has it at once (an AckWait of 10 minutes: a job kept
		// would not come back within the test's time).
		e := setup(t, llmsim.Config{Latency: 800 * time.Millisecond})
		e.topo.AckWait = 10 * time.Minute
		ctx := context.Background()
		rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(3, nil), input.CSV)
		if err != nil {
			t.Fatal(err)
		}
		cons := e.jobConsumer(rep.Run)
		stop := e.startWorker(workerOpts{concurrency: 1})
		waitInFlight(t, e, 1)
		waitFor(t, 10*time.Second, "a second job in the reserve", func() bool {
			info, err := cons.Info(ctx)
			return err == nil && info.NumAckPending == 2
		})
		stop()
		if n := e.sim.Stats().Requests; n != 1 {
			t.Fatalf("llmsim answered %d calls before the drain ended, want 1: the waiting job was called", n)
		}
		e.startWorker(workerOpts{concurrency: 1})
		e.startCollector("")
		sum := e.waitSummary(rep.Run, time.Minute)
		if sum.Stats.RowsOK != 3 {
			t.Fatalf("%d rows ok, want 3", sum.Stats.RowsOK)
		}
		if n := e.sim.Stats().Requests; n != 3 {
			t.Fatalf("llmsim answered %d calls for 3 jobs, want one each", n)
		}
	})
}
