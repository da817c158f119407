// Command mqchaos runs the whole system as real processes while killing them (kill -9 of
// random workers, the collector, nats-server), then checks that every input row came out
// exactly once and never partially. It exits 1 on any violation.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/multiquery/multiquery/internal/bench"
)

func main() {
	var (
		bin        = flag.String("bin", "bin", "directory of the built binaries (make build)")
		dir        = flag.String("dir", "", "work directory (default: a temp dir)")
		rows       = flag.Int("rows", 2000, "input rows")
		queries    = flag.Int("queries", 4, "queries per row")
		workers    = flag.Int("workers", 3, "worker processes")
		seeds      = flag.String("seeds", "1", "comma-separated seeds: one run each")
		killEvery  = flag.Duration("kill-every", 3*time.Second, "kill -9 a random worker this often")
		collectors = flag.Int("collector-kills", 2, "kill -9 of the collector per run")
		nats       = flag.Int("nats-kills", 1, "kill -9 of nats-server per run")
		faults     = flag.String("faults", "429=1,503=1,500=1,invalid_json=1,missing_field=1", "llmsim faults (5 % mixed)")
		timeout    = flag.Duration("timeout", 6*time.Minute, "a run must complete within this")
		cluster    = flag.Bool("cluster", false, "a 3-node JetStream cluster with 3 replicas; --nats-kills kill -9 nodes that stay down")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	failed := false
	for _, seed := range strings.Split(*seeds, ",") {
		var sd uint64
		if _, err := fmt.Sscan(seed, &sd); err != nil {
			fmt.Fprintf(os.Stderr, "mqchaos: --seeds: %q is not a number\n", seed)
			os.Exit(2)
		}
		d := *dir
		if d == "" {
			var err error
			if d, err = os.MkdirTemp("", "mqchaos-"); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		} else {
			d = fmt.Sprintf("%s/seed-%d", d, sd)
			if err := os.MkdirAll(d, 0o755); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		rep, err := bench.Chaos(ctx, bench.ChaosConfig{Bin: *bin, Dir: d, Rows: *rows, Queries: *queries, Workers: *workers, Seed: sd,
			KillEvery: *killEvery, CollectorKills: *collectors, NATSKills: *nats, Faults: strings.Split(*faults, ","), Timeout: *timeout, Cluster: *cluster, Log: os.Stdout})
		if err == nil {
			err = bench.CheckChaos(rep)
		}
		fmt.Printf("mqchaos seed %d: %s\n", sd, rep)
		if err != nil {
			fmt.Printf("mqchaos seed %d: FAIL: %v (logs in %s)\n", sd, err, d)
			failed = true
		} else {
			fmt.Printf("mqchaos seed %d: PASS\n", sd)
		}
	}
	if failed {
		os.Exit(1)
	}
}
