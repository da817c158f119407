package bench

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// StartConfig sizes the start-storm scenario: a fresh fleet runs the same job twice
// in a row, then a third time on new worker processes, and the 429s of each run are counted (does a cold fleet start with a storm
// of 429s, and does a warm one?).
type StartConfig struct {
	Bin, Dir string
	// Headers are llmsim's --ratelimit-headers modes: none, openai, azure.
	Headers []string
	Workers []int
	Slots   int // per worker
	Rows    int
	Queries int // per row
	Runs    int // repetitions, each on a fresh stack
	RPS     float64
	Burst   int
	Latency time.Duration
	// Throttle is the workers' throttle settings as a YAML flow map ("" for the
	// shipped defaults).
	Throttle string
	Log      io.Writer
}

// StartRun is one of the two runs on one stack.
type StartRun struct {
	Headers  string
	Fleet    Shape
	Rep      int // repetition (fresh stack)
	Run      int // 1: cold fleet, 2: the same job again on the same workers, 3: on new workers (only the KV memory is warm)
	Calls    int
	Limited  int // 429s
	Share429 float64
	Wall     time.Duration // producer start -> summary.json
	Rows     ChaosReport
	// PerSecond is ok/429 answers per second of the run (where the 429s came).
	PerSecond string
	Load      float64 // the 1-minute load average at the run's end
}

// Correct reports whether every row is answered once and none failed.
func (r StartRun) Correct() bool {
	return r.Rows.RowsOK == r.Rows.RowsIn && r.Rows.RowsFailed == 0 && r.Rows.Missing == 0 && r.Rows.Duplicates == 0 && r.Rows.PartialRows == 0
}

func (r StartRun) String() string {
	return fmt.Sprintf("start headers=%s %s rep %d run %d: %d calls, %d 429s (%.1f %%), wall %s, load %.1f, every row correct %v (%d ok, %d failed, %d missing, %d duplicate, %d partial); ok/429 per second: %s",
		r.Headers, r.Fleet, r.Rep, r.Run, r.Calls, r.Limited, 100*r.Share429, r.Wall.Round(10*time.Millisecond), r.Load, r.Correct(),
		r.Rows.RowsOK, r.Rows.RowsFailed, r.Rows.Missing, r.Rows.Duplicates, r.Rows.PartialRows, r.PerSecond)
}

// startPipeline has queries q1..qN, each a template over the row's text with an answer.
func startPipeline(queries int) (yaml string, cols []string) {
	var b strings.Builder
	b.WriteString("llm: {deployment: default, model: bench}\noutput_fields:\n  answer: {type: string}\nqueries:\n")
	for q := range queries {
		fmt.Fprintf(&b, "  - {name: q%d, template: \"Question %d about {{ row.text }}; reply in json.\"}\n", q+1, q+1)
		cols = append(cols, fmt.Sprintf("q%d_answer", q+1), fmt.Sprintf("q%d_usage", q+1), fmt.Sprintf("q%d_model", q+1))
	}
	return b.String(), cols
}

// headersArgs selects llmsim's rate-limit headers. azure is llmsim's default and is
// not passed, so that mode also runs on an llmsim without the flag.
func headersArgs(mode string) []string {
	if mode == "azure" {
		return nil
	}
	return []string{"--ratelimit-headers", mode}
}

// StartStorm runs every (headers, workers, repetition): two runs each.
func StartStorm(ctx context.Context, c StartConfig) ([]StartRun, error) {
	var out []StartRun
	for _, h := range c.Headers {
		for _, w := range c.Workers {
			for rep := 1; rep <= c.Runs; rep++ {
				runs, err := c.once(ctx, h, Shape{{w, c.Slots}}, rep)
				for _, r := range runs {
					fmt.Fprintln(c.Log, r)
				}
				out = append(out, runs...)
				if err != nil {
					return out, fmt.Errorf("start headers=%s W=%d rep %d: %w", h, w, rep, err)
				}
			}
		}
	}
	return out, nil
}

// once starts a fresh stack and fleet and runs the job twice, the second run after the
// first one's summary.
func (c StartConfig) once(ctx context.Context, headers string, sh Shape, rep int) ([]StartRun, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir := filepath.Join(c.Dir, fmt.Sprintf("start-%s-%s-r%d", headers, sh, rep))
	fs, err := startFleetStack(ctx, c.Bin, dir, simArgs(c.RPS, c.Burst, c.Latency, headersArgs(headers)...), sh, "fleet", c.Throttle)
	if err != nil {
		return nil, err
	}
	defer fs.Stop()
	s, tw, cfg, names := fs.Stack, fs.tw, fs.cfg, fs.names
	yaml, cols := startPipeline(c.Queries)
	pipeline, input, err := writeInput(dir, yaml, c.Rows)
	if err != nil {
		return nil, err
	}
	var runs []StartRun
	var starts []time.Time
	for run := 1; run <= 3; run++ {
		if run == 3 { // a fresh fleet of new worker processes: only the fleet's memory (KV) is warm
			for _, n := range names {
				if _, err := s.Signal(n, syscall.SIGTERM, 30*time.Second); err != nil {
					return runs, fmt.Errorf("stop %s: %w", n, err)
				}
			}
			if names, err = s.startFleet(cfg, sh); err != nil {
				return runs, err
			}
			if err := tw.waitUp(ctx, "fleet", names, upTimeout(len(names))); err != nil {
				return runs, err
			}
		}
		r := StartRun{Headers: headers, Fleet: sh, Rep: rep, Run: run}
		starts = append(starts, time.Now())
		id, err := c.runJob(ctx, s, pipeline, input)
		r.Wall = time.Since(starts[run-1])
		r.Load = loadAverage()
		if err != nil {
			return runs, fmt.Errorf("run %d: %w", run, err)
		}
		r.Rows.RowsIn = c.Rows
		if err := checkRowCols(filepath.Join(s.Dir, "out", id), c.Rows, cols, &r.Rows); err != nil {
			return runs, fmt.Errorf("run %d: %w", run, err)
		}
		runs = append(runs, r)
	}
	reqs, err := s.Requests()
	if err != nil {
		return runs, fmt.Errorf("read llmsim's request log: %w", err)
	}
	countStartRuns(reqs, starts, runs)
	return runs, nil
}

// runJob produces the job and waits for its summary.
func (c StartConfig) runJob(ctx context.Context, s *Stack, pipeline, input string) (string, error) {
	ideal := time.Duration(float64(c.Rows*c.Queries) / c.RPS * float64(time.Second))
	wctx, cancel := context.WithTimeout(ctx, 10*ideal+time.Minute)
	defer cancel()
	id, err := s.Produce(wctx, pipeline, input)
	if err != nil {
		return "", err
	}
	_, err = s.WaitSummary(wctx, id)
	return id, err
}

// countStartRuns splits the request log at each run's start (the runs follow one
// another) and counts every run's calls and 429s.
func countStartRuns(reqs []llmsim.RequestLog, starts []time.Time, runs []StartRun) {
	for i := range runs {
		from, to := starts[i], time.Now().Add(time.Hour)
		if i+1 < len(starts) {
			to = starts[i+1]
		}
		_, lim, total := window(reqs, from, to)
		runs[i].Calls, runs[i].Limited = total, lim
		if total > 0 {
			runs[i].Share429 = float64(lim) / float64(total)
		}
		var per []string
		for sec := from; sec.Before(to) && sec.Before(from.Add(runs[i].Wall+time.Second)); sec = sec.Add(time.Second) {
			ok, lim, _ := window(reqs, sec, sec.Add(time.Second))
			per = append(per, fmt.Sprintf("%d/%d", ok, lim))
		}
		runs[i].PerSecond = strings.Join(per, " ")
	}
}

// StartTable renders the worst of the repetitions per (headers, fleet, run) as Markdown.
func StartTable(rs []StartRun) string {
	type key struct {
		headers, fleet string
		run            int
	}
	worst := map[key]StartRun{}
	correct := map[key]bool{}
	reps := map[key]int{}
	var keys []key
	for _, r := range rs {
		k := key{r.Headers, r.Fleet.String(), r.Run}
		cur, ok := worst[k]
		if !ok {
			keys = append(keys, k)
			cur, correct[k] = r, true
		}
		cur.Calls, cur.Limited = max(cur.Calls, r.Calls), max(cur.Limited, r.Limited)
		cur.Share429, cur.Wall = max(cur.Share429, r.Share429), max(cur.Wall, r.Wall)
		correct[k] = correct[k] && r.Correct()
		reps[k]++
		worst[k] = cur
	}
	var b strings.Builder
	b.WriteString("| rate-limit headers | fleet (workers x slots) | run | repetitions | calls (max) | 429s (max) | 429 share (max) | wall (max) | every row correct |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		r := worst[k]
		run := [...]string{"", "1 (cold fleet, empty memory)", "2 (the same workers)", "3 (new workers, remembered rate)"}[min(k.run, 3)]
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %.1f %% | %s | %v |\n", k.headers, k.fleet, run, reps[k], r.Calls, r.Limited,
			100*r.Share429, r.Wall.Round(10*time.Millisecond), correct[k])
	}
	return b.String()
}
