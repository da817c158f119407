// Command mqbench runs the throttle benchmark on real processes (see docs/BENCHMARKS.md):
// for each throttle mode and fleet shape (W, WxS, AxS+BxT) it starts nats-server, llmsim
// with a token-bucket limit, the worker processes, the collector and the producer, and
// measures goodput and 429 share from llmsim's request log, the workers' RSS and CPU idle
// and at work, and the throttle's core-NATS traffic; then the limit-change scenario.
// Instead of that: the churn scenarios (--churn), the start storm (--start), the cost
// benchmark (--cost), flow control (--flow-rows) or the collector's memory.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/bench"
	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/version"
)

func main() { os.Exit(run(os.Args[1:])) }

// options is everything the command reads from its flags, by mode.
type options struct {
	bin, dir string
	ownDir   bool // dir is the temporary directory mqbench made (finish removes it)
	// Shared by the throttle cells, churn and start: llmsim's limit and latency, runs.
	runs, burst int
	rps         float64
	latency     time.Duration
	modes       string

	throttle throttleOptions
	churn    churnOptions
	start    startOptions
	cost     costOptions
	raw      bench.RawLoopConfig // --raw-loop-child
	child    bool
	memory   string // --collector-memory
	flow     flowOptions
	pool     poolOptions
}

type poolOptions struct {
	on                bool
	east, west        float64
	workers           int
	tokens            int
	tokensLearned     bool
	completionTimeout time.Duration
}

type throttleOptions struct {
	workers, adaptWorkers string
	warmup, measure       time.Duration
	idleFor               time.Duration
	conc, naiveRuns       int
	adapt, adaptOnly      bool
}

type churnOptions struct {
	scenarios                          string
	workers, slots, scaleFrom, scaleTo int
	duration, scaleAfter               time.Duration
}

type startOptions struct {
	on                          bool
	headers, workers, throttle  string
	slots, rows, queries, burst int
	rps                         float64
}

type costOptions struct {
	on                   bool
	rounds, callsPerSlot int
	shapes, profile      string
	profileFor           time.Duration
	latency, demo        bool
	demoScript, record   string
	replacedThrottle     string
	cells                string // latency-bound fleets, WxS (workers x slots each)
	replaced             bool
}

type flowOptions struct{ rows, queries, ahead int }

// usageError is a bad flag value: exit 2.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// run returns the exit code: 0 done, 1 a benchmark failed, 2 bad flags.
func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		return cli.ParseExit(err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := o.workDir(); err != nil {
		fmt.Fprintln(os.Stderr, "mqbench:", err)
		return cli.ExitFailed
	}
	err = o.mode()(ctx, o)
	o.finish(err)
	if err == nil {
		return cli.ExitOK
	}
	fmt.Fprintln(os.Stderr, "mqbench:", err)
	if errors.As(err, new(usageError)) {
		return cli.ExitUsage
	}
	return cli.ExitFailed
}

// mode picks what the flags ask for: one function per mode.
func (o *options) mode() func(context.Context, *options) error {
	switch {
	case o.child:
		return runRawLoopChild
	case o.cost.on:
		return runCost
	case o.pool.on:
		return runPool
	case o.pool.tokens > 0:
		return runTokens
	case o.flow.rows > 0:
		return runFlow
	case o.memory != "":
		return runMemory
	case o.start.on:
		return runStart
	case o.churn.scenarios != "":
		return runChurn
	default:
		return runThrottle
	}
}

// workDir makes --dir a temporary directory when it is not set (the raw-loop child
// writes no files).
func (o *options) workDir() error {
	if o.dir != "" || o.child {
		return nil
	}
	d, err := os.MkdirTemp("", "mqbench-")
	o.dir, o.ownDir = d, err == nil
	return err
}

// finish removes the temporary work directory after a run that succeeded (make bench
// leaves ~400 MB of stores and logs there) or never started (a usage error), and names
// it after one that failed, whose logs tell why. A --dir given is the user's: left as
// it is.
func (o *options) finish(err error) {
	if !o.ownDir {
		return
	}
	if err != nil && !errors.As(err, new(usageError)) {
		fmt.Fprintln(os.Stderr, "mqbench: the run's logs and stores are kept in", o.dir)
		return
	}
	if err := os.RemoveAll(o.dir); err != nil {
		fmt.Fprintln(os.Stderr, "mqbench: remove the work directory:", err)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("mqbench", flag.ContinueOnError)
	o := &options{}
	ver := version.Register(fs)
	fs.StringVar(&o.bin, "bin", "bin", "directory of the built binaries (make build)")
	fs.StringVar(&o.dir, "dir", "", "work directory (default: a temp dir, removed after a run that succeeded)")
	fs.IntVar(&o.runs, "runs", 3, "runs per cell (the table keeps the worst)")
	fs.StringVar(&o.modes, "modes", "fleet,naive", "throttle modes")
	fs.Float64Var(&o.rps, "rps", 50, "llmsim request limit (token bucket)")
	fs.IntVar(&o.burst, "burst", 5, "llmsim bucket size")
	fs.DurationVar(&o.latency, "latency", 50*time.Millisecond, "llmsim latency")
	o.throttle.flags(fs)
	o.churn.flags(fs)
	o.start.flags(fs)
	fs.StringVar(&o.memory, "collector-memory", "", "instead: the collector's peak RSS for these row counts (e.g. 50000,200000), 2 queries a row")
	fs.IntVar(&o.flow.rows, "flow-rows", 0, "instead: flow control, this many rows x --flow-queries through a fleet limited to --rps, producer --max-ahead --flow-ahead")
	fs.IntVar(&o.flow.queries, "flow-queries", 1, "queries per row of the flow run")
	fs.IntVar(&o.flow.ahead, "flow-ahead", 1000, "producer --max-ahead of the flow run")
	o.cost.flags(fs)
	o.pool.flags(fs)
	fs.IntVar(&o.raw.Jobs, "raw-jobs", 20000, "jobs per raw-loop measurement (cost benchmark)")
	fs.BoolVar(&o.child, "raw-loop-child", false, "internal: run one raw loop and print its result as JSON")
	fs.StringVar(&o.raw.NATSURL, "nats", "", "internal: NATS URL of --raw-loop-child")
	fs.StringVar(&o.raw.SimURL, "raw-sim", "", "internal: llmsim URL of --raw-loop-child (empty: no HTTP call)")
	fs.IntVar(&o.raw.Slots, "raw-slots", 512, "internal: slots of --raw-loop-child")
	fs.IntVar(&o.raw.Passes, "raw-passes", 1, "internal: passes of --raw-loop-child (after each but the last it waits for a line on stdin)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if ver.Print(os.Stdout, "mqbench") {
		return nil, version.ErrPrinted
	}
	return o, nil
}

func (t *throttleOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&t.workers, "workers", "1,2,4,8", "fleets: W (W workers x --concurrency slots), WxS (W workers x S slots), or groups joined by + (4x64+28x4)")
	fs.DurationVar(&t.warmup, "warmup", 10*time.Second, "warm-up excluded from the measurement")
	fs.DurationVar(&t.measure, "measure", 60*time.Second, "measurement window")
	fs.IntVar(&t.conc, "concurrency", 32, "worker --concurrency")
	fs.BoolVar(&t.adapt, "adapt", true, "also run the 50 -> 20 -> 50 req/s scenario with --adapt-workers")
	fs.StringVar(&t.adaptWorkers, "adapt-workers", "4", "fleet of the limit-change scenario: W, WxS or groups joined by +")
	fs.DurationVar(&t.idleFor, "idle-for", 5*time.Second, "throttle cells: how long the fleet's idle CPU is measured before the run")
	fs.BoolVar(&t.adaptOnly, "adapt-only", false, "run only the limit-change scenario")
	fs.IntVar(&t.naiveRuns, "naive-runs", 1, "runs per cell of the naive baseline")
}

func (c *churnOptions) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.scenarios, "churn", "", "instead: churn scenarios, comma-separated: rolling (replace every worker one by one), scaleup (--scaleup-from workers, more to --scaleup-to); each --runs times per --modes, at --rps/--burst")
	fs.IntVar(&c.workers, "churn-workers", 16, "rolling: workers")
	fs.IntVar(&c.slots, "churn-slots", 8, "rolling and scaleup: slots per worker")
	fs.DurationVar(&c.duration, "churn-duration", 90*time.Second, "churn: rows for this long at the limit")
	fs.IntVar(&c.scaleFrom, "scaleup-from", 4, "scaleup: workers at the start")
	fs.IntVar(&c.scaleTo, "scaleup-to", 32, "scaleup: workers after the scale-up")
	fs.DurationVar(&c.scaleAfter, "scaleup-after", 20*time.Second, "scaleup: when the workers are added, after the first request")
}

func (s *startOptions) flags(fs *flag.FlagSet) {
	fs.BoolVar(&s.on, "start", false, "instead: the start-storm scenario (a fresh fleet runs the same job twice in a row), each case --runs times")
	fs.StringVar(&s.headers, "start-headers", "none,openai,azure", "start: llmsim --ratelimit-headers modes (azure is llmsim's default and not passed)")
	fs.StringVar(&s.workers, "start-workers", "1,4", "start: fleet sizes")
	fs.IntVar(&s.slots, "start-slots", 32, "start: slots per worker")
	fs.IntVar(&s.rows, "start-rows", 100, "start: rows per run")
	fs.IntVar(&s.queries, "start-queries", 4, "start: queries per row")
	fs.Float64Var(&s.rps, "start-rps", 40, "start: llmsim request limit")
	fs.IntVar(&s.burst, "start-burst", 5, "start: llmsim bucket size")
	fs.StringVar(&s.throttle, "start-throttle", "", `start: the workers' throttle settings as a YAML flow map, e.g. "{start_rate: 2000}" (default: the shipped defaults)`)
}

func (p *poolOptions) flags(fs *flag.FlagSet) {
	fs.BoolVar(&p.on, "pool", false, "instead: the deployment-pool scenario: two llmsim (east --pool-east, west --pool-west req/s, --burst, --latency) as one pool, --pool-workers x --concurrency; goodput and 429s over --measure after --warmup, then east is killed and the run must complete on west")
	fs.Float64Var(&p.east, "pool-east", 10, "pool: east's request limit")
	fs.Float64Var(&p.west, "pool-west", 40, "pool: west's request limit")
	fs.IntVar(&p.workers, "pool-workers", 2, "pool and tokens: workers")
	fs.DurationVar(&p.completionTimeout, "pool-complete-within", 5*time.Minute, "pool: how long the run may take to complete after east is killed")
	fs.IntVar(&p.tokens, "tokens", 0, "instead: the token-budget scenario, llmsim limited to this many tokens per minute (no request limit), --pool-workers x --concurrency; goodput in tokens and 429s over --measure after --warmup")
	fs.BoolVar(&p.tokensLearned, "tokens-learned", false, "tokens: the workers learn the budget from x-ratelimit-limit-tokens (llmsim --ratelimit-headers openai) instead of throttle.tokens_per_minute")
}

func (c *costOptions) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.on, "cost", false, "instead: CPU per query of the pipeline against a raw JetStream loop, --rounds rounds interleaved")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds of the cost benchmark")
	fs.StringVar(&c.shapes, "shapes", "20000x1,2000x10", "pipeline runs of the cost benchmark, rows x queries")
	// 100 calls a slot: ~5 s runs, so that the ~100 ms of a run's start and end (the
	// producer's start-up, the summary) weigh ~2 %, not ~5 % as at 40 (2 s runs).
	fs.IntVar(&c.callsPerSlot, "latency-calls-per-slot", 100, "latency-bound runs: calls per slot")
	fs.StringVar(&c.profile, "profile", "", "cost benchmark: a directory for CPU profiles (and allocation profiles since start) of workers, collector and nats-server during each pipeline run")
	fs.DurationVar(&c.profileFor, "profile-for", 3*time.Second, "cost benchmark: length of each CPU profile")
	fs.BoolVar(&c.latency, "cost-latency", true, "cost benchmark: also run the latency-bound and replaced-system scenarios")
	fs.StringVar(&c.cells, "latency-cells", "1x64,2x128,4x256", "cost benchmark: the latency-bound fleets, workers x slots each, comma-separated (issue 9's 64, 256 and 1024 slots)")
	fs.BoolVar(&c.replaced, "cost-replaced", true, "cost benchmark: with --cost-latency, also run the replaced system's scenario")
	fs.BoolVar(&c.demo, "cost-demo", true, "cost benchmark: also run make demo's script (--demo-script) once a round")
	fs.StringVar(&c.demoScript, "demo-script", "scripts/demo.sh", "cost benchmark: make demo's script")
	fs.StringVar(&c.replacedThrottle, "replaced-throttle", "", `cost benchmark: also run the replaced system's scenario with these throttle settings (a YAML flow map, e.g. "{start_rate: 2000}"), beside the shipped defaults`)
	fs.StringVar(&c.record, "record", "", "cost benchmark: write the tables and the bounds into this document, between its make-bench marker lines")
}

// runRawLoopChild runs one raw loop for the cost benchmark's parent and prints each
// pass's result as a line of JSON; after each pass but the last it waits for a line on
// stdin (the parent has read what the other processes spent in the pass).
func runRawLoopChild(ctx context.Context, o *options) error {
	next := bufio.NewScanner(os.Stdin)
	o.raw.After = func(res bench.RawLoopResult) error {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		if res.Pass < o.raw.Passes && !next.Scan() {
			return fmt.Errorf("pass %d: the parent closed stdin", res.Pass)
		}
		return nil
	}
	if _, err := bench.RawLoop(ctx, o.raw); err != nil {
		return fmt.Errorf("raw loop: %w", err)
	}
	return nil
}

// runFlow runs the flow-control benchmark.
func runFlow(ctx context.Context, o *options) error {
	d, _ := os.MkdirTemp(o.dir, "flow-")
	res, err := bench.Flow(ctx, o.bin, d, o.flow.rows, o.flow.queries, o.flow.ahead, o.rps)
	fmt.Printf("flow: %d rows x %d queries at %g req/s, max-ahead %d: MQ_JOBS peak %d jobs (bound K x M = %d), completed %v, wall %s\n",
		res.Rows, res.Queries, o.rps, res.MaxAhead, res.PeakJobs, res.MaxAhead*res.Queries, res.Completed, res.Wall.Round(time.Second))
	return err
}

// runPool runs the deployment-pool scenario.
func runPool(ctx context.Context, o *options) error {
	p := o.pool
	if p.east <= 0 || p.west <= 0 || p.workers < 1 {
		return usagef("pool: need --pool-east, --pool-west > 0 and --pool-workers >= 1")
	}
	c := bench.PoolConfig{Bin: o.bin, Dir: o.dir, EastRPS: p.east, WestRPS: p.west, Burst: o.burst, Latency: o.latency,
		Workers: p.workers, Slots: o.throttle.conc, Warmup: o.throttle.warmup, Measure: o.throttle.measure, Log: os.Stdout,
		KillAfterMeasure: true, CompletionTimeout: p.completionTimeout}
	fmt.Printf("mqbench pool: east %g + west %g req/s (burst %d, latency %s), %d workers x %d slots; warm-up %s, window %s; work dir %s\n",
		c.EastRPS, c.WestRPS, c.Burst, c.Latency, c.Workers, c.Slots, c.Warmup, c.Measure, c.Dir)
	res, err := bench.Pool(ctx, c)
	fmt.Printf("pool: goodput %.1f %% of %g req/s (east %d, west %d answers), 429s %.1f %% of %d answers; east killed: run of %d rows completed %v (west answered %d after the kill), wall %s\n",
		100*res.Goodput, c.EastRPS+c.WestRPS, res.EastOK, res.WestOK, 100*res.Share429, res.Total, res.Rows, res.Completed, res.WestOKAfterKill, res.Wall.Round(time.Second))
	return err
}

// runTokens runs the token-budget scenario.
func runTokens(ctx context.Context, o *options) error {
	p := o.pool
	if p.workers < 1 {
		return usagef("tokens: need --pool-workers >= 1")
	}
	c := bench.TokensConfig{Bin: o.bin, Dir: o.dir, TPM: p.tokens, Latency: o.latency, Workers: p.workers, Slots: o.throttle.conc,
		Warmup: o.throttle.warmup, Measure: o.throttle.measure, Learned: p.tokensLearned, Log: os.Stdout}
	how := "throttle.tokens_per_minute"
	if c.Learned {
		how = "x-ratelimit-limit-tokens"
	}
	fmt.Printf("mqbench tokens: llmsim %d tokens/min (latency %s), budget from %s; %d workers x %d slots; warm-up %s, window %s; work dir %s\n",
		c.TPM, c.Latency, how, c.Workers, c.Slots, c.Warmup, c.Measure, c.Dir)
	res, err := bench.Tokens(ctx, c)
	fmt.Printf("tokens: goodput %.1f %% of %d tokens/min (%d tokens in %d answers), 429s %.1f %% of %d answers\n",
		100*res.Goodput, c.TPM, res.Tokens, res.OK, 100*res.Share429, res.Total)
	return err
}

// runMemory measures the collector's peak RSS for each row count.
func runMemory(ctx context.Context, o *options) error {
	counts, err := positiveInts("--collector-memory", o.memory)
	if err != nil {
		return err
	}
	for _, n := range counts {
		d, _ := os.MkdirTemp(o.dir, "mem-")
		res, err := bench.CollectorMemory(ctx, o.bin, d, n)
		if err != nil {
			return err
		}
		fmt.Printf("collector: %d rows x 2 queries: peak RSS %.1f MiB, wall %s\n", n, float64(res.PeakRSSKB)/1024, res.Wall.Round(time.Second))
	}
	return nil
}

// runStart runs the start-storm scenario and prints its table.
func runStart(ctx context.Context, o *options) error {
	workers, err := positiveInts("--start-workers", o.start.workers)
	if err != nil {
		return err
	}
	c := bench.StartConfig{Bin: o.bin, Dir: o.dir, Headers: cli.List(o.start.headers), Workers: workers, Slots: o.start.slots,
		Rows: o.start.rows, Queries: o.start.queries, Runs: o.runs, RPS: o.start.rps, Burst: o.start.burst, Latency: o.latency, Throttle: o.start.throttle, Log: os.Stdout}
	for _, h := range c.Headers {
		if h != "none" && h != "openai" && h != "azure" {
			return usagef("--start-headers: %q is not none, openai or azure", h)
		}
	}
	if c.Slots < 1 || c.Rows < 1 || c.Queries < 1 || c.RPS <= 0 {
		return usagef("start: need --start-slots, --start-rows, --start-queries >= 1 and --start-rps > 0")
	}
	throttle := "the shipped defaults"
	if c.Throttle != "" {
		throttle = c.Throttle
	}
	fmt.Printf("mqbench start: llmsim %g req/s burst %d, latency %s; %d rows x %d queries, run twice per fresh fleet of W x %d slots; throttle %s; %d repetitions; work dir %s\n",
		c.RPS, c.Burst, c.Latency, c.Rows, c.Queries, c.Slots, throttle, c.Runs, c.Dir)
	res, err := bench.StartStorm(ctx, c)
	fmt.Println()
	fmt.Print(bench.StartTable(res))
	return err
}

// runChurn runs the churn scenarios and prints their table.
func runChurn(ctx context.Context, o *options) error {
	c := bench.ChurnConfig{Bin: o.bin, Dir: o.dir, Scenarios: cli.List(o.churn.scenarios), Modes: cli.List(o.modes), Runs: o.runs,
		RPS: o.rps, Burst: o.burst, Latency: o.latency, Warmup: o.throttle.warmup, Duration: o.churn.duration,
		Workers: o.churn.workers, Slots: o.churn.slots, ScaleFrom: o.churn.scaleFrom, ScaleTo: o.churn.scaleTo,
		ScaleAfter: o.churn.scaleAfter, Log: os.Stdout}
	for _, sc := range c.Scenarios {
		if sc != "rolling" && sc != "scaleup" {
			return usagef("--churn: %q is not rolling or scaleup", sc)
		}
	}
	if c.ScaleTo <= c.ScaleFrom || c.ScaleFrom < 1 || c.Workers < 1 || c.Slots < 1 {
		return usagef("churn: need --churn-workers, --churn-slots, --scaleup-from >= 1 and --scaleup-to > --scaleup-from")
	}
	fmt.Printf("mqbench churn: llmsim %g req/s burst %d, latency %s; rolling %dx%d, scaleup %dx%d -> %dx%d after %s; rows for %s at the limit; warm-up %s; work dir %s\n",
		c.RPS, c.Burst, c.Latency, c.Workers, c.Slots, c.ScaleFrom, c.Slots, c.ScaleTo, c.Slots, c.ScaleAfter, c.Duration, c.Warmup, c.Dir)
	res, err := bench.Churn(ctx, c)
	fmt.Println()
	fmt.Print(bench.ChurnTable(res))
	return err
}

// runThrottle runs the throttle cells (unless --adapt-only), then the limit-change
// scenario (with --adapt or --adapt-only).
func runThrottle(ctx context.Context, o *options) error {
	t := o.throttle
	fleets, err := bench.ParseShapes(t.workers, t.conc)
	if err != nil {
		return usagef("--workers: %w", err)
	}
	adaptFleet, err := bench.ParseShape(t.adaptWorkers, t.conc)
	if err != nil {
		return usagef("--adapt-workers: %w", err)
	}
	cfg := bench.ThrottleConfig{Bin: o.bin, Dir: o.dir, Fleets: fleets, Runs: o.runs, Modes: cli.List(o.modes), NaiveRuns: t.naiveRuns,
		Warmup: t.warmup, Measure: t.measure, RPS: o.rps, Burst: o.burst, Latency: o.latency, Concurrency: t.conc, IdleFor: t.idleFor, Log: os.Stdout}
	fmt.Printf("mqbench: llmsim %g req/s burst %d, latency %s; W = workers x %d slots unless WxS; idle %s, warm-up %s, window %s; work dir %s\n",
		cfg.RPS, cfg.Burst, cfg.Latency, cfg.Concurrency, cfg.IdleFor, cfg.Warmup, cfg.Measure, cfg.Dir)
	if !t.adaptOnly {
		cells, err := bench.Throttle(ctx, cfg)
		fmt.Println()
		fmt.Print(bench.Table(cells))
		fmt.Println()
		fmt.Print(bench.TrafficTable(cells))
		if err != nil {
			return err
		}
	}
	if !t.adapt && !t.adaptOnly {
		return nil
	}
	res, err := bench.Adapt(ctx, cfg, adaptFleet, 40*time.Second, 80*time.Second, 40*time.Second)
	if err != nil {
		return fmt.Errorf("adapt: %w", err)
	}
	fmt.Printf("\nlimit 50 -> 20 req/s (%s): 429 share over [t+5 s, t+35 s] = %.1f %% (per second ok/429: %s)\n", adaptFleet, 100*res.Share429AfterDrop, strings.Join(res.PerSecondDrop, " "))
	fmt.Printf("limit 20 -> 50 req/s (%s): goodput >= 90 %% of 50 after %s (per second ok/429: %s)\n", adaptFleet, res.RecoverAfterRise, strings.Join(res.PerSecond, " "))
	return nil
}

// positiveInts parses a comma-separated list of positive integers.
func positiveInts(name, v string) ([]int, error) {
	var out []int
	for _, f := range cli.List(v) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, usagef("%s: %q is not a positive integer", name, f)
		}
		out = append(out, n)
	}
	return out, nil
}
