package bench

import (
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
	Workers     []int    // fleet sizes
	Runs        int      // runs per cell; the table keeps the worst
	NaiveRuns   int      // runs per cell of the naive baseline (0 = Runs)
	Modes       []string // fleet, naive
	Warmup      time.Duration
	Measure     time.Duration
	RPS         float64
	Burst       int
	Latency     time.Duration
	Concurrency int
	Log         io.Writer
}

// Cell is one run's outcome.
type Cell struct {
	Mode      string
	Workers   int
	Run       int
	Goodput   float64 // answered calls per second in the window / limit
	Share429  float64 // 429 answers / all answers in the window
	Calls     int
	Completed bool
	Wall      time.Duration
}

func (c ThrottleConfig) sim(extra ...string) []string {
	return append([]string{"--rps", fmt.Sprint(c.RPS), "--burst", fmt.Sprint(c.Burst), "--latency", c.Latency.String()}, extra...)
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

func firstRequest(reqs []llmsim.RequestLog) time.Time {
	var t time.Time
	for _, r := range reqs {
		if t.IsZero() || r.Received.Before(t) {
			t = r.Received
		}
	}
	return t
}

// runOnce runs one fleet of w workers in one mode on a fresh stack.
func (c ThrottleConfig) runOnce(ctx context.Context, mode string, w, run int) (Cell, error) {
	cell := Cell{Mode: mode, Workers: w, Run: run}
	dir := filepath.Join(c.Dir, fmt.Sprintf("%s-w%d-r%d", mode, w, run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return cell, err
	}
	s, err := StartStack(c.Bin, dir, c.sim())
	if err != nil {
		return cell, err
	}
	defer s.Stop()
	cfg, err := s.WriteWorkerConfig("")
	if err != nil {
		return cell, err
	}
	for range w {
		if err := s.StartWorker(cfg, "--throttle", mode, "--concurrency", fmt.Sprint(c.Concurrency)); err != nil {
			return cell, err
		}
	}
	if err := s.StartCollector(); err != nil {
		return cell, err
	}
	rows := int(c.RPS * (c.Warmup + c.Measure + 5*time.Second).Seconds())
	pipeline, input, err := writeInput(dir, benchPipeline, rows)
	if err != nil {
		return cell, err
	}
	start := time.Now()
	runID, err := s.Produce(ctx, pipeline, input)
	if err != nil {
		return cell, err
	}
	wctx, cancel := context.WithTimeout(ctx, 3*(c.Warmup+c.Measure)+time.Minute)
	defer cancel()
	_, werr := s.WaitSummary(wctx, runID)
	cell.Completed = werr == nil
	cell.Wall = time.Since(start)
	reqs, err := s.Requests()
	if err != nil {
		return cell, err
	}
	t0 := firstRequest(reqs).Add(c.Warmup)
	ok, lim, total := window(reqs, t0, t0.Add(c.Measure))
	cell.Calls = total
	cell.Goodput = float64(ok) / c.Measure.Seconds() / c.RPS
	if total > 0 {
		cell.Share429 = float64(lim) / float64(total)
	}
	return cell, nil
}

// Throttle runs every (mode, fleet size, run) cell and returns them all.
func Throttle(ctx context.Context, c ThrottleConfig) ([]Cell, error) {
	var cells []Cell
	for _, mode := range c.Modes {
		runs := c.Runs
		if mode == "naive" && c.NaiveRuns > 0 {
			runs = c.NaiveRuns
		}
		for _, w := range c.Workers {
			for run := 1; run <= runs; run++ {
				cell, err := c.runOnce(ctx, mode, w, run)
				if err != nil {
					return cells, fmt.Errorf("%s W=%d run %d: %w", mode, w, run, err)
				}
				fmt.Fprintf(c.Log, "%-6s W=%d run %d: goodput %5.1f %% of the limit, 429s %5.1f %% of %d calls, completed %v, wall %s\n",
					mode, w, run, 100*cell.Goodput, 100*cell.Share429, cell.Calls, cell.Completed, cell.Wall.Round(time.Second))
				cells = append(cells, cell)
			}
		}
	}
	return cells, nil
}

// Table renders the worst run per (mode, W) as Markdown.
func Table(cells []Cell) string {
	type key struct {
		mode string
		w    int
	}
	worst := map[key]Cell{}
	var keys []key
	for _, c := range cells {
		k := key{c.Mode, c.Workers}
		cur, ok := worst[k]
		if !ok {
			keys = append(keys, k)
			cur = c
		}
		cur.Goodput = min(cur.Goodput, c.Goodput)
		cur.Share429 = max(cur.Share429, c.Share429)
		cur.Completed = cur.Completed && c.Completed
		cur.Run = max(cur.Run, c.Run)
		worst[k] = cur
	}
	sort.SliceStable(keys, func(i, j int) bool {
		if keys[i].mode != keys[j].mode {
			return keys[i].mode < keys[j].mode
		}
		return keys[i].w < keys[j].w
	})
	var b strings.Builder
	b.WriteString("| throttle | workers | runs | worst goodput (% of limit) | worst 429 share | every row completed |\n|---|---|---|---|---|---|\n")
	for _, k := range keys {
		c := worst[k]
		fmt.Fprintf(&b, "| %s | %d | %d | %.1f %% | %.1f %% | %v |\n", k.mode, k.w, c.Run, 100*c.Goodput, 100*c.Share429, c.Completed)
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

// Adapt runs W workers while the limit goes 50 -> 20 (at t1) -> 50 (at t2).
func Adapt(ctx context.Context, c ThrottleConfig, w int, t1, t2, tail time.Duration) (AdaptResult, error) {
	var res AdaptResult
	dir := filepath.Join(c.Dir, fmt.Sprintf("adapt-w%d", w))
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
	for range w {
		if err := s.StartWorker(cfg, "--concurrency", fmt.Sprint(c.Concurrency)); err != nil {
			return res, err
		}
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
	var t0 time.Time
	for t0.IsZero() && ctx.Err() == nil {
		reqs, err := s.Requests()
		if err != nil {
			return res, err
		}
		t0 = firstRequest(reqs)
		time.Sleep(50 * time.Millisecond)
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
	for sec := 0; sec < int(rise.Sub(drop).Seconds()); sec++ {
		from := drop.Add(time.Duration(sec) * time.Second)
		ok, lim, _ := window(reqs, from, from.Add(time.Second))
		res.PerSecondDrop = append(res.PerSecondDrop, fmt.Sprintf("%d:%d/%d", sec, ok, lim))
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
