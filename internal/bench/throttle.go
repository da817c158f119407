package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// ThrottleConfig sizes the throttle benchmark.
type ThrottleConfig struct {
	Bin, Dir    string
	Fleets      []Shape  // fleet shapes (workers x slots)
	Runs        int      // runs per cell; the table keeps the worst
	NaiveRuns   int      // runs per cell of the naive baseline (0 = Runs)
	Modes       []string // fleet, naive
	Warmup      time.Duration
	Measure     time.Duration
	RPS         float64
	Burst       int
	Latency     time.Duration
	Concurrency int
	// IdleFor is how long the fleet's idle CPU is measured before the run (default 5 s).
	IdleFor time.Duration
	Log     io.Writer
}

// Cell is one run's outcome.
type Cell struct {
	Mode      string
	Shape     Shape
	Workers   int
	Run       int
	Goodput   float64 // answered calls per second in the window / limit
	Share429  float64 // 429 answers / all answers in the window
	Calls     int
	Completed bool
	Wall      time.Duration
	Weight    WorkerWeight
	Traffic   Traffic // the throttle's core-NATS traffic in the window
	// PerSecond is ok/429 answers per second from the first request to the window's end
	// (where goodput was lost).
	PerSecond string
	// Load is the machine's 1-minute load average at the window's end: 64 worker
	// processes on 2 cores beside other work miss their slots, and the figures with them.
	Load float64
}

func (c ThrottleConfig) sim(extra ...string) []string {
	return simArgs(c.RPS, c.Burst, c.Latency, extra...)
}

// simArgs are llmsim's arguments for a token-bucket limit and a latency.
func simArgs(rps float64, burst int, latency time.Duration, extra ...string) []string {
	return append([]string{"--rps", fmt.Sprint(rps), "--burst", fmt.Sprint(burst), "--latency", latency.String()}, extra...)
}

const benchPipeline = `llm: {deployment: default, model: bench}
output_fields:
  answer: {type: string}
queries:
  - name: q
    template: "Answer about {{ row.text }}; reply in json."
`

// window counts answers received in [from, to).
func window(reqs []llmsim.RequestLog, from, to time.Time) (ok, limited, total int) {
	for _, r := range reqs {
		if r.Received.Before(from) || !r.Received.Before(to) {
			continue
		}
		total++
		switch {
		case r.Status == 200 && r.Fault == "":
			ok++
		case r.Status == 429:
			limited++
		}
	}
	return ok, limited, total
}

// loadAverage is the 1-minute load average (/proc/loadavg), -1 where unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	var l float64
	if _, err := fmt.Sscan(string(b), &l); err != nil {
		return -1
	}
	return l
}

// perSecond is "ok/429" for each of n seconds from from.
func perSecond(reqs []llmsim.RequestLog, from time.Time, n int) []string {
	out := make([]string, 0, n)
	for sec := range n {
		at := from.Add(time.Duration(sec) * time.Second)
		ok, lim, _ := window(reqs, at, at.Add(time.Second))
		out = append(out, fmt.Sprintf("%d/%d", ok, lim))
	}
	return out
}

func firstRequest(reqs []llmsim.RequestLog) time.Time {
	var t time.Time
	for _, r := range reqs {
		if t.IsZero() || r.Received.Before(t) {
			t = r.Received
		}
	}
	return t
}

// upTimeout bounds the wait for a fleet's first heartbeats: 64 processes start slowly
// on 2 cores.
func upTimeout(workers int) time.Duration {
	return 30*time.Second + time.Duration(workers)*500*time.Millisecond
}

// runOnce runs one fleet shape in one mode on a fresh stack: the fleet idles for
// IdleFor (its idle weight), then works through rows for the warm-up and the window.
func (c ThrottleConfig) runOnce(ctx context.Context, mode string, sh Shape, run int) (Cell, error) {
	cell := Cell{Mode: mode, Shape: sh, Workers: sh.Workers(), Run: run}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir := filepath.Join(c.Dir, fmt.Sprintf("%s-%s-r%d", mode, sh, run))
	fs, err := startFleetStack(ctx, c.Bin, dir, c.sim(), sh, mode, "", "--throttle", mode)
	if err != nil {
		return cell, err
	}
	defer fs.Stop()
	s, tw, names := fs.Stack, fs.tw, fs.names
	probe := fleetProbe{s: s, names: names}
	if cell.Weight.IdleCPU, cell.Weight.IdleRSS, err = probe.idle(ctx, cmp.Or(c.IdleFor, 5*time.Second)); err != nil {
		return cell, fmt.Errorf("idle weight: %w", err)
	}
	rows := int(c.RPS * (c.Warmup + c.Measure + 5*time.Second).Seconds())
	pipeline, input, err := writeInput(dir, benchPipeline, rows)
	if err != nil {
		return cell, err
	}
	start := time.Now()
	prod := s.produceAsync(ctx, pipeline, input)
	t0, err := s.waitFirstRequest(ctx, time.Minute)
	if err != nil {
		return cell, err
	}
	if err := sleepCtx(ctx, time.Until(t0.Add(c.Warmup))); err != nil {
		return cell, err
	}
	mark := tw.mark()
	if cell.Weight.RunCPU, cell.Weight.RunRSS, err = probe.window(ctx, t0.Add(c.Warmup+c.Measure)); err != nil {
		return cell, fmt.Errorf("run weight: %w", err)
	}
	cell.Traffic = trafficBetween(mark, tw.mark(), len(names))
	cell.Load = loadAverage()
	if _, cell.Completed, err = s.waitProduced(ctx, prod, 3*(c.Warmup+c.Measure)+time.Minute); err != nil {
		return cell, err
	}
	cell.Wall = time.Since(start)
	reqs, err := s.Requests()
	if err != nil {
		return cell, err
	}
	first := firstRequest(reqs)
	from := first.Add(c.Warmup)
	ok, lim, total := window(reqs, from, from.Add(c.Measure))
	cell.PerSecond = strings.Join(perSecond(reqs, first, int((c.Warmup+c.Measure).Seconds())), " ")
	cell.Calls = total
	cell.Goodput = float64(ok) / c.Measure.Seconds() / c.RPS
	if total > 0 {
		cell.Share429 = float64(lim) / float64(total)
	}
	return cell, nil
}

// Throttle runs every (mode, fleet shape, run) cell and returns them all.
func Throttle(ctx context.Context, c ThrottleConfig) ([]Cell, error) {
	var cells []Cell
	for _, mode := range c.Modes {
		runs := c.Runs
		if mode == "naive" && c.NaiveRuns > 0 {
			runs = c.NaiveRuns
		}
		for _, sh := range c.Fleets {
			for run := 1; run <= runs; run++ {
				cell, err := c.runOnce(ctx, mode, sh, run)
				if err != nil {
					return cells, fmt.Errorf("%s %s run %d: %w", mode, sh, run, err)
				}
				fmt.Fprintln(c.Log, cell)
				cells = append(cells, cell)
			}
		}
	}
	return cells, nil
}

// String is the cell's log line.
func (c Cell) String() string {
	w := c.Weight
	return fmt.Sprintf("%-6s %s (W=%d) run %d: goodput %5.1f %% of the limit, 429s %5.1f %% of %d calls, completed %v, wall %s, load %.1f; "+
		"worker RSS MiB med/max idle %.1f/%.1f run %.1f/%.1f; worker CPU %% of a core med/max idle %.2f/%.2f run %.1f/%.1f; "+
		"throttle traffic %.0f msgs/s, %.0f B/s, %.0f deliveries/s; ok/429 per second: %s",
		c.Mode, c.Shape, c.Workers, c.Run, 100*c.Goodput, 100*c.Share429, c.Calls, c.Completed, c.Wall.Round(time.Second), c.Load,
		w.IdleRSS.Med, w.IdleRSS.Max, w.RunRSS.Med, w.RunRSS.Max, 100*w.IdleCPU.Med, 100*w.IdleCPU.Max, 100*w.RunCPU.Med, 100*w.RunCPU.Max,
		c.Traffic.MsgsPerSec, c.Traffic.BytesPerSec, c.Traffic.DeliveriesPerSec, c.PerSecond)
}

// cellKey groups a cell's runs.
type cellKey struct{ mode, shape string }

// worstCells folds the runs of each (mode, shape): the worst goodput and 429 share, the
// heaviest worker, the most traffic. Keys are sorted by mode, workers, slots, shape.
func worstCells(cells []Cell) ([]cellKey, map[cellKey]Cell) {
	worst := map[cellKey]Cell{}
	var keys []cellKey
	for _, c := range cells {
		k := cellKey{c.Mode, c.Shape.String()}
		cur, ok := worst[k]
		if !ok {
			keys = append(keys, k)
			cur = c
		}
		cur.Goodput = min(cur.Goodput, c.Goodput)
		cur.Share429 = max(cur.Share429, c.Share429)
		cur.Completed = cur.Completed && c.Completed
		cur.Run = max(cur.Run, c.Run)
		cur.Weight = cur.Weight.worse(c.Weight)
		cur.Traffic = Traffic{max(cur.Traffic.MsgsPerSec, c.Traffic.MsgsPerSec), max(cur.Traffic.BytesPerSec, c.Traffic.BytesPerSec),
			max(cur.Traffic.DeliveriesPerSec, c.Traffic.DeliveriesPerSec)}
		worst[k] = cur
	}
	sort.SliceStable(keys, func(i, j int) bool {
		a, b := worst[keys[i]], worst[keys[j]]
		switch {
		case a.Mode != b.Mode:
			return a.Mode < b.Mode
		case a.Workers != b.Workers:
			return a.Workers < b.Workers
		case a.Shape.Slots() != b.Shape.Slots():
			return a.Shape.Slots() < b.Shape.Slots()
		}
		return keys[i].shape < keys[j].shape
	})
	return keys, worst
}

// Table renders the worst run per (mode, shape) as Markdown.
func Table(cells []Cell) string {
	keys, worst := worstCells(cells)
	var b strings.Builder
	b.WriteString("| throttle | fleet (workers x slots) | workers | runs | worst goodput (% of limit) | worst 429 share | every row completed | worker RSS (MiB, max) | idle CPU per worker (% of a core) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		c := worst[k]
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %.1f %% | %.1f %% | %v | %.1f | med %.2f, max %.2f |\n", k.mode, k.shape, c.Workers, c.Run,
			100*c.Goodput, 100*c.Share429, c.Completed, max(c.Weight.RunRSS.Max, c.Weight.IdleRSS.Max), 100*c.Weight.IdleCPU.Med, 100*c.Weight.IdleCPU.Max)
	}
	return b.String()
}

// TrafficTable renders the fleet throttle's core-NATS traffic per shape (the highest
// of the runs) as Markdown; naive fleets send none and are left out.
func TrafficTable(cells []Cell) string {
	keys, worst := worstCells(cells)
	var b strings.Builder
	b.WriteString("fleet traffic by W (core NATS mq.throttle.>, the measurement window, highest of the runs)\n\n")
	b.WriteString("| fleet (workers x slots) | workers | published msgs/s | published bytes/s | deliveries/s (published x W) |\n|---|---|---|---|---|\n")
	for _, k := range keys {
		if k.mode != "fleet" {
			continue
		}
		c := worst[k]
		fmt.Fprintf(&b, "| %s | %d | %.0f | %.0f | %.0f |\n", k.shape, c.Workers, c.Traffic.MsgsPerSec, c.Traffic.BytesPerSec, c.Traffic.DeliveriesPerSec)
	}
	return b.String()
}

// AdaptResult is the outcome of the limit-change scenario.
type AdaptResult struct {
	Share429AfterDrop float64       // 429 share over [t1+5 s, t1+35 s] after 50 -> 20
	RecoverAfterRise  time.Duration // first second with goodput >= 90 % of 50 after 20 -> 50 (-1: never in 60 s)
	PerSecond         []string      // ok/429 per second after the rise
	PerSecondDrop     []string      // ok/429 per second after the drop
}

// Adapt runs a fleet of shape sh while the limit goes 50 -> 20 (at t1) -> 50 (at t2).
func Adapt(ctx context.Context, c ThrottleConfig, sh Shape, t1, t2, tail time.Duration) (AdaptResult, error) {
	var res AdaptResult
	dir := filepath.Join(c.Dir, fmt.Sprintf("adapt-%s", sh))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	s, err := StartStack(c.Bin, dir, c.sim())
	if err != nil {
		return res, err
	}
	defer s.Stop()
	cfg, err := s.WriteWorkerConfig("")
	if err != nil {
		return res, err
	}
	if _, err := s.startFleet(cfg, sh); err != nil {
		return res, err
	}
	if err := s.StartCollector(); err != nil {
		return res, err
	}
	rows := int(50*t1.Seconds() + 20*(t2-t1).Seconds() + 50*tail.Seconds() + 200)
	pipeline, input, err := writeInput(dir, benchPipeline, rows)
	if err != nil {
		return res, err
	}
	// The producer is flow-controlled (it stays --max-ahead rows ahead of the collector),
	// so it runs for most of the scenario: in the background.
	prodErr := make(chan error, 1)
	go func() {
		_, err := s.Produce(ctx, pipeline, input)
		prodErr <- err
	}()
	t0, err := s.waitFirstRequest(ctx, time.Minute)
	if err != nil {
		return res, err
	}
	sleepUntil(ctx, t0.Add(t1))
	if err := s.Admin(`{"rps":20}`); err != nil {
		return res, err
	}
	drop := time.Now()
	sleepUntil(ctx, t0.Add(t2))
	if err := s.Admin(`{"rps":50}`); err != nil {
		return res, err
	}
	rise := time.Now()
	sleepUntil(ctx, rise.Add(tail))
	reqs, err := s.Requests()
	if err != nil {
		return res, err
	}
	if err := <-prodErr; err != nil {
		return res, err
	}
	_, lim, total := window(reqs, drop.Add(5*time.Second), drop.Add(35*time.Second))
	if total > 0 {
		res.Share429AfterDrop = float64(lim) / float64(total)
	}
	for sec, s := range perSecond(reqs, drop, int(rise.Sub(drop).Seconds())) {
		res.PerSecondDrop = append(res.PerSecondDrop, fmt.Sprintf("%d:%s", sec, s))
	}
	res.RecoverAfterRise = -1
	for sec := 0; sec < int(tail.Seconds()); sec++ {
		from := rise.Add(time.Duration(sec) * time.Second)
		ok, lim, _ := window(reqs, from, from.Add(time.Second))
		res.PerSecond = append(res.PerSecond, fmt.Sprintf("%d:%d/%d", sec, ok, lim))
		if res.RecoverAfterRise < 0 && ok >= 45 {
			res.RecoverAfterRise = time.Duration(sec+1) * time.Second
		}
	}
	return res, nil
}

func sleepUntil(ctx context.Context, t time.Time) {
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(t)):
	}
}
