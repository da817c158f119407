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
	start := time.Now()
	if c.Latency <= 0 {
		c.Latency = 20 * time.Millisecond
	}
	s, err := startChaosStack(c)
	if err != nil {
		return rep, err
	}
	defer s.Stop()
	pipeline, input, err := writeInput(c.Dir, chaosPipeline(c.Queries), c.Rows)
	if err != nil {
		return rep, err
	}
	run := fmt.Sprintf("chaos-%d-%d", c.Seed, time.Now().UnixNano()%1e9)

	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	prod := produceUntilDone(ctx, s, pipeline, input, run, c.Log)
	k := newChaosKiller(c, s, &rep, filepath.Join(c.Dir, "out", run))
	if err := k.killUntilDone(ctx); err != nil {
		cancel()
		rep.ProducerRuns, _ = prod.wait()
		return rep, err
	}
	runs, prodErr := prod.wait()
	rep.ProducerRuns = runs
	if prodErr != nil {
		return rep, fmt.Errorf("producer: %w", prodErr)
	}
	rep.Wall = time.Since(start)
	if err := checkRows(k.out, c.Rows, c.Queries, &rep); err != nil {
		return rep, err
	}
	if reqs, err := s.Requests(); err == nil {
		rep.Calls = int64(len(reqs))
		rep.ExtraCalls = rep.Calls - int64(c.Rows*c.Queries)
	}
	return rep, nil
}

// startChaosStack starts nats-server (or a cluster), llmsim with c's faults, the
// workers and the collector; on error nothing is left running.
func startChaosStack(c ChaosConfig) (*Stack, error) {
	sim := []string{"--latency", c.Latency.String(), "--jitter", "30ms", "--injected-retry-after", "100ms", "--seed", fmt.Sprint(c.Seed)}
	for _, f := range c.Faults {
		sim = append(sim, "--fault", f)
	}
	startStack := StartStack
	if c.Cluster {
		startStack = StartClusterStack
	}
	s, err := startStack(c.Bin, c.Dir, sim)
	if err != nil {
		return nil, err
	}
	// Injected (random) 429s must not pin the AIMD low: a high floor.
	_, err = s.StartWorkers(c.Workers, ThrottleYAML("{start_rate: 200, min_rate: 100, max_rate: 5000, max_pause: 1s}"),
		"--concurrency", "16", "--ack-wait", "3s", "--drain-timeout", "5s")
	if err == nil {
		err = s.StartCollector()
	}
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// producerLoop is a producer run with the same run id again and again until one
// succeeds: the producer may die with NATS.
type producerLoop struct {
	done chan struct{}
	runs int
	err  error
}

func produceUntilDone(ctx context.Context, s *Stack, pipeline, input, run string, log io.Writer) *producerLoop {
	p := &producerLoop{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			p.runs++
			_, err := s.ProduceRun(ctx, pipeline, input, run)
			if err == nil {
				return
			}
			fmt.Fprintf(log, "chaos: producer failed (%v); rerunning with --run %s\n", err, run)
			time.Sleep(time.Second)
		}
		p.err = ctx.Err()
	}()
	return p
}

// wait returns how many times the producer ran, and ctx's error if none succeeded.
func (p *producerLoop) wait() (int, error) {
	<-p.done
	return p.runs, p.err
}

// chaosKiller kills processes as the run goes on: nats-server and the collector
// at progress thresholds, a random worker every KillEvery.
type chaosKiller struct {
	c                   ChaosConfig
	s                   *Stack
	rep                 *ChaosReport
	rnd                 *rand.Rand
	out                 string // the run's output directory
	natsAt, collectorAt []float64
	nextKill            time.Time
}

func newChaosKiller(c ChaosConfig, s *Stack, rep *ChaosReport, out string) *chaosKiller {
	return &chaosKiller{c: c, s: s, rep: rep, rnd: rand.New(rand.NewPCG(c.Seed, 99)), out: out,
		// NATS first: after a collector kill the standby waits out the lease TTL, then
		// catches up fast and could skip a later threshold.
		natsAt:      spread(c.NATSKills, 0.12, 0.2),
		collectorAt: spread(c.CollectorKills, 0.3, 0.75),
		nextKill:    time.Now().Add(c.KillEvery)}
}

// killUntilDone kills and restarts processes until the run's summary is written.
func (k *chaosKiller) killUntilDone(ctx context.Context) error {
	for {
		if _, err := os.Stat(filepath.Join(k.out, sink.Summary)); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("run %s not complete after %s (%d of %d rows out)", filepath.Base(k.out), k.c.Timeout, countRows(k.out), k.c.Rows)
		}
		if k.s.Exited("collector") { // as an orchestrator would: restart what stopped
			fmt.Fprintf(k.c.Log, "chaos: the collector exited on its own; restarting it\n")
			k.rep.CollectorRestarts++
			if err := k.s.Restart("collector"); err != nil {
				return err
			}
		}
		if err := k.step(k.progress()); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// progress is the run's share done: the larger of the rows out and the queries answered.
// Rows alone come out in jumps: a collector that reconnects after a nats-server restart
// writes every row completed meanwhile at once, and a threshold inside the jump (the
// collector's kill) would be skipped. Answered queries grow with the workers' calls.
func (k *chaosKiller) progress() float64 {
	frac := float64(countRows(k.out)) / float64(k.c.Rows)
	var st struct {
		OK int64 `json:"ok"`
	}
	if getJSON(k.s.SimURL+"/stats", &st) == nil {
		frac = max(frac, float64(st.OK)/float64(k.c.Rows*k.c.Queries))
	}
	return min(frac, 1) // calls paid twice after a kill count beyond the run
}

// step kills what is due at progress frac: the collector, a nats-server node, or a
// random worker, and restarts it (a cluster node stays down).
func (k *chaosKiller) step(frac float64) error {
	switch {
	case len(k.collectorAt) > 0 && frac >= k.collectorAt[0]:
		k.collectorAt = k.collectorAt[1:]
		k.rep.CollectorKills++
		return k.killAndRestart("collector", frac, 500*time.Millisecond)
	case len(k.natsAt) > 0 && frac >= k.natsAt[0]:
		k.natsAt = k.natsAt[1:]
		k.rep.NATSKills++
		node := k.s.Nodes[(k.rep.NATSKills-1)%len(k.s.Nodes)]
		if k.c.Cluster {
			return k.killAndRestart(node, frac, -1)
		}
		// A single server comes back on the same port and store.
		return k.killAndRestart(node, frac, 2*time.Second)
	case time.Now().After(k.nextKill):
		k.nextKill = time.Now().Add(k.c.KillEvery)
		k.rep.WorkerKills++
		return k.killAndRestart(fmt.Sprintf("worker-%d", 1+k.rnd.IntN(k.c.Workers)), frac, 300*time.Millisecond)
	}
	return nil
}

// killAndRestart kill -9s name and restarts it after downFor (never if downFor < 0).
func (k *chaosKiller) killAndRestart(name string, frac float64, downFor time.Duration) error {
	fmt.Fprintf(k.c.Log, "chaos: kill -9 %s at %.0f %%\n", name, 100*frac)
	if err := k.s.Kill9(name); err != nil {
		return err
	}
	if downFor < 0 {
		return nil
	}
	time.Sleep(downFor)
	return k.s.Restart(name)
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
