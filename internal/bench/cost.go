package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/wire"
)

// CostConfig sizes the cost-per-query benchmark (docs/BENCHMARKS.md, "Cost per query").
type CostConfig struct {
	Bin, Dir string
	Self     string // this executable, re-run with --raw-loop-child for the baseline
	Rounds   int
	RawJobs  int // jobs of each raw-loop measurement
	// Pipeline runs: rows x queries at 0 latency.
	Shapes  [][2]int
	Slots   int // worker concurrency in the 0-latency pipeline (2 workers)
	Workers int
	Log     io.Writer
	// Profile, if set, is a directory: each pipeline run takes CPU profiles of the
	// workers, the collector and nats-server (ProfileFor long, from the run's start).
	Profile    string
	ProfileFor time.Duration
}

// CostRow is one measurement of one round.
type CostRow struct {
	Name    string
	Queries int
	Wall    time.Duration
	Ended   time.Time                // when the summary was seen (pipeline rows)
	CPU     map[string]time.Duration // by process kind, llmsim excluded
	// Sim is llmsim's CPU over the same span: counted in no ratio (issue 9 counts every
	// process but llmsim), shown because llmsim shares the machine's cores with the rest.
	Sim     time.Duration
	MsgsIn  int64 // nats-server in_msgs during the run
	MsgsOut int64
	// MsgsBy is in+out messages by client connection name (the server's view), and
	// "server" for what no client connection counts (internal JetStream traffic).
	MsgsBy     map[string]int64
	StoreBytes int64 // bytes left in the streams after the run (audit included)
	// Left is what the run left in the job and result streams and the retry bucket
	// once its summary was written (issue 9: nothing), by stream; nil when not read.
	Left map[string]uint64
	// Cold marks a measurement from the processes' start: the raw loop's first pass
	// (its process started for it) and the pipeline's first run on a fleet started for
	// it. A cold row's ratios are taken against the raw+HTTP loop's first pass; every
	// other row's against its next pass.
	Cold bool
}

// baseOf is the raw+HTTP row the ratios of r are taken against in its round: the loop's
// first pass for a cold row, else the pass after it (or its only pass).
func baseOf(rs []CostRow, r CostRow) *CostRow {
	for i := range rs {
		if strings.HasPrefix(rs[i].Name, "raw+http") && rs[i].Cold == r.Cold {
			return &rs[i]
		}
	}
	return nil
}

// PerQuery returns the CPU per query of every process but llmsim.
func (r CostRow) PerQuery() time.Duration {
	var t time.Duration
	for _, d := range r.CPU {
		t += d
	}
	return t / time.Duration(max(1, r.Queries))
}

// byProcess is the CPU per query of each process kind, in µs ("worker 156, ...").
func (r CostRow) byProcess() string {
	var procs []string
	for k, v := range r.CPU {
		procs = append(procs, fmt.Sprintf("%s %d", k, (v/time.Duration(max(1, r.Queries))).Microseconds()))
	}
	sort.Strings(procs)
	return strings.Join(procs, ", ")
}

// MsgsPerQuery is the NATS messages (in + out, nats-server's /varz) per query.
func (r CostRow) MsgsPerQuery() float64 {
	return float64(r.MsgsIn+r.MsgsOut) / float64(max(1, r.Queries))
}

// simPerQuery is llmsim's CPU per query in µs, "-" when not measured.
func (r CostRow) simPerQuery() string {
	if r.Sim <= 0 {
		return "-"
	}
	return strconv.FormatInt((r.Sim / time.Duration(max(1, r.Queries))).Microseconds(), 10)
}

// Rate is queries per second.
func (r CostRow) Rate() float64 { return float64(r.Queries) / r.Wall.Seconds() }

// procCPU reads a process's user+system CPU time from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// cpu sums the CPU of the stack's processes by kind (worker, collector, nats-server,
// llmsim).
func (s *Stack) cpu() map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, p := range s.byName {
		kind := strings.SplitN(name, "-", 2)[0]
		if strings.HasPrefix(name, "nats-server") {
			kind = "nats-server"
		}
		if d, err := procCPU(p.cmd.Process.Pid); err == nil {
			out[kind] += d
		}
	}
	return out
}

func diffCPU(a, b map[string]time.Duration) map[string]time.Duration {
	out := map[string]time.Duration{}
	for k, v := range b {
		out[k] = v - a[k]
	}
	return out
}

// varz reads nats-server's message counters from its monitoring port.
func (s *Stack) varz() (in, out int64, err error) {
	if s.MonitorURL == "" {
		return 0, 0, fmt.Errorf("no monitoring port")
	}
	var v struct {
		InMsgs  int64 `json:"in_msgs"`
		OutMsgs int64 `json:"out_msgs"`
	}
	err = getJSON(s.MonitorURL+"/varz", &v)
	return v.InMsgs, v.OutMsgs, err
}

// connMsgs reads in+out messages by connection name, closed connections included.
func (s *Stack) connMsgs() map[string]int64 {
	out := map[string]int64{}
	var v struct {
		Conns []struct {
			CID     uint64 `json:"cid"`
			Name    string `json:"name"`
			InMsgs  int64  `json:"in_msgs"`
			OutMsgs int64  `json:"out_msgs"`
		} `json:"connections"`
	}
	if getJSON(s.MonitorURL+"/connz?state=all&limit=100000", &v) != nil {
		return out
	}
	for _, c := range v.Conns {
		out[fmt.Sprintf("%s#%d", c.Name, c.CID)] = c.InMsgs + c.OutMsgs
	}
	return out
}

// diffMsgs sums the per-connection growth by connection name.
func diffMsgs(a, b map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			out[strings.SplitN(k, "#", 2)[0]] += d
		}
	}
	return out
}

// leftStreams are the streams a completed run must leave empty: jobs, results and the
// retry bucket's.
var leftStreams = []string{wire.StreamJobs, wire.StreamResults, "KV_" + wire.BucketRetry}

// streamMessages reads the messages stored in each of names (a name the server does not
// have reads 0).
func (s *Stack) streamMessages(names []string) (map[string]uint64, error) {
	var v struct {
		Accounts []struct {
			Streams []struct {
				Name  string `json:"name"`
				State struct {
					Msgs uint64 `json:"messages"`
				} `json:"state"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := getJSON(s.MonitorURL+"/jsz?streams=true", &v); err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(names))
	for _, n := range names {
		out[n] = 0
	}
	for _, a := range v.Accounts {
		for _, st := range a.Streams {
			if _, ok := out[st.Name]; ok {
				out[st.Name] += st.State.Msgs
			}
		}
	}
	return out, nil
}

// waitEmpty reads names until all are empty or d has passed (the collector purges what a
// finished run leaves after its summary), and returns the last reading.
func (s *Stack) waitEmpty(ctx context.Context, names []string, d time.Duration) (map[string]uint64, error) {
	deadline := time.Now().Add(d)
	for {
		left, err := s.streamMessages(names)
		if err != nil || time.Now().After(deadline) {
			return left, err
		}
		var n uint64
		for _, v := range left {
			n += v
		}
		if n == 0 {
			return left, nil
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return left, err
		}
	}
}

// jszBytes reads the bytes stored in every stream.
func (s *Stack) jszBytes() (int64, error) {
	var v struct {
		Bytes int64 `json:"bytes"`
	}
	err := getJSON(s.MonitorURL+"/jsz", &v)
	return v.Bytes, err
}

// rawLoop runs the baseline in a child process on the stack, `passes` times in that
// process, and returns a row per pass: the child's CPU in the pass (from its rusage),
// the other processes' read between the passes. With more than one pass, the first is
// named and marked Cold.
func (c CostConfig) rawLoop(ctx context.Context, s *Stack, withHTTP bool, slots, jobs, passes int) ([]CostRow, error) {
	name := "raw"
	args := []string{"--raw-loop-child", "--nats", s.NATSURL, "--raw-jobs", strconv.Itoa(jobs), "--raw-slots", strconv.Itoa(slots),
		"--raw-passes", strconv.Itoa(max(1, passes))}
	if withHTTP {
		name = "raw+http"
		args = append(args, "--raw-sim", s.SimURL)
	}
	name = fmt.Sprintf("%s %d slots", name, slots)
	cmd := exec.CommandContext(ctx, c.Self, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	before := s.cpu()
	in0, out0, _ := s.varz()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	failed := func(err error) ([]CostRow, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s: %w: %s", name, err, stderr.String())
	}
	// A line of JSON per pass; the child waits for a line on stdin before the next, so
	// that what the other processes spent is read between the passes.
	lines := bufio.NewScanner(stdout)
	var rows []CostRow
	for pass := 1; pass <= max(1, passes); pass++ {
		if !lines.Scan() {
			return failed(fmt.Errorf("pass %d: no result (%v)", pass, lines.Err()))
		}
		var res RawLoopResult
		if err := json.Unmarshal(lines.Bytes(), &res); err != nil {
			return failed(fmt.Errorf("pass %d printed %q: %w", pass, lines.Bytes(), err))
		}
		now := s.cpu()
		in1, out1, _ := s.varz()
		used := diffCPU(before, now)
		row := CostRow{Name: name, Queries: res.Jobs, Wall: res.Wall,
			CPU:    map[string]time.Duration{"loop": res.CPU, "nats-server": used["nats-server"]},
			MsgsIn: in1 - in0, MsgsOut: out1 - out0}
		if withHTTP {
			row.Sim = used["llmsim"]
		}
		if passes > 1 && pass == 1 {
			row.Name, row.Cold = name+", first pass", true
		}
		rows = append(rows, row)
		before, in0, out0 = now, in1, out1
		if pass < passes {
			if _, err := io.WriteString(stdin, "next\n"); err != nil {
				return failed(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", name, err, stderr.String())
	}
	return rows, nil
}

// pipeline runs rows x queries through the real processes already started on s.
func (c CostConfig) pipeline(ctx context.Context, s *Stack, name string, rows, queries int) (CostRow, error) {
	dir, err := os.MkdirTemp(c.Dir, "run-")
	if err != nil {
		return CostRow{}, err
	}
	pipeline, input, err := writeInput(dir, costPipeline(queries), rows)
	if err != nil {
		return CostRow{}, err
	}
	var profiled chan error
	if c.Profile != "" {
		profiled = make(chan error, 1)
		go func() {
			profiled <- s.Profile(c.Profile, strings.NewReplacer(" ", "-", ",", "").Replace(name), max(c.ProfileFor, time.Second))
		}()
	}
	before := s.cpu()
	in0, out0, _ := s.varz()
	conns0 := s.connMsgs()
	began := time.Now()
	args := append([]string{"--config", pipeline, "--input", input, "--log-level", "warn"}, s.Extra...)
	cmd := exec.CommandContext(ctx, filepath.Join(s.Bin, "producer"), args...)
	cmd.Env = append(os.Environ(), "MQ_PREFIX=", "NATS_URL="+s.NATSURL)
	out, err := cmd.Output()
	if err != nil {
		return CostRow{}, fmt.Errorf("producer: %w: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return CostRow{}, fmt.Errorf("producer printed %q", out)
	}
	run := strings.TrimSuffix(f[1], ":")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if _, err := s.WaitSummary(wctx, run); err != nil {
		return CostRow{}, err
	}
	ended := time.Now()
	wall := ended.Sub(began)
	cpu := diffCPU(before, s.cpu())
	sim := cpu["llmsim"] // shown apart: in no ratio
	delete(cpu, "llmsim")
	cpu["producer"] = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	in1, out1, _ := s.varz()
	by := diffMsgs(conns0, s.connMsgs())
	stored, _ := s.jszBytes()
	left, err := s.waitEmpty(ctx, leftStreams, 10*time.Second)
	if err != nil {
		return CostRow{}, fmt.Errorf("read what the run left: %w", err)
	}
	if profiled != nil {
		if err := <-profiled; err != nil {
			fmt.Fprintf(c.Log, "profile %s: %v\n", name, err)
		}
	}
	return CostRow{Name: name, Queries: rows * queries, Wall: wall, Ended: ended, CPU: cpu, Sim: sim, MsgsIn: in1 - in0, MsgsOut: out1 - out0, MsgsBy: by, StoreBytes: stored, Left: left}, nil
}

func costPipeline(queries int) string {
	var b strings.Builder
	b.WriteString("llm: {deployment: default, model: bench}\noutput_fields:\n  answer: {type: string}\nqueries:\n")
	for q := range queries {
		fmt.Fprintf(&b, "  - name: q%d\n    template: \"Answer {{ row.text }} for q%d; reply in json.\"\n", q, q)
	}
	return b.String()
}

// NonLimiting is a throttle that never holds the pipeline back (0-latency runs measure
// cost, not pacing).
var NonLimiting = ThrottleYAML("{start_rate: 100000, min_rate: 50000, max_rate: 1000000}")

// Cost runs the rounds: in each, the raw loop and the raw loop with HTTP (two passes
// each in one process: the first cold, the next on the loop that has run), then the
// pipeline at 0 latency, its first shape on the fleet just started (cold) and then every
// shape on the fleet that has run; interleaved so that every ratio is taken within a
// round, a cold row's against the loop's first pass.
func Cost(ctx context.Context, c CostConfig) ([][]CostRow, error) {
	var rounds [][]CostRow
	for r := range c.Rounds {
		dir, err := os.MkdirTemp(c.Dir, fmt.Sprintf("round%d-", r+1))
		if err != nil {
			return rounds, err
		}
		s, err := startStack(c.Bin, dir, []string{"--latency", "0s"}, 1, c.Profile != "")
		if err != nil {
			return rounds, err
		}
		rows, err := c.round(ctx, s, dir)
		s.Stop()
		rounds = append(rounds, rows)
		if err != nil {
			return rounds, fmt.Errorf("round %d: %w", r+1, err)
		}
		fmt.Fprintf(c.Log, "round %d done\n", r+1)
	}
	return rounds, nil
}

func (c CostConfig) round(ctx context.Context, s *Stack, dir string) ([]CostRow, error) {
	var out []CostRow
	slots := c.Slots * c.Workers
	for _, http := range []bool{false, true} {
		rows, err := c.rawLoop(ctx, s, http, slots, c.RawJobs, 2)
		if err != nil {
			return out, err
		}
		out = append(out, rows...)
	}
	if _, err := s.StartWorkers(c.Workers, NonLimiting, "--concurrency", strconv.Itoa(c.Slots), "--log-level", "warn"); err != nil {
		return out, err
	}
	if err := s.StartCollector(); err != nil {
		return out, err
	}
	// The first shape once on the fleet just started (cold, as the loop's first pass),
	// then every shape on the fleet that has run.
	type run struct {
		shape [2]int
		cold  bool
	}
	var runs []run
	if len(c.Shapes) > 0 {
		runs = append(runs, run{c.Shapes[0], true})
	}
	for _, sh := range c.Shapes {
		runs = append(runs, run{sh, false})
	}
	for _, r := range runs {
		name := fmt.Sprintf("pipeline %dx%d", r.shape[0], r.shape[1])
		if r.cold {
			name += ", first run"
		}
		row, err := c.pipeline(ctx, s, name, r.shape[0], r.shape[1])
		if err != nil {
			return out, err
		}
		row.Cold = r.cold
		out = append(out, row)
	}
	return out, nil
}

// CostTable prints min/median/max per measurement and the within-round ratios against
// the raw loop with HTTP.
func CostTable(rounds [][]CostRow) string {
	if len(rounds) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| measure | q/s (min/med/max) | CPU/query µs (min/med/max) | x raw+http CPU (med) | throughput / raw+http (med) | NATS msgs/query in+out (med) | CPU by process (med round) | msgs/query by connection (med round) | left after the run: jobs / results / retry (max) | llmsim CPU/query µs, in no ratio (med round) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range rounds[0] {
		var rate, cpu, ratioCPU, ratioRate, msgs []float64
		for _, rs := range rounds {
			if i >= len(rs) {
				continue
			}
			r := rs[i]
			rate = append(rate, r.Rate())
			cpu = append(cpu, float64(r.PerQuery().Microseconds()))
			msgs = append(msgs, r.MsgsPerQuery())
			if base := baseOf(rs, r); base != nil {
				ratioCPU = append(ratioCPU, float64(r.PerQuery())/float64(base.PerQuery()))
				ratioRate = append(ratioRate, r.Rate()/base.Rate())
			}
		}
		med := rounds[len(rounds)/2][i]
		var by []string
		for k, v := range med.MsgsBy {
			by = append(by, fmt.Sprintf("%s %.2f", strings.TrimPrefix(k, "multiquery-"), float64(v)/float64(max(1, med.Queries))))
		}
		sort.Strings(by)
		fmt.Fprintf(&b, "| %s | %s | %s | %.2f | %.0f %% | %.2f | %s | %s | %s | %s |\n", rounds[0][i].Name, mmm(rate, "%.0f"), mmm(cpu, "%.0f"),
			median(ratioCPU), 100*median(ratioRate), median(msgs), med.byProcess(), strings.Join(by, ", "), maxLeft(rounds, i), med.simPerQuery())
	}
	return b.String()
}

// maxLeft is the most messages measurement i left in each of leftStreams over the rounds.
func maxLeft(rounds [][]CostRow, i int) string {
	most := map[string]uint64{}
	read := false
	for _, rs := range rounds {
		if i < len(rs) && rs[i].Left != nil {
			read = true
			for k, v := range rs[i].Left {
				most[k] = max(most[k], v)
			}
		}
	}
	if !read {
		return "-"
	}
	var f []string
	for _, n := range leftStreams {
		f = append(f, strconv.FormatUint(most[n], 10))
	}
	return strings.Join(f, " / ")
}

func mmm(v []float64, f string) string {
	if len(v) == 0 {
		return "-"
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return fmt.Sprintf(f+" / "+f+" / "+f, s[0], median(s), s[len(s)-1])
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
