package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// ChurnConfig sizes the churn scenarios: a rolling replacement of every worker
// ("rolling") and a fleet that grows mid-run ("scaleup").
type ChurnConfig struct {
	Bin, Dir  string
	Scenarios []string // rolling, scaleup
	Modes     []string // worker --throttle: fleet, naive
	Runs      int
	RPS       float64
	Burst     int
	Latency   time.Duration
	// Warmup passes between the first request and the first replacement (rolling).
	Warmup time.Duration
	// Duration sizes the run: rows for this long at the limit (default 90 s).
	Duration time.Duration
	// Workers x Slots is the rolling fleet (16 x 8); Slots also sizes every scale-up worker.
	Workers, Slots int
	// ScaleFrom workers run; ScaleAfter the first request, workers are added up to ScaleTo.
	ScaleFrom, ScaleTo int
	ScaleAfter         time.Duration
	// Gap is the pause after an old worker exited before the next replacement (2 s).
	Gap time.Duration
	Log io.Writer
}

// ChurnResult is one churn run's outcome.
type ChurnResult struct {
	Scenario, Mode, Fleet string
	Run                   int
	// Goodput is the answers that are not 429s / (limit x the run from its first
	// request to its last answer); Share429 the 429s / all answers of the run.
	Goodput, Share429 float64
	Calls             int
	Span              time.Duration // first request -> last answer
	// During the churn: rolling, from the first replacement to the last old worker's
	// exit; scaleup, the churnAfterScale after the joiners were started.
	ChurnGoodput, ChurnShare429 float64
	ChurnFor                    time.Duration
	Replaced, Added             int
	UpMax                       time.Duration // longest start -> first heartbeat of a new worker (scaleup: of all joiners)
	DrainMax                    time.Duration // longest SIGTERM -> exit of an old worker
	Completed                   bool
	Rows                        ChaosReport
	Wall                        time.Duration
}

// Exact reports whether every row came out exactly once, answered, none partial.
func (r ChurnResult) Exact() bool {
	return r.Completed && r.Rows.Missing == 0 && r.Rows.Duplicates == 0 && r.Rows.PartialRows == 0 && r.Rows.RowsFailed == 0 &&
		r.Rows.RowsOK == r.Rows.RowsIn
}

func (r ChurnResult) String() string {
	churn := fmt.Sprintf("%d replaced, up <= %s, drain <= %s", r.Replaced, r.UpMax.Round(10*time.Millisecond), r.DrainMax.Round(10*time.Millisecond))
	if r.Scenario == "scaleup" {
		churn = fmt.Sprintf("%d added, all up after %s", r.Added, r.UpMax.Round(10*time.Millisecond))
	}
	return fmt.Sprintf("churn %s %s %s run %d: goodput %.1f %% of the limit over %s, 429s %.1f %% of %d calls; during the churn (%s) goodput %.1f %%, 429s %.1f %%; "+
		"%s; rows %d in: %d ok, %d failed, %d missing, %d duplicate, %d partial: exactly once %v; wall %s",
		r.Scenario, r.Mode, r.Fleet, r.Run, 100*r.Goodput, r.Span.Round(time.Second), 100*r.Share429, r.Calls,
		r.ChurnFor.Round(time.Second), 100*r.ChurnGoodput, 100*r.ChurnShare429, churn,
		r.Rows.RowsIn, r.Rows.RowsOK, r.Rows.RowsFailed, r.Rows.Missing, r.Rows.Duplicates, r.Rows.PartialRows, r.Exact(), r.Wall.Round(time.Second))
}

// churnAfterScale is the window measured after a scale-up.
const churnAfterScale = 20 * time.Second

// drainWait bounds an old worker's exit after SIGTERM (its --drain-timeout is 30 s).
const drainWait = 45 * time.Second

// benchCols are the output columns of benchPipeline.
var benchCols = []string{"q_answer", "q_usage", "q_model"}

// Churn runs every (mode, scenario, run) and returns the results.
func Churn(ctx context.Context, c ChurnConfig) ([]ChurnResult, error) {
	c.Duration = cmp.Or(c.Duration, 90*time.Second)
	c.Gap = cmp.Or(c.Gap, 2*time.Second)
	var out []ChurnResult
	for _, mode := range c.Modes {
		for _, sc := range c.Scenarios {
			for run := 1; run <= c.Runs; run++ {
				r, err := c.runOnce(ctx, sc, mode, run)
				if err != nil {
					return out, fmt.Errorf("churn %s %s run %d: %w", sc, mode, run, err)
				}
				fmt.Fprintln(c.Log, r)
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// firstFleet is the fleet a scenario starts with.
func (c ChurnConfig) firstFleet(scenario string) (Shape, string, error) {
	switch scenario {
	case "rolling":
		sh := Shape{{c.Workers, c.Slots}}
		return sh, sh.String() + " rolled", nil
	case "scaleup":
		return Shape{{c.ScaleFrom, c.Slots}}, fmt.Sprintf("%dx%d -> %dx%d", c.ScaleFrom, c.Slots, c.ScaleTo, c.Slots), nil
	}
	return nil, "", fmt.Errorf("unknown churn scenario %q (rolling, scaleup)", scenario)
}

// runOnce runs one churn scenario on a fresh stack.
func (c ChurnConfig) runOnce(ctx context.Context, scenario, mode string, run int) (ChurnResult, error) {
	res := ChurnResult{Scenario: scenario, Mode: mode, Run: run}
	first, fleet, err := c.firstFleet(scenario)
	if err != nil {
		return res, err
	}
	res.Fleet = fleet
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir := filepath.Join(c.Dir, fmt.Sprintf("churn-%s-%s-r%d", scenario, mode, run))
	fs, err := startFleetStack(ctx, c.Bin, dir, simArgs(c.RPS, c.Burst, c.Latency), first, mode, "", "--throttle", mode)
	if err != nil {
		return res, err
	}
	defer fs.Stop()
	s, tw, cfg, names := fs.Stack, fs.tw, fs.cfg, fs.names
	rows := int(c.RPS * c.Duration.Seconds())
	pipeline, input, err := writeInput(dir, benchPipeline, rows)
	if err != nil {
		return res, err
	}
	start := time.Now()
	prod := s.produceAsync(ctx, pipeline, input)
	t0, err := s.waitFirstRequest(ctx, time.Minute)
	if err != nil {
		return res, err
	}
	ch := churner{c: c, s: s, tw: tw, cfg: cfg, mode: mode, res: &res}
	var from, to time.Time
	if scenario == "rolling" {
		from, to, err = ch.rolling(ctx, names, t0)
	} else {
		from, to, err = ch.scaleUp(ctx, t0)
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", scenario, err)
	}
	runID, completed, err := s.waitProduced(ctx, prod, 3*c.Duration+2*time.Minute)
	if err != nil {
		return res, err
	}
	res.Completed, res.Wall = completed, time.Since(start)
	if err := res.measure(s, c.RPS, from, to); err != nil {
		return res, err
	}
	res.Rows.RowsIn = rows
	if runID == "" {
		return res, nil
	}
	return res, checkRowCols(filepath.Join(s.Dir, "out", runID), rows, benchCols, &res.Rows)
}

// measure reads llmsim's request log: the whole run and the churn window [from, to).
func (r *ChurnResult) measure(s *Stack, rps float64, from, to time.Time) error {
	reqs, err := s.Requests()
	if err != nil {
		return fmt.Errorf("read llmsim's request log: %w", err)
	}
	first, last := runSpan(reqs)
	r.Span = last.Sub(first)
	// The last answer arrived at last: count requests up to and including it.
	r.Goodput, r.Share429, r.Calls = rates(reqs, first, last.Add(time.Nanosecond), r.Span, rps)
	r.ChurnFor = to.Sub(from)
	r.ChurnGoodput, r.ChurnShare429, _ = rates(reqs, from, to, r.ChurnFor, rps)
	return nil
}

// runSpan is the run from its first request to its last answer (arrival + latency).
func runSpan(reqs []llmsim.RequestLog) (first, last time.Time) {
	first = firstRequest(reqs)
	for _, r := range reqs {
		if end := r.Received.Add(time.Duration(r.LatencyMS * float64(time.Millisecond))); end.After(last) {
			last = end
		}
	}
	return first, last
}

// rates are the goodput (answers / (limit x d)) and the 429 share of the requests that
// arrived in [from, to).
func rates(reqs []llmsim.RequestLog, from, to time.Time, d time.Duration, rps float64) (goodput, share float64, calls int) {
	ok, lim, total := window(reqs, from, to)
	if d > 0 {
		goodput = float64(ok) / d.Seconds() / rps
	}
	if total > 0 {
		share = float64(lim) / float64(total)
	}
	return goodput, share, total
}

// churner changes a running fleet.
type churner struct {
	c    ChurnConfig
	s    *Stack
	tw   *throttleWatch
	cfg  string
	mode string
	res  *ChurnResult
}

func (h churner) startOne() (string, error) {
	return h.s.startWorker(h.cfg, "--throttle", h.mode, "--concurrency", fmt.Sprint(h.c.Slots))
}

// rolling replaces every worker one by one after the warm-up, as a Kubernetes rolling
// update does: start the replacement, wait until it is up (its first heartbeat), send
// SIGTERM to the old one and wait until it has drained and exited, pause, next. It
// returns the churn window, from the first replacement to the last exit.
func (h churner) rolling(ctx context.Context, old []string, t0 time.Time) (from, to time.Time, err error) {
	if err := sleepCtx(ctx, time.Until(t0.Add(h.c.Warmup))); err != nil {
		return from, to, err
	}
	from = time.Now()
	for i, name := range old {
		if i > 0 {
			if err := sleepCtx(ctx, h.c.Gap); err != nil {
				return from, to, err
			}
		}
		if err := h.replace(ctx, name); err != nil {
			return from, to, err
		}
	}
	return from, time.Now(), nil
}

// replace starts a replacement for name, waits until it is up, then stops name.
func (h churner) replace(ctx context.Context, name string) error {
	up := time.Now()
	nw, err := h.startOne()
	if err != nil {
		return err
	}
	if err := h.tw.waitUp(ctx, h.mode, []string{nw}, upTimeout(1)); err != nil {
		return err
	}
	h.res.UpMax = max(h.res.UpMax, time.Since(up))
	term := time.Now()
	exited, err := h.s.Signal(name, syscall.SIGTERM, drainWait)
	if err != nil {
		return fmt.Errorf("SIGTERM %s: %w", name, err)
	}
	if !exited {
		return fmt.Errorf("%s did not exit within %s of SIGTERM", name, drainWait)
	}
	h.res.DrainMax = max(h.res.DrainMax, time.Since(term))
	h.res.Replaced++
	return nil
}

// scaleUp adds workers up to ScaleTo, ScaleAfter the first request, and returns the
// churn window: the churnAfterScale after they were started.
func (h churner) scaleUp(ctx context.Context, t0 time.Time) (from, to time.Time, err error) {
	if err := sleepCtx(ctx, time.Until(t0.Add(h.c.ScaleAfter))); err != nil {
		return from, to, err
	}
	from = time.Now()
	var names []string
	for range h.c.ScaleTo - h.c.ScaleFrom {
		name, err := h.startOne()
		if err != nil {
			return from, to, err
		}
		names = append(names, name)
	}
	h.res.Added = len(names)
	if err := h.tw.waitUp(ctx, h.mode, names, upTimeout(len(names))); err != nil {
		return from, to, err
	}
	h.res.UpMax = time.Since(from)
	return from, from.Add(churnAfterScale), nil
}

// ChurnTable renders the worst run per (scenario, mode) as Markdown.
func ChurnTable(rs []ChurnResult) string {
	type key struct{ sc, mode, fleet string }
	worst := map[key]ChurnResult{}
	exact := map[key]bool{}
	var keys []key
	for _, r := range rs {
		k := key{r.Scenario, r.Mode, r.Fleet}
		cur, ok := worst[k]
		if !ok {
			keys = append(keys, k)
			cur, exact[k] = r, true
		}
		cur.Goodput, cur.ChurnGoodput = min(cur.Goodput, r.Goodput), min(cur.ChurnGoodput, r.ChurnGoodput)
		cur.Share429, cur.ChurnShare429 = max(cur.Share429, r.Share429), max(cur.ChurnShare429, r.ChurnShare429)
		cur.Run = max(cur.Run, r.Run)
		cur.DrainMax, cur.UpMax = max(cur.DrainMax, r.DrainMax), max(cur.UpMax, r.UpMax)
		exact[k] = exact[k] && r.Exact()
		worst[k] = cur
	}
	var b strings.Builder
	b.WriteString("| scenario | throttle | fleet | runs | worst goodput (whole run) | worst 429 share (whole run) | worst goodput during the churn | worst 429 share during the churn | slowest up / drain | every row exactly once |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		r := worst[k]
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %.1f %% | %.1f %% | %.1f %% | %.1f %% | %s / %s | %v |\n", k.sc, k.mode, k.fleet, r.Run,
			100*r.Goodput, 100*r.Share429, 100*r.ChurnGoodput, 100*r.ChurnShare429,
			r.UpMax.Round(10*time.Millisecond), r.DrainMax.Round(10*time.Millisecond), exact[k])
	}
	return b.String()
}
