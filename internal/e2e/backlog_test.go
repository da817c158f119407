package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
)

// Issue 10, acceptance: the backlog metric (mq_jobs_backlog, exported by the active
// collector) rises with queued jobs and does not count jobs held back by a throttle
// delay: every call is refused with a 429 and a Retry-After of a minute, so the worker
// NAKs each job with that delay; those jobs are still queued, and not backlog.
func TestTheBacklogCountsQueuedJobsNotThoseHeldBack(t *testing.T) {
	e := setup(t, llmsim.Config{Faults: llmsim.Faults{llmsim.Fault429: 100}, InjectedRetryAfter: time.Minute})
	c, err := collector.New(e.js, collector.Config{OutDir: e.out, Topology: e.topo, FlushInterval: 50 * time.Millisecond,
		BacklogInterval: 20 * time.Millisecond}, e.log)
	if err != nil {
		t.Fatal(err)
	}
	e.run("collector", c.Run)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Collectors()...)
	backlog := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "mq_jobs_backlog" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "default" {
					return m.GetGauge().GetValue()
				}
			}
		}
		return -1 // no series
	}

	const rows = 20
	p := e.pipeline(matrixPipeline(1, 1, "max_capacity_retry_seconds: 600\n"))
	rep, err := e.produce(p, csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	// No worker yet: the run's job consumer is made as a worker makes it when the run
	// opens.
	ctx := context.Background()
	cons := e.jobConsumer(rep.Run)
	t.Run("the backlog is the number of jobs queued", func(t *testing.T) {
		waitFor(t, 20*time.Second, "mq_jobs_backlog{deployment=default} 20", func() bool { return backlog() == rows })
	})

	e.startWorker(workerOpts{concurrency: rows})
	t.Run("jobs held back by a 429's Retry-After are not counted", func(t *testing.T) {
		waitFor(t, 30*time.Second, "every job called and held back", func() bool {
			info, err := cons.Info(ctx)
			return err == nil && info.NumPending == 0 && info.NumAckPending == rows && e.sim.Stats().ByStatus[429] >= rows
		})
		waitFor(t, 10*time.Second, "mq_jobs_backlog{deployment=default} 0", func() bool { return backlog() == 0 })
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending != rows {
			t.Errorf("%d jobs held back, want %d: the jobs must still be queued", info.NumAckPending, rows)
		}
	})
}
