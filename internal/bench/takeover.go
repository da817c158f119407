package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/multiquery/multiquery/internal/sink"
)

// TakeoverReport is the outcome of the two-collector scenario.
type TakeoverReport struct {
	ChaosReport
	Takeover time.Duration // from the kill of the active collector to the standby holding the lease
}

// CollectorTakeover runs two collector processes on the same output directory, kill -9s
// the active one mid-run, and checks that the standby takes over with no gap and no
// duplicate.
func CollectorTakeover(ctx context.Context, bin, dir string, rows int) (TakeoverReport, error) {
	var rep TakeoverReport
	rep.RowsIn = rows
	tc, err := startTwoCollectors(bin, dir, "20ms", ThrottleYAML("{start_rate: 50, min_rate: 10, max_rate: 200}"), "bench-takeover", rows)
	if err != nil {
		return rep, err
	}
	defer tc.close()
	run := fmt.Sprintf("takeover-%d", time.Now().UnixNano()%1e9)
	if _, err := tc.s.ProduceRun(ctx, tc.pipeline, tc.input, run); err != nil {
		return rep, err
	}
	out := filepath.Join(tc.outDir, run)
	for {
		n, _ := sink.CountLines(filepath.Join(out, sink.ResultsJSONL))
		if n >= rows/3 {
			break
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := tc.openLease(ctx); err != nil {
		return rep, err
	}
	e, err := tc.lease.Get(ctx, "collector")
	if err != nil {
		return rep, fmt.Errorf("read the collector lease: %w", err)
	}
	active := string(e.Value())
	killed := time.Now()
	if err := tc.s.Kill9(active); err != nil {
		return rep, err
	}
	for {
		e, err := tc.lease.Get(ctx, "collector")
		if err == nil && string(e.Value()) != active {
			rep.Takeover = time.Since(killed)
			break
		}
		if time.Since(killed) > time.Minute {
			return rep, fmt.Errorf("no collector took over within a minute of killing %s", active)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := tc.s.WaitSummary(wctx, run); err != nil {
		return rep, err
	}
	return rep, checkRows(out, rows, 2, &rep.ChaosReport)
}
