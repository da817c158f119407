// Command collector assembles query results into rows and writes each row exactly once
// to <out>/<run>/results.jsonl or errors.jsonl (and CSV with --csv), then summary.json
// when a sealed run is complete. Run one per deployment of the system.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/queue"
)

func main() { os.Exit(run()) }

// run returns the exit code, so that every deferred cleanup (the NATS drain) runs:
// 0 done, 1 failed while running, 2 bad flags or configuration.
func run() int {
	var (
		natsURL  = flag.String("nats", ops.NATSURL(), "NATS server URL (env NATS_URL)")
		out      = flag.String("out", "out", "output directory (one sub-directory per run)")
		withCSV  = flag.Bool("csv", false, "also write results.csv and errors.csv")
		escape   = flag.Bool("csv-escape-formulas", true, "prefix CSV cells starting with = + - @ tab or CR with ' (spreadsheet formula injection); false writes them verbatim")
		order    = flag.String("order", "", "row order: input | completion (default: the run's own)")
		memory   = flag.Int64("memory-limit", 64<<20, "bytes of row bodies kept in memory; beyond, read back from JetStream")
		replicas = flag.Int("replicas", 1, "stream replicas when creating streams (3 in a NATS cluster)")
		opsAddr  = flag.String("ops-addr", ":9091", "address of /metrics, /healthz, /readyz (empty: off)")
		profile  = flag.Bool("pprof", false, "serve net/http/pprof under /debug/pprof/ on --ops-addr")
		name     = flag.String("name", "", "collector name in its lease (default host-pid)")
		leaseTTL = flag.Duration("lease-ttl", lease.DefaultTTL, "single-active lease TTL; give every collector the same value")
		level    = flag.String("log-level", "info", "log level")
	)
	flag.Parse()
	log := ops.Logger("collector", *level)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, js, err := queue.ConnectJetStream(*natsURL, "multiquery-collector", log)
	if err != nil {
		log.Error().Err(err).Msg("connect")
		return 1
	}
	defer nc.Drain()
	c, err := collector.New(js, collector.Config{OutDir: *out, CSV: *withCSV, CSVRawFormulas: !*escape, Order: *order, MemoryLimit: *memory, Name: *name, LeaseTTL: *leaseTTL,
		Topology: queue.Topology{Replicas: *replicas}}, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "collector: %v\n", err)
		return 2
	}
	srv := ops.NewServer(*opsAddr, log, c.Collectors()...)
	if *profile {
		srv.EnablePprof()
	}
	srv.ReadyWhen(func() bool { return nc.IsConnected() && c.Started() })
	if err := srv.Serve(ctx, c.Run); err != nil {
		log.Error().Err(err).Msg("collector stopped")
		return 1
	}
	return 0
}
