// Command worker serves query jobs: it pulls jobs of its configured deployments from
// NATS JetStream, calls the model, and publishes each job's final result. Run as many
// replicas as you like; SIGTERM drains (stop pulling, finish or NAK in-flight jobs).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/proc"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/worker"
)

func main() {
	proc.TuneGC(os.Getenv)
	os.Exit(run(os.Args[1:]))
}

// options is everything the command reads from its flags.
type options struct {
	proc.Flags
	cfgPath, name, mode string
	concurrency         int
	drain, ackWait      time.Duration
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var o options
	o.Register(fs, ":9090", "address of /metrics, /healthz, /readyz (empty: off)")
	o.RegisterPprof(fs)
	fs.StringVar(&o.cfgPath, "config", "", "worker config (YAML: deployments), required")
	fs.IntVar(&o.concurrency, "concurrency", worker.DefaultConcurrency, "in-flight calls per deployment")
	fs.StringVar(&o.name, "name", "", "worker name (default host-pid)")
	fs.DurationVar(&o.drain, "drain-timeout", worker.DefaultDrainTimeout, "on SIGTERM, how long in-flight calls may finish")
	fs.DurationVar(&o.ackWait, "ack-wait", queue.DefaultAckWait, "job AckWait (in-flight jobs are kept alive with InProgress)")
	fs.StringVar(&o.mode, "throttle", "fleet", "fleet (the fleet-wide AIMD throttle) | naive (benchmark baseline: no pacing, fixed 1 s NAK)")
	return o, fs.Parse(args)
}

// run returns the exit code, so that every deferred cleanup (the NATS drain) runs:
// 0 done, 1 failed while running, 2 bad flags or configuration.
func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		return cli.ParseExit(err)
	}
	if o.Version.Print(os.Stdout, "worker") {
		return cli.ExitOK
	}
	if err := o.Check(); err != nil {
		return cli.Usage("worker", err)
	}
	log := ops.Logger("worker", o.LogLevel)
	deps, err := o.deployments()
	if err != nil {
		return cli.Usage("worker", err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	nc, js, err := o.Connect("multiquery-worker", log)
	if err != nil {
		return cli.ExitFailed
	}
	defer nc.Drain()
	topo := o.Topology()
	topo.AckWait = o.ackWait
	w, err := worker.New(js, worker.Config{Name: o.name, Concurrency: o.concurrency, Deployments: deps, DrainTimeout: o.drain,
		Naive: o.mode == "naive", Topology: topo}, log)
	if err != nil {
		return cli.Usage("worker", err)
	}
	return o.Serve(ctx, "worker", nc, w, log, append(w.Collectors(), queue.Collectors()...)...)
}

// deployments checks the flags and loads the deployments of --config.
func (o options) deployments() ([]worker.Deployment, error) {
	if o.cfgPath == "" {
		return nil, errors.New("--config is required")
	}
	if o.mode != "fleet" && o.mode != "naive" {
		return nil, fmt.Errorf("--throttle: %q is not fleet or naive", o.mode)
	}
	wc, err := config.LoadWorker(o.cfgPath)
	if err != nil {
		return nil, err
	}
	return worker.DeploymentsFromConfig(wc)
}
