// Package proc is what the long-running processes (worker, collector, producer) share
// in their commands: the common flags, the NATS connection, and serving the process next
// to its ops endpoints (/metrics, /healthz, /readyz).
package proc

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/natsconn"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/version"
	"github.com/multiquery/multiquery/internal/wire"
)

// Flags are the flags the worker, the collector and the producer share.
type Flags struct {
	NATS       natsconn.Options
	Prefix     string // --prefix: the deployment's names (wire.Names)
	Replicas   int
	ResultsTTL time.Duration
	OpsAddr    string
	Pprof      bool
	LogLevel   string
	// Version is --version: the command prints its version and exits.
	Version *version.Flag

	nats  *natsconn.Resolved // CheckNATS's result
	names wire.Names         // Check's result
	// opsAddrSet: --ops-addr was given (strict), not left at its default (which falls
	// back to a free port when taken: ops.Server.FallBackWhenTaken).
	opsAddrSet bool
}

// opsAddrFlag is --ops-addr: a string that records whether it was given.
type opsAddrFlag struct {
	addr *string
	set  *bool
}

func (f opsAddrFlag) String() string {
	if f.addr == nil {
		return ""
	}
	return *f.addr
}

func (f opsAddrFlag) Set(v string) error {
	*f.addr, *f.set = v, true
	return nil
}

// Register registers the NATS connection flags (--nats, --context, --nats-creds...,
// package natsconn), --prefix, --replicas, --results-ttl, --ops-addr (with its default
// and usage), --log-level and --version.
func (p *Flags) Register(fs *flag.FlagSet, opsAddr, opsUsage string) {
	p.NATS.Register(fs, os.Getenv)
	RegisterPrefix(fs, &p.Prefix, os.Getenv)
	fs.IntVar(&p.Replicas, "replicas", queue.DefaultReplicas, "stream replicas when creating streams (3 in a NATS cluster)")
	fs.DurationVar(&p.ResultsTTL, "results-ttl", queue.DefaultResultsTTL, "how long the results bucket ("+wire.BucketResults+" with no --prefix) keeps a run's stored files, when this process creates it")
	p.OpsAddr = opsAddr
	opsUsage = strings.Replace(opsUsage, "address", "`address`", 1) // -h: "-ops-addr address", not "value"
	if opsAddr != "" {
		opsUsage += "; when the default is in use (a second process on one host), a free port instead, logged"
	}
	fs.Var(opsAddrFlag{addr: &p.OpsAddr, set: &p.opsAddrSet}, "ops-addr", opsUsage)
	fs.StringVar(&p.LogLevel, "log-level", "info", "log level")
	p.Version = version.Register(fs)
}

// RegisterPprof registers --pprof.
func (p *Flags) RegisterPprof(fs *flag.FlagSet) {
	fs.BoolVar(&p.Pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on --ops-addr")
}

// EnvPrefix is the environment variable of --prefix.
const EnvPrefix = "MQ_PREFIX"

// RegisterPrefix registers --prefix on fs into p, defaulting to $MQ_PREFIX (read with
// env); wire.NewNames checks it.
func RegisterPrefix(fs *flag.FlagSet, p *string, env func(string) string) {
	fs.StringVar(p, "prefix", env(EnvPrefix), "prefix of every stream, subject and bucket name, so that several deployments share one NATS account: "+
		"streams <prefix>_MQ_JOBS, subjects <prefix>.jobs.>, buckets <prefix>_mq_runs (empty: the default names; every process of a deployment needs the same; env "+EnvPrefix+")")
}

// Topology is the stream topology the flags ask for (with the names Check derived).
func (p *Flags) Topology() queue.Topology {
	return queue.Topology{Names: p.names, Replicas: p.Replicas, ResultsTTL: p.ResultsTTL}
}

// Names are the deployment's names (--prefix), as Check derived them.
func (p *Flags) Names() wire.Names { return p.names }

// Check checks --prefix and the NATS connection flags (CheckNATS): its error is a usage
// error.
func (p *Flags) Check() error {
	names, err := wire.NewNames(p.Prefix)
	if err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	p.names = names
	return p.CheckNATS()
}

// CheckNATS checks the NATS connection flags (a context that exists, readable files,
// one authentication method): its error is a usage error.
func (p *Flags) CheckNATS() error {
	r, err := p.NATS.Resolve()
	if err != nil {
		return err
	}
	p.nats = &r
	return nil
}

// Connect connects to NATS JetStream under the connection name name with the
// connection flags (checked by CheckNATS first); a failure is logged ("connect").
func (p *Flags) Connect(name string, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	if p.nats == nil {
		if err := p.CheckNATS(); err != nil {
			log.Error().Err(err).Msg("connect")
			return nil, nil, err
		}
	}
	log.Info().Str("nats", p.nats.Describe()).Stringer("prefix", p.names).Msg("connecting")
	nc, js, err := queue.ConnectJetStream(p.nats.URL, name, log, p.nats.Opts...)
	if err != nil {
		log.Error().Err(err).Msg("connect")
	}
	return nc, js, err
}

// Component is a long-running process: the worker or the collector.
type Component interface {
	Run(ctx context.Context) error
	// Started reports that the component does its work (fetching; holding the lease or
	// standing by).
	Started() bool
}

// Serve runs c next to the ops endpoints (with cs and the NATS connection's state among
// the metrics) until ctx ends or either fails, ready while nc is connected and c started
// and ctx not over, and returns the exit code. It logs when ctx ends (a signal: the
// drain starts), a failure ("<what> stopped") and a clean end ("<what> stopped cleanly").
// /metrics and /healthz answer until c has drained (ops.Server.Serve).
func (p *Flags) Serve(ctx context.Context, what string, nc *nats.Conn, c Component, log zerolog.Logger, cs ...prometheus.Collector) int {
	srv := ops.NewServer(p.OpsAddr, log, append(ops.NATSMetrics(nc), cs...)...)
	if !p.opsAddrSet {
		srv.FallBackWhenTaken()
	}
	if p.Pprof {
		srv.EnablePprof()
	}
	srv.ReadyWhen(func() bool { return nc.IsConnected() && c.Started() })
	// SIGTERM or SIGINT: say so at once, as the drain may take a while.
	stopLog := context.AfterFunc(ctx, func() { log.Info().Msg("shutdown requested: " + what + " drains and exits") })
	defer stopLog()
	if err := srv.Serve(ctx, c.Run); err != nil {
		log.Error().Err(err).Msg(what + " stopped")
		return cli.ExitFailed
	}
	log.Info().Msg(what + " stopped cleanly")
	return cli.ExitOK
}
