// Command mqbench runs the throttle benchmark on real processes (see docs/BENCHMARKS.md):
// for each throttle mode and fleet shape (W, WxS, AxS+BxT) it starts nats-server, llmsim
// with a token-bucket limit, the worker processes, the collector and the producer, and
// measures goodput and 429 share from llmsim's request log, the workers' RSS and CPU idle
// and at work, and the throttle's core-NATS traffic; then the limit-change scenario.
// Instead of that: the churn scenarios (--churn), the start storm (--start), the cost
// benchmark (--cost), flow control (--flow-rows) or the collector's memory.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/multiquery/multiquery/internal/bench"
)

func main() {
	var (
		bin     = flag.String("bin", "bin", "directory of the built binaries (make build)")
		dir     = flag.String("dir", "", "work directory (default: a temp dir)")
		workers = flag.String("workers", "1,2,4,8", "fleets: W (W workers x --concurrency slots), WxS (W workers x S slots), or groups joined by + (4x64+28x4)")
		runs    = flag.Int("runs", 3, "runs per cell (the table keeps the worst)")
		modes   = flag.String("modes", "fleet,naive", "throttle modes")
		warmup  = flag.Duration("warmup", 10*time.Second, "warm-up excluded from the measurement")
		measure = flag.Duration("measure", 60*time.Second, "measurement window")
		rps     = flag.Float64("rps", 50, "llmsim request limit (token bucket)")
		burst   = flag.Int("burst", 5, "llmsim bucket size")
		latency = flag.Duration("latency", 50*time.Millisecond, "llmsim latency")
		conc    = flag.Int("concurrency", 32, "worker --concurrency")
		adapt   = flag.Bool("adapt", true, "also run the 50 -> 20 -> 50 req/s scenario with --adapt-workers")
		adaptW  = flag.String("adapt-workers", "4", "fleet of the limit-change scenario: W, WxS or groups joined by +")
		idleFor = flag.Duration("idle-for", 5*time.Second, "throttle cells: how long the fleet's idle CPU is measured before the run")
		churn   = flag.String("churn", "", "instead: churn scenarios, comma-separated: rolling (replace every worker one by one), scaleup (--scaleup-from workers, more to --scaleup-to); each --runs times per --modes, at --rps/--burst")
		churnW  = flag.Int("churn-workers", 16, "rolling: workers")
		churnS  = flag.Int("churn-slots", 8, "rolling and scaleup: slots per worker")
		churnD  = flag.Duration("churn-duration", 90*time.Second, "churn: rows for this long at the limit")
		scaleA  = flag.Int("scaleup-from", 4, "scaleup: workers at the start")
		scaleB  = flag.Int("scaleup-to", 32, "scaleup: workers after the scale-up")
		scaleT  = flag.Duration("scaleup-after", 20*time.Second, "scaleup: when the workers are added, after the first request")
		start   = flag.Bool("start", false, "instead: the start-storm scenario (a fresh fleet runs the same job twice in a row), each case --runs times")
		startH  = flag.String("start-headers", "none,openai,azure", "start: llmsim --ratelimit-headers modes (azure is llmsim's default and not passed)")
		startW  = flag.String("start-workers", "1,4", "start: fleet sizes")
		startS  = flag.Int("start-slots", 32, "start: slots per worker")
		startR  = flag.Int("start-rows", 100, "start: rows per run")
		startQ  = flag.Int("start-queries", 4, "start: queries per row")
		startP  = flag.Float64("start-rps", 40, "start: llmsim request limit")
		startB  = flag.Int("start-burst", 5, "start: llmsim bucket size")
		adaptOn = flag.Bool("adapt-only", false, "run only the limit-change scenario")
		memory  = flag.String("collector-memory", "", "instead: the collector's peak RSS for these row counts (e.g. 50000,200000), 2 queries a row")
		nruns   = flag.Int("naive-runs", 1, "runs per cell of the naive baseline")
		flowN   = flag.Int("flow-rows", 0, "instead: flow control, this many rows x --flow-queries through a fleet limited to --rps, producer --max-ahead --flow-ahead")
		flowQ   = flag.Int("flow-queries", 1, "queries per row of the flow run")
		flowK   = flag.Int("flow-ahead", 1000, "producer --max-ahead of the flow run")
		cost    = flag.Bool("cost", false, "instead: CPU per query of the pipeline against a raw JetStream loop, --rounds rounds interleaved")
		rounds  = flag.Int("rounds", 3, "rounds of the cost benchmark")
		rawJobs = flag.Int("raw-jobs", 20000, "jobs per raw-loop measurement (cost benchmark)")
		shapes  = flag.String("shapes", "20000x1,2000x10", "pipeline runs of the cost benchmark, rows x queries")
		child   = flag.Bool("raw-loop-child", false, "internal: run one raw loop and print its result as JSON")
		natsURL = flag.String("nats", "", "internal: NATS URL of --raw-loop-child")
		rawSim  = flag.String("raw-sim", "", "internal: llmsim URL of --raw-loop-child (empty: no HTTP call)")
		rawSlot = flag.Int("raw-slots", 512, "internal: slots of --raw-loop-child")
		latRows = flag.Int("latency-calls-per-slot", 20, "latency-bound runs: calls per slot")
		profile = flag.String("profile", "", "cost benchmark: a directory for CPU profiles of workers, collector and nats-server during each pipeline run")
		profFor = flag.Duration("profile-for", 3*time.Second, "cost benchmark: length of each CPU profile")
		withLat = flag.Bool("cost-latency", true, "cost benchmark: also run the latency-bound and replaced-system scenarios")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *dir == "" {
		d, err := os.MkdirTemp("", "mqbench-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		*dir = d
	}
	if *child {
		res, err := bench.RawLoop(ctx, bench.RawLoopConfig{NATSURL: *natsURL, SimURL: *rawSim, Jobs: *rawJobs, Slots: *rawSlot})
		if err != nil {
			fmt.Fprintln(os.Stderr, "mqbench: raw loop:", err)
			os.Exit(1)
		}
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		return
	}
	if *cost {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var sh [][2]int
		for _, f := range strings.Split(*shapes, ",") {
			var r, q int
			if _, err := fmt.Sscanf(strings.TrimSpace(f), "%dx%d", &r, &q); err != nil || r < 1 || q < 1 {
				fmt.Fprintf(os.Stderr, "mqbench: --shapes: %q is not ROWSxQUERIES\n", f)
				os.Exit(2)
			}
			sh = append(sh, [2]int{r, q})
		}
		fmt.Printf("mqbench cost: %d cores, %d rounds, raw loop %d jobs at %d slots, pipeline 2 workers x 256 slots, llmsim 0 latency\n",
			runtime.NumCPU(), *rounds, *rawJobs, 512)
		res, err := bench.Cost(ctx, bench.CostConfig{Bin: *bin, Dir: *dir, Self: self, Rounds: *rounds, RawJobs: *rawJobs,
			Shapes: sh, Slots: 256, Workers: 2, Log: os.Stdout, Profile: *profile, ProfileFor: *profFor})
		fmt.Print(bench.CostTable(res))
		if err != nil {
			fmt.Fprintln(os.Stderr, "mqbench:", err)
			os.Exit(1)
		}
		if !*withLat {
			return
		}
		cc := bench.CostConfig{Bin: *bin, Dir: *dir, Self: self}
		var lat []bench.LatencyRow
		for r := range *rounds {
			for _, ws := range [][2]int{{1, 64}, {2, 128}, {4, 256}} {
				rows, err := bench.LatencyBound(ctx, cc, 50*time.Millisecond, ws[0], ws[1], ws[1]*(*latRows), 1, bench.NonLimiting)
				lat = append(lat, rows...)
				if err != nil {
					fmt.Fprintln(os.Stderr, "mqbench: latency-bound:", err)
					os.Exit(1)
				}
			}
			// The replaced system's scenario: 50 rows x 10 queries, 100 slots, 50 ms,
			// shipped throttle defaults; ideal wall 500 / (100 / 50 ms) = 0.25 s.
			for _, ws := range [][2]int{{1, 100}, {4, 100}} {
				rows, err := bench.LatencyBound(ctx, bench.CostConfig{Bin: *bin, Dir: *dir}, 50*time.Millisecond, ws[0], ws[1], 50, 10, "")
				lat = append(lat, rows...)
				if err != nil {
					fmt.Fprintln(os.Stderr, "mqbench: replaced-system scenario:", err)
					os.Exit(1)
				}
			}
			fmt.Printf("latency round %d done\n", r+1)
		}
		fmt.Print(bench.LatencyTable(lat))
		return
	}
	if *flowN > 0 {
		d, _ := os.MkdirTemp(*dir, "flow-")
		res, err := bench.Flow(ctx, *bin, d, *flowN, *flowQ, *flowK, *rps)
		fmt.Printf("flow: %d rows x %d queries at %g req/s, max-ahead %d: MQ_JOBS peak %d jobs (bound K x M = %d), completed %v, wall %s\n",
			res.Rows, res.Queries, *rps, res.MaxAhead, res.PeakJobs, res.MaxAhead*res.Queries, res.Completed, res.Wall.Round(time.Second))
		if err != nil {
			fmt.Fprintln(os.Stderr, "mqbench:", err)
			os.Exit(1)
		}
		return
	}
	if *memory != "" {
		for _, f := range strings.Split(*memory, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "mqbench: --collector-memory: %q is not a positive integer\n", f)
				os.Exit(2)
			}
			d, _ := os.MkdirTemp(*dir, "mem-")
			res, err := bench.CollectorMemory(ctx, *bin, d, n)
			if err != nil {
				fmt.Fprintln(os.Stderr, "mqbench:", err)
				os.Exit(1)
			}
			fmt.Printf("collector: %d rows x 2 queries: peak RSS %.1f MiB, wall %s\n", n, float64(res.PeakRSSKB)/1024, res.Wall.Round(time.Second))
		}
		return
	}
	if *start {
		runStart(ctx, bench.StartConfig{Bin: *bin, Dir: *dir, Headers: list(*startH), Workers: positiveInts("--start-workers", *startW),
			Slots: *startS, Rows: *startR, Queries: *startQ, Runs: *runs, RPS: *startP, Burst: *startB, Latency: *latency, Log: os.Stdout})
		return
	}
	if *churn != "" {
		runChurn(ctx, bench.ChurnConfig{Bin: *bin, Dir: *dir, Scenarios: list(*churn), Modes: list(*modes), Runs: *runs, RPS: *rps, Burst: *burst,
			Latency: *latency, Warmup: *warmup, Duration: *churnD, Workers: *churnW, Slots: *churnS, ScaleFrom: *scaleA, ScaleTo: *scaleB,
			ScaleAfter: *scaleT, Log: os.Stdout})
		return
	}
	fleets, err := bench.ParseShapes(*workers, *conc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqbench: --workers:", err)
		os.Exit(2)
	}
	adaptFleet, err := bench.ParseShape(*adaptW, *conc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqbench: --adapt-workers:", err)
		os.Exit(2)
	}
	cfg := bench.ThrottleConfig{Bin: *bin, Dir: *dir, Fleets: fleets, Runs: *runs, Modes: list(*modes), NaiveRuns: *nruns,
		Warmup: *warmup, Measure: *measure, RPS: *rps, Burst: *burst, Latency: *latency, Concurrency: *conc, IdleFor: *idleFor, Log: os.Stdout}
	fmt.Printf("mqbench: llmsim %g req/s burst %d, latency %s; W = workers x %d slots unless WxS; idle %s, warm-up %s, window %s; work dir %s\n",
		*rps, *burst, *latency, *conc, *idleFor, *warmup, *measure, *dir)
	if !*adaptOn {
		cells, err := bench.Throttle(ctx, cfg)
		fmt.Println()
		fmt.Print(bench.Table(cells))
		fmt.Println()
		fmt.Print(bench.TrafficTable(cells))
		if err != nil {
			fmt.Fprintln(os.Stderr, "mqbench:", err)
			os.Exit(1)
		}
	}
	if *adapt || *adaptOn {
		res, err := bench.Adapt(ctx, cfg, adaptFleet, 40*time.Second, 80*time.Second, 40*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mqbench: adapt:", err)
			os.Exit(1)
		}
		fmt.Printf("\nlimit 50 -> 20 req/s (%s): 429 share over [t+5 s, t+35 s] = %.1f %% (per second ok/429: %s)\n", adaptFleet, 100*res.Share429AfterDrop, strings.Join(res.PerSecondDrop, " "))
		fmt.Printf("limit 20 -> 50 req/s (%s): goodput >= 90 %% of 50 after %s (per second ok/429: %s)\n", adaptFleet, res.RecoverAfterRise, strings.Join(res.PerSecond, " "))
	}
}

// list splits a comma-separated flag value, trimming blanks.
func list(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// positiveInts parses a comma-separated list of positive integers or exits.
func positiveInts(name, v string) []int {
	var out []int
	for _, f := range list(v) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "mqbench: %s: %q is not a positive integer\n", name, f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

// runChurn runs the churn scenarios and prints their table.
func runChurn(ctx context.Context, c bench.ChurnConfig) {
	for _, sc := range c.Scenarios {
		if sc != "rolling" && sc != "scaleup" {
			fmt.Fprintf(os.Stderr, "mqbench: --churn: %q is not rolling or scaleup\n", sc)
			os.Exit(2)
		}
	}
	if c.ScaleTo <= c.ScaleFrom || c.ScaleFrom < 1 || c.Workers < 1 || c.Slots < 1 {
		fmt.Fprintln(os.Stderr, "mqbench: churn: need --churn-workers, --churn-slots, --scaleup-from >= 1 and --scaleup-to > --scaleup-from")
		os.Exit(2)
	}
	fmt.Printf("mqbench churn: llmsim %g req/s burst %d, latency %s; rolling %dx%d, scaleup %dx%d -> %dx%d after %s; rows for %s at the limit; warm-up %s; work dir %s\n",
		c.RPS, c.Burst, c.Latency, c.Workers, c.Slots, c.ScaleFrom, c.Slots, c.ScaleTo, c.Slots, c.ScaleAfter, c.Duration, c.Warmup, c.Dir)
	res, err := bench.Churn(ctx, c)
	fmt.Println()
	fmt.Print(bench.ChurnTable(res))
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqbench:", err)
		os.Exit(1)
	}
}

// runStart runs the start-storm scenario and prints its table.
func runStart(ctx context.Context, c bench.StartConfig) {
	for _, h := range c.Headers {
		if h != "none" && h != "openai" && h != "azure" {
			fmt.Fprintf(os.Stderr, "mqbench: --start-headers: %q is not none, openai or azure\n", h)
			os.Exit(2)
		}
	}
	if c.Slots < 1 || c.Rows < 1 || c.Queries < 1 || c.RPS <= 0 {
		fmt.Fprintln(os.Stderr, "mqbench: start: need --start-slots, --start-rows, --start-queries >= 1 and --start-rps > 0")
		os.Exit(2)
	}
	fmt.Printf("mqbench start: llmsim %g req/s burst %d, latency %s; %d rows x %d queries, run twice per fresh fleet of W x %d slots; %d repetitions; work dir %s\n",
		c.RPS, c.Burst, c.Latency, c.Rows, c.Queries, c.Slots, c.Runs, c.Dir)
	res, err := bench.StartStorm(ctx, c)
	fmt.Println()
	fmt.Print(bench.StartTable(res))
	if err != nil {
		fmt.Fprintln(os.Stderr, "mqbench:", err)
		os.Exit(1)
	}
}
