package local

import (
	"context"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// Snapshot is a local run's progress at one moment.
type Snapshot struct {
	Run string
	// Rows is the input's record count; Published the rows the producer has put on the
	// bus in this attempt; Emitted, OK and Failed the rows the collector has written
	// (over every attempt of the run).
	Rows, Published, Emitted, OK, Failed int
	// Calls and Capacity are the model calls started and the capacity answers (429,
	// 503, 529) seen in this attempt.
	Calls, Capacity int64
	// CallRate is the calls per second since the previous snapshot.
	CallRate float64
	// ETA is the time left at the rate rows were written in this attempt (0: unknown).
	ETA     time.Duration
	Elapsed time.Duration
	// Done: the collector has written every row.
	Done bool
	// Blocked says why the run's calls wait, when a deployment's breaker is open (a
	// bad key, quota spent: deployment-wide errors; the jobs wait, retried every 15 s):
	// "deployment default: status 401 invalid_api_key: ...". Empty otherwise.
	Blocked string
}

// report calls Config.Progress every ProgressEvery until ctx ends.
func (r *localRun) report(ctx context.Context) {
	every := r.cfg.ProgressEvery
	if every <= 0 {
		every = DefaultProgressEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var prev *Snapshot
	first := -1 // rows written when this attempt began
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := r.snapshot(ctx, prev)
		if first < 0 {
			first = s.Emitted
		}
		if done := s.Emitted - first; done > 0 && s.Rows > s.Emitted && s.Blocked == "" {
			s.ETA = time.Duration(float64(s.Rows-s.Emitted) / float64(done) * float64(s.Elapsed)).Round(time.Second)
		}
		r.cfg.Progress(s)
		prev = &s
	}
}

// snapshot reads the run's status and the worker's counters; prev (nil for none) is
// the snapshot the call rate is measured from.
func (r *localRun) snapshot(ctx context.Context, prev *Snapshot) Snapshot {
	s := Snapshot{Run: r.cfg.Run, Rows: r.total, Published: int(r.published.Load()), Elapsed: time.Since(r.started)}
	if st, err := runStatus(ctx, r.js, r.cfg.Run); err == nil && st != nil {
		s.Emitted, s.OK, s.Failed, s.Done = st.Emitted, st.OK, st.Failed, st.Finished
		if st.Total > 0 {
			s.Rows = st.Total
		}
	}
	s.Calls, s.Capacity = r.counters()
	if !s.Done {
		s.Blocked = r.blocked(ctx)
	}
	switch {
	case prev != nil:
		if dt := (s.Elapsed - prev.Elapsed).Seconds(); dt > 0 {
			s.CallRate = float64(s.Calls-prev.Calls) / dt
		}
	case s.Elapsed > 0: // the first or the last: the average of this attempt
		s.CallRate = float64(s.Calls) / s.Elapsed.Seconds()
	}
	return s
}

// blocked describes the open breakers of the command's deployments ("" for none).
func (r *localRun) blocked(ctx context.Context) string {
	kv, err := r.js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		return ""
	}
	var out []string
	for _, d := range r.cfg.Deployments {
		if b, ok := status.OpenBreaker(ctx, kv, d.LLM.Alias); ok {
			out = append(out, status.BlockedReason(d.LLM.Alias, b))
		}
	}
	return strings.Join(out, "; ")
}

// counters sums the worker's calls and capacity answers over its deployments.
func (r *localRun) counters() (calls, capacity int64) {
	fams, err := r.metrics.Gather()
	if err != nil {
		return 0, 0
	}
	sum := func(f *dto.MetricFamily) int64 {
		var n float64
		for _, m := range f.GetMetric() {
			n += m.GetCounter().GetValue()
		}
		return int64(n)
	}
	for _, f := range fams {
		switch f.GetName() {
		case "mq_worker_calls_total":
			calls = sum(f)
		case "mq_worker_capacity_signals_total":
			capacity = sum(f)
		}
	}
	return calls, capacity
}
