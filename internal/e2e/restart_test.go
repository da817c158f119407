package e2e

import (
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
)

// The collector restarted mid-run (and NATS restarted too) resumes from its checkpoint:
// every row exactly once, none lost.
func TestCollectorRestartResumesWithoutDuplicatesOrGaps(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond})
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rep, err := e.produce(p, csvRows(200, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	tp := fastThrottle()
	tp.MaxRate, tp.StartRate, tp.MinRate = 200, 100, 50 // slow enough to stop half-way
	e.startWorker(workerOpts{concurrency: 8, throttle: &tp})
	stop := e.startCollector("")
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, _ := sink.CountLines(e.out + "/" + rep.Run + "/" + sink.ResultsJSONL)
		if n >= 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d rows emitted after 30s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	e.nats.Restart()
	e.startCollector("")
	e.waitSummary(rep.Run, 90*time.Second)
	rows := e.lines(rep.Run, sink.ResultsJSONL)
	ids := byID(rows)
	if len(rows) != 200 || len(ids) != 200 {
		t.Fatalf("got %d lines with %d distinct rows, want 200 and 200", len(rows), len(ids))
	}
}
