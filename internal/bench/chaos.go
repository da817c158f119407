package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/multiquery/multiquery/internal/sink"
)

// ChaosConfig sizes a chaos run.
type ChaosConfig struct {
	Bin, Dir       string
	Rows, Queries  int
	Workers        int
	Seed           uint64
	KillEvery      time.Duration // a random worker is kill -9'd (and restarted) this often
	CollectorKills int           // kill -9 + restart of the collector, spread over the run
	NATSKills      int           // kill -9 + restart of nats-server on the same port and store
	Faults         []string      // llmsim --fault KIND=PCT
	// Latency is llmsim's base latency (default 20 ms, plus up to 30 ms of jitter). A
	// short run needs it longer, so that the run outlasts its progress-timed faults.
	Latency time.Duration
	Timeout time.Duration
	// Cluster runs a 3-node JetStream cluster (streams with 3 replicas); NATSKills then
	// kill -9 one node each, which stays down.
	Cluster bool
	Log     io.Writer
}

// ChaosReport is what a chaos run checks and measures.
type ChaosReport struct {
	RowsIn, RowsOK, RowsFailed       int
	Missing, Duplicates, PartialRows int
	Calls, ExtraCalls                int64
	WorkerKills, CollectorKills      int
	// CollectorRestarts counts collectors that exited on their own (a lost lease after
	// a nats-server kill) and were started again: the collector-loss path, like a kill.
	CollectorRestarts       int
	NATSKills, ProducerRuns int
	Wall                    time.Duration
}

// Violations lists what broke the promises (nothing lost, nothing doubled, never partial).
func (r ChaosReport) Violations() []string {
	var v []string
	if r.RowsOK+r.RowsFailed != r.RowsIn+r.Duplicates-r.Missing || r.Missing > 0 {
		v = append(v, fmt.Sprintf("rows in %d, rows out %d (%d missing)", r.RowsIn, r.RowsOK+r.RowsFailed, r.Missing))
	}
	if r.Duplicates > 0 {
		v = append(v, fmt.Sprintf("%d duplicate rows", r.Duplicates))
	}
	if r.PartialRows > 0 {
		v = append(v, fmt.Sprintf("%d partial rows", r.PartialRows))
	}
	return v
}

func (r ChaosReport) String() string {
	return fmt.Sprintf("rows in %d, out %d (ok %d, failed %d), missing %d, duplicates %d, partial %d; calls %d (%d beyond one per job); kills: %d workers, %d collector, %d nats; producer runs %d; wall %s",
		r.RowsIn, r.RowsOK+r.RowsFailed, r.RowsOK, r.RowsFailed, r.Missing, r.Duplicates, r.PartialRows, r.Calls, r.ExtraCalls,
		r.WorkerKills, r.CollectorKills, r.NATSKills, r.ProducerRuns, r.Wall.Round(time.Second))
}

func chaosPipeline(queries int) string {
	var b strings.Builder
	b.WriteString("llm: {deployment: default, model: chaos}\nmax_attempts: 4\nmax_capacity_retry_seconds: 600\n")
	b.WriteString("output_fields:\n  echo: {type: string}\n  score: {type: integer}\nqueries:\n")
	for q := range queries {
		fmt.Fprintf(&b, "  - {name: q%d, template: \"Rate {{ row.text }} [[mark:{{ row.id }}.q%d]] in json.\"}\n", q+1, q+1)
	}
	return b.String()
}

// Chaos runs the whole system while killing its processes, then checks the output.
func Chaos(ctx context.Context, c ChaosConfig) (ChaosReport, error) {
	rep := ChaosReport{RowsIn: c.Rows}
	rnd := rand.New(rand.NewPCG(c.Seed, 99))
	start := time.Now()
	if c.Latency <= 0 {
		c.Latency = 20 * time.Millisecond
	}
	sim := []string{"--latency", c.Latency.String(), "--jitter", "30ms", "--injected-retry-after", "100ms", "--seed", fmt.Sprint(c.Seed)}
	for _, f := range c.Faults {
		sim = append(sim, "--fault", f)
	}
	start2 := StartStack
	if c.Cluster {
		start2 = StartClusterStack
	}
	s, err := start2(c.Bin, c.Dir, sim)
	if err != nil {
		return rep, err
	}
	defer s.Stop()
	// Injected (random) 429s must not pin the AIMD low: a high floor.
	cfg, err := s.WriteWorkerConfig("    throttle: {start_rate: 200, min_rate: 100, max_rate: 5000, max_pause: 1s}\n")
	if err != nil {
		return rep, err
	}
	workerArgs := []string{"--concurrency", "16", "--ack-wait", "3s", "--drain-timeout", "5s"}
	for range c.Workers {
		if err := s.StartWorker(cfg, workerArgs...); err != nil {
			return rep, err
		}
	}
	if err := s.StartCollector(); err != nil {
		return rep, err
	}
	pipeline, input, err := writeInput(c.Dir, chaosPipeline(c.Queries), c.Rows)
	if err != nil {
		return rep, err
	}
	run := fmt.Sprintf("chaos-%d-%d", c.Seed, time.Now().UnixNano()%1e9)

	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	// The producer may die with NATS: rerun it with the same run id until it succeeds.
	var wg sync.WaitGroup
	var prodErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			rep.ProducerRuns++
			_, err := s.ProduceRun(ctx, pipeline, input, run)
			if err == nil {
				return
			}
			fmt.Fprintf(c.Log, "chaos: producer failed (%v); rerunning with --run %s\n", err, run)
			time.Sleep(time.Second)
		}
		prodErr = ctx.Err()
	}()

	out := filepath.Join(c.Dir, "out", run)
	progress := func() int {
		a, _ := sink.CountLines(filepath.Join(out, sink.ResultsJSONL))
		b, _ := sink.CountLines(filepath.Join(out, sink.ErrorsJSONL))
		return a + b
	}
	done := func() bool {
		_, err := os.Stat(filepath.Join(out, sink.Summary))
		return err == nil
	}
	// NATS first: after a collector kill the standby waits out the lease TTL, then
	// catches up fast and could skip a later threshold.
	natsAt := spread(c.NATSKills, 0.12, 0.2)
	collectorAt := spread(c.CollectorKills, 0.3, 0.75)
	nextKill := time.Now().Add(c.KillEvery)
	for !done() {
		if ctx.Err() != nil {
			wg.Wait()
			return rep, fmt.Errorf("run %s not complete after %s (%d of %d rows out)", run, c.Timeout, progress(), c.Rows)
		}
		frac := float64(progress()) / float64(c.Rows)
		if s.Exited("collector") { // as an orchestrator would: restart what stopped
			fmt.Fprintf(c.Log, "chaos: the collector exited on its own; restarting it\n")
			rep.CollectorRestarts++
			if err := s.Restart("collector"); err != nil {
				return rep, err
			}
		}
		switch {
		case len(collectorAt) > 0 && frac >= collectorAt[0]:
			collectorAt = collectorAt[1:]
			rep.CollectorKills++
			fmt.Fprintf(c.Log, "chaos: kill -9 collector at %.0f %%\n", 100*frac)
			if err := s.Kill9("collector"); err != nil {
				return rep, err
			}
			time.Sleep(500 * time.Millisecond)
			if err := s.Restart("collector"); err != nil {
				return rep, err
			}
		case len(natsAt) > 0 && frac >= natsAt[0]:
			natsAt = natsAt[1:]
			rep.NATSKills++
			node := s.Nodes[(rep.NATSKills-1)%len(s.Nodes)]
			fmt.Fprintf(c.Log, "chaos: kill -9 %s at %.0f %%\n", node, 100*frac)
			if err := s.Kill9(node); err != nil {
				return rep, err
			}
			if !c.Cluster { // a single server comes back on the same port and store
				time.Sleep(2 * time.Second)
				if err := s.Restart(node); err != nil {
					return rep, err
				}
			}
		case time.Now().After(nextKill):
			nextKill = time.Now().Add(c.KillEvery)
			name := fmt.Sprintf("worker-%d", 1+rnd.IntN(c.Workers))
			rep.WorkerKills++
			fmt.Fprintf(c.Log, "chaos: kill -9 %s at %.0f %%\n", name, 100*frac)
			if err := s.Kill9(name); err != nil {
				return rep, err
			}
			time.Sleep(300 * time.Millisecond)
			if err := s.Restart(name); err != nil {
				return rep, err
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	if prodErr != nil {
		return rep, fmt.Errorf("producer: %w", prodErr)
	}
	rep.Wall = time.Since(start)
	if err := checkRows(out, c.Rows, c.Queries, &rep); err != nil {
		return rep, err
	}
	if reqs, err := s.Requests(); err == nil {
		rep.Calls = int64(len(reqs))
		rep.ExtraCalls = rep.Calls - int64(c.Rows*c.Queries)
	}
	return rep, nil
}

// spread returns n progress fractions evenly between lo and hi.
func spread(n int, lo, hi float64) []float64 {
	var out []float64
	for i := range n {
		if n == 1 {
			out = append(out, lo)
			break
		}
		out = append(out, lo+(hi-lo)*float64(i)/float64(n-1))
	}
	return out
}

// checkRows reads a run's outputs of the chaos pipeline (q1..qN with echo and score)
// and counts missing, duplicate and partial rows.
func checkRows(dir string, rows, queries int, rep *ChaosReport) error {
	var cols []string
	for q := range queries {
		for _, c := range []string{"_echo", "_score", "_usage", "_model"} {
			cols = append(cols, fmt.Sprintf("q%d%s", q+1, c))
		}
	}
	return checkRowCols(dir, rows, cols, rep)
}

// checkRowCols reads a run's results.jsonl and errors.jsonl and counts missing,
// duplicate and partial rows: a result row must hold every output column of cols and
// no _error, an error row none of them and an _error.
func checkRowCols(dir string, rows int, cols []string, rep *ChaosReport) error {
	seen := map[string]int{}
	for _, name := range []string{sink.ResultsJSONL, sink.ErrorsJSONL} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				f.Close()
				return fmt.Errorf("%s: a line is not JSON: %w", name, err)
			}
			id, _ := m["id"].(string)
			seen[id]++
			have := 0
			for _, c := range cols {
				if _, ok := m[c]; ok {
					have++
				}
			}
			_, hasErr := m["_error"]
			if name == sink.ResultsJSONL {
				rep.RowsOK++
				if have != len(cols) || hasErr {
					rep.PartialRows++
				}
			} else {
				rep.RowsFailed++
				if have != 0 || !hasErr {
					rep.PartialRows++
				}
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return err
		}
	}
	for i := range rows {
		switch n := seen[fmt.Sprintf("r%d", i)]; {
		case n == 0:
			rep.Missing++
		case n > 1:
			rep.Duplicates += n - 1
		}
	}
	return nil
}

var errViolations = errors.New("chaos: promises broken")

// CheckChaos returns an error listing the violations of a report, if any.
func CheckChaos(r ChaosReport) error {
	if v := r.Violations(); len(v) > 0 {
		return fmt.Errorf("%w: %s", errViolations, strings.Join(v, "; "))
	}
	return nil
}
