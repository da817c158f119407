package e2e

import (
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
)

func waitInFlight(t *testing.T, e *env, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
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
		began := time.Now()
		stop()
		if d := time.Since(began); d > 3*time.Second {
			t.Fatalf("drain took %s, want about one call (800ms)", d)
		}
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
		e := setup(t, llmsim.Config{Latency: 30 * time.Second})
		p := e.pipeline(matrixPipeline(1, 1, ""))
		rep, err := e.produce(p, csvRows(4, nil), input.CSV)
		if err != nil {
			t.Fatal(err)
		}
		stop := e.startWorker(workerOpts{concurrency: 4}) // drain timeout 5 s in tests
		waitInFlight(t, e, 4)
		began := time.Now()
		stop()
		if d := time.Since(began); d > 8*time.Second {
			t.Fatalf("drain took %s, want about the 5 s drain timeout", d)
		}
		lat := 10 * time.Millisecond
		if err := e.sim.Update(llmsim.Update{Latency: &lat}); err != nil {
			t.Fatal(err)
		}
		e.startWorker(workerOpts{concurrency: 4})
		e.startCollector("")
		restarted := time.Now()
		e.waitSummary(rep.Run, 30*time.Second)
		if d := time.Since(restarted); d > 4*time.Second {
			t.Fatalf("the NAKed jobs took %s to complete elsewhere, want well under AckWait (5 s)", d)
		}
	})
}
