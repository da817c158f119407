package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
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
	s, err := StartStack(bin, dir, []string{"--latency", "20ms"})
	if err != nil {
		return rep, err
	}
	defer s.Stop()
	cfg, err := s.WriteWorkerConfig("    throttle: {start_rate: 50, min_rate: 10, max_rate: 200}\n")
	if err != nil {
		return rep, err
	}
	if err := s.StartWorker(cfg, "--concurrency", "8"); err != nil {
		return rep, err
	}
	for _, name := range []string{"collector-a", "collector-b"} {
		if _, err := s.start(name, "--out", filepath.Join(dir, "out"), "--ops-addr", "", "--name", name); err != nil {
			return rep, err
		}
	}
	nc, js, err := queue.ConnectJetStream(s.NATSURL, "bench-takeover", zerolog.Nop())
	if err != nil {
		return rep, err
	}
	defer nc.Close()
	pipeline, input, err := writeInput(dir, chaosPipeline(2), rows)
	if err != nil {
		return rep, err
	}
	run := fmt.Sprintf("takeover-%d", time.Now().UnixNano()%1e9)
	if _, err := s.ProduceRun(ctx, pipeline, input, run); err != nil {
		return rep, err
	}
	out := filepath.Join(dir, "out", run)
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
	kv, err := js.KeyValue(ctx, lease.Bucket)
	if err != nil {
		return rep, err
	}
	e, err := kv.Get(ctx, "collector")
	if err != nil {
		return rep, fmt.Errorf("read the collector lease: %w", err)
	}
	active := string(e.Value())
	killed := time.Now()
	if err := s.Kill9(active); err != nil {
		return rep, err
	}
	for {
		e, err := kv.Get(ctx, "collector")
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
	if _, err := s.WaitSummary(wctx, run); err != nil {
		return rep, err
	}
	return rep, checkRows(out, rows, 2, &rep.ChaosReport)
}
