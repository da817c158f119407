package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// FlowResult is the outcome of the flow-control run.
type FlowResult struct {
	Rows, Queries, MaxAhead int
	PeakJobs                uint64 // most messages MQ_JOBS held (sampled every 100 ms)
	Completed               bool
	Wall                    time.Duration
}

// Flow runs rows x queries through a fleet limited to rps with the producer at most
// maxAhead rows ahead of the collector, sampling how many jobs the stream holds.
func Flow(ctx context.Context, bin, dir string, rows, queries, maxAhead int, rps float64) (FlowResult, error) {
	res := FlowResult{Rows: rows, Queries: queries, MaxAhead: maxAhead}
	s, err := StartStack(bin, dir, []string{"--rps", fmt.Sprint(rps), "--burst", "5", "--latency", "20ms"})
	if err != nil {
		return res, err
	}
	defer s.Stop()
	if _, err := s.StartWorkers(2, "", "--concurrency", "32"); err != nil {
		return res, err
	}
	if err := s.StartCollector(); err != nil {
		return res, err
	}
	pipeline, input, err := writeInput(dir, chaosPipeline(queries), rows)
	if err != nil {
		return res, err
	}
	nc, js, err := queue.ConnectJetStream(s.NATSURL, "bench-flow", zerolog.Nop())
	if err != nil {
		return res, err
	}
	defer nc.Close()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for sctx.Err() == nil {
			if st, err := js.Stream(sctx, wire.StreamJobs); err == nil {
				if info, err := st.Info(sctx); err == nil && info.State.Msgs > res.PeakJobs {
					res.PeakJobs = info.State.Msgs
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "producer"), "--config", pipeline, "--input", input, "--max-ahead", fmt.Sprint(maxAhead), "--log-level", "warn")
	cmd.Env = append(os.Environ(), "MQ_PREFIX=", "NATS_URL="+s.NATSURL)
	out, err := cmd.Output()
	if err != nil {
		return res, fmt.Errorf("producer: %w: %s", err, out)
	}
	run := strings.TrimSuffix(strings.Fields(string(out))[1], ":")
	_, err = s.WaitSummary(ctx, run)
	res.Completed = err == nil
	res.Wall = time.Since(start)
	stop()
	return res, err
}
