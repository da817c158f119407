// Command collector assembles query results into rows and writes each row exactly once
// to <out>/<run>/results.jsonl or errors.jsonl (and CSV with --csv), then summary.json
// when a sealed run is complete, and stores those files in the object store bucket
// mq_results (mqctl get fetches them). Run one per deployment of the system.
package main

import (
	"flag"
	"os"
	"time"

	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/proc"
	"github.com/multiquery/multiquery/internal/wire"
)

func main() {
	proc.TuneGC(os.Getenv)
	os.Exit(run(os.Args[1:]))
}

// options is everything the command reads from its flags.
type options struct {
	proc.Flags
	out, order, name string
	csv, escape      bool
	store            bool
	publishRows      bool
	memory           int64
	leaseTTL         time.Duration
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	var o options
	o.Register(fs, ":9091", "address of /metrics, /healthz, /readyz (empty: off)")
	o.RegisterPprof(fs)
	fs.StringVar(&o.out, "out", "out", "output directory (one sub-directory per run)")
	fs.BoolVar(&o.csv, "csv", false, "also write results.csv and errors.csv")
	fs.BoolVar(&o.escape, "csv-escape-formulas", true, "prefix CSV cells starting with = + - @ tab or CR with ' (spreadsheet formula injection); false writes them verbatim")
	fs.BoolVar(&o.publishRows, "publish-rows", false, "also publish each emitted row on the rows stream (rows.<run>.<row>; docs/WIRE.md, Output rows on the bus) for downstream consumers")
	fs.BoolVar(&o.store, "store-results", true, "store each completed run's files in the object store bucket "+wire.BucketResults+" (<prefix>_"+wire.BucketResults+" with --prefix; mqctl get); false keeps them on --out only")
	fs.StringVar(&o.order, "order", "", "row order: input | completion (default: the run's own)")
	fs.Int64Var(&o.memory, "memory-limit", collector.DefaultMemoryLimit, "bytes of row bodies kept in memory; beyond, read back from JetStream")
	fs.StringVar(&o.name, "name", "", "collector name in its lease (default host-pid)")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", lease.DefaultTTL, "single-active lease TTL; give every collector the same value")
	return o, fs.Parse(args)
}

// run returns the exit code, so that every deferred cleanup (the NATS drain) runs:
// 0 done, 1 failed while running, 2 bad flags or configuration.
func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		return cli.ParseExit(err)
	}
	if o.Version.Print(os.Stdout, "collector") {
		return cli.ExitOK
	}
	if err := o.Check(); err != nil {
		return cli.Usage("collector", err)
	}
	log := ops.Logger("collector", o.LogLevel)
	ctx, stop := cli.SignalContext()
	defer stop()
	nc, js, err := o.Connect("multiquery-collector", log)
	if err != nil {
		return cli.ExitFailed
	}
	defer nc.Drain()
	c, err := collector.New(js, collector.Config{OutDir: o.out, CSV: o.csv, CSVRawFormulas: !o.escape, Order: o.order, MemoryLimit: o.memory,
		Name: o.name, LeaseTTL: o.leaseTTL, Topology: o.Topology(), NoStore: !o.store, PublishRows: o.publishRows}, log)
	if err != nil {
		return cli.Usage("collector", err)
	}
	return o.Serve(ctx, "collector", nc, c, log, c.Collectors()...)
}
