// Command mqchaos runs the whole system as real processes while killing them (kill -9 of
// random workers, the collector, nats-server), then checks that every input row came out
// exactly once and never partially. It exits 1 on any violation.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/bench"
	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/version"
)

func main() { os.Exit(run(os.Args[1:])) }

// options is everything the command reads from its flags.
type options struct {
	cfg   bench.ChaosConfig // Dir, Seed and Faults are set per run
	dir   string
	seeds []uint64
}

// run returns the exit code: 0 every seed passed, 1 a violation or failure, 2 bad flags.
func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		return cli.ParseExit(err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	failed := false
	for _, sd := range o.seeds {
		d, err := seedDir(o.dir, sd)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return cli.ExitFailed
		}
		passed := runSeed(ctx, o.cfg, d, sd)
		failed = failed || !passed
		finishSeedDir(d, o.dir == "", passed)
	}
	if failed {
		return cli.ExitFailed
	}
	return cli.ExitOK
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("mqchaos", flag.ContinueOnError)
	var (
		o      = options{cfg: bench.ChaosConfig{Log: os.Stdout}}
		c      = &o.cfg
		seeds  string
		faults string
	)
	ver := version.Register(fs)
	fs.StringVar(&c.Bin, "bin", "bin", "directory of the built binaries (make build)")
	fs.StringVar(&o.dir, "dir", "", "work directory (default: a temp dir)")
	fs.IntVar(&c.Rows, "rows", 2000, "input rows")
	fs.IntVar(&c.Queries, "queries", 4, "queries per row")
	fs.IntVar(&c.Workers, "workers", 3, "worker processes")
	fs.StringVar(&seeds, "seeds", "1", "comma-separated seeds: one run each")
	fs.DurationVar(&c.KillEvery, "kill-every", 3*time.Second, "kill -9 a random worker this often")
	fs.IntVar(&c.CollectorKills, "collector-kills", 2, "kill -9 of the collector per run")
	fs.IntVar(&c.NATSKills, "nats-kills", 1, "kill -9 of nats-server per run")
	fs.StringVar(&faults, "faults", "429=1,503=1,500=1,invalid_json=1,missing_field=1", "llmsim faults (5 % mixed)")
	fs.DurationVar(&c.Timeout, "timeout", 6*time.Minute, "a run must complete within this")
	fs.BoolVar(&c.Cluster, "cluster", false, "a 3-node JetStream cluster with 3 replicas; --nats-kills kill -9 nodes that stay down")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if ver.Print(os.Stdout, "mqchaos") {
		return o, version.ErrPrinted
	}
	c.Faults = strings.Split(faults, ",")
	for _, seed := range strings.Split(seeds, ",") {
		var sd uint64
		if _, err := fmt.Sscan(seed, &sd); err != nil {
			fmt.Fprintf(fs.Output(), "mqchaos: --seeds: %q is not a number\n", seed)
			return o, err
		}
		o.seeds = append(o.seeds, sd)
	}
	return o, nil
}

// seedDir is a seed's work directory: <dir>/seed-<seed>, or a new temp dir.
func seedDir(dir string, seed uint64) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", "mqchaos-")
	}
	d := fmt.Sprintf("%s/seed-%d", dir, seed)
	return d, os.MkdirAll(d, 0o755)
}

// finishSeedDir removes a seed's temporary directory (made, not given with --dir) once
// the seed passed: each holds a few hundred MB of stores. A failed seed's stays, for its
// logs (runSeed names it).
func finishSeedDir(dir string, made, passed bool) {
	if !made || !passed {
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "mqchaos: remove the seed's directory:", err)
	}
}

// runSeed runs one chaos run, prints its report and verdict, and tells whether it passed.
func runSeed(ctx context.Context, c bench.ChaosConfig, dir string, seed uint64) bool {
	c.Dir, c.Seed = dir, seed
	rep, err := bench.Chaos(ctx, c)
	if err == nil {
		err = bench.CheckChaos(rep)
	}
	fmt.Printf("mqchaos seed %d: %s\n", seed, rep)
	if err != nil {
		fmt.Printf("mqchaos seed %d: FAIL: %v (logs in %s)\n", seed, err, dir)
		return false
	}
	fmt.Printf("mqchaos seed %d: PASS\n", seed)
	return true
}
