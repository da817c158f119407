// Command worker serves query jobs: it pulls jobs of its configured deployments from
// NATS JetStream, calls the model, and publishes each job's final result. Run as many
// replicas as you like; SIGTERM drains (stop pulling, finish or NAK in-flight jobs).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/worker"
)

func main() { os.Exit(run()) }

// run returns the exit code, so that every deferred cleanup (the NATS drain) runs:
// 0 done, 1 failed while running, 2 bad flags or configuration.
func run() int {
	var (
		natsURL     = flag.String("nats", ops.NATSURL(), "NATS server URL (env NATS_URL)")
		cfgPath     = flag.String("config", "", "worker config (YAML: deployments), required")
		concurrency = flag.Int("concurrency", worker.DefaultConcurrency, "in-flight calls per deployment")
		name        = flag.String("name", "", "worker name (default host-pid)")
		drain       = flag.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight calls may finish")
		ackWait     = flag.Duration("ack-wait", 10*time.Second, "job AckWait (in-flight jobs are kept alive with InProgress)")
		replicas    = flag.Int("replicas", 1, "stream replicas when creating streams (3 in a NATS cluster)")
		opsAddr     = flag.String("ops-addr", ":9090", "address of /metrics, /healthz, /readyz (empty: off)")
		profile     = flag.Bool("pprof", false, "serve net/http/pprof under /debug/pprof/ on --ops-addr")
		mode        = flag.String("throttle", "fleet", "fleet (the fleet-wide AIMD throttle) | naive (benchmark baseline: no pacing, fixed 1 s NAK)")
		level       = flag.String("log-level", "info", "log level")
	)
	flag.Parse()
	log := ops.Logger("worker", *level)
	if *cfgPath == "" {
		fmt.Fprintln(os.Stderr, "worker: --config is required")
		return 2
	}
	if *mode != "fleet" && *mode != "naive" {
		fmt.Fprintf(os.Stderr, "worker: --throttle: %q is not fleet or naive\n", *mode)
		return 2
	}
	wc, err := config.LoadWorker(*cfgPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		return 2
	}
	deps, err := worker.DeploymentsFromConfig(wc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, js, err := queue.ConnectJetStream(*natsURL, "multiquery-worker", log)
	if err != nil {
		log.Error().Err(err).Msg("connect")
		return 1
	}
	defer nc.Drain()
	w, err := worker.New(js, worker.Config{Name: *name, Concurrency: *concurrency, Deployments: deps, DrainTimeout: *drain, Naive: *mode == "naive",
		Topology: queue.Topology{AckWait: *ackWait, Replicas: *replicas}}, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		return 2
	}
	srv := ops.NewServer(*opsAddr, log, append(w.Collectors(), queue.Collectors()...)...)
	if *profile {
		srv.EnablePprof()
	}
	srv.ReadyWhen(func() bool { return nc.IsConnected() && w.Started() })
	if err := srv.Serve(ctx, w.Run); err != nil {
		log.Error().Err(err).Msg("worker stopped")
		return 1
	}
	return 0
}
