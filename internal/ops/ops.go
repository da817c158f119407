// Package ops owns what every process exposes to operators: the zerolog logger (JSON,
// or console on a TTY), the HTTP endpoints /metrics, /healthz and /readyz, and the
// metrics every process shares (mq_build_info, the NATS connection's state).
package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/version"
)

// Logger builds the process logger: console output on a terminal, JSON otherwise.
func Logger(component, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	var l zerolog.Logger
	if isatty.IsTerminal(os.Stderr.Fd()) {
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	} else {
		l = zerolog.New(os.Stderr)
	}
	return l.Level(lvl).With().Timestamp().Str("process", component).Logger()
}

// Server serves /metrics, /healthz and /readyz.
type Server struct {
	addr  string
	reg   *prometheus.Registry
	ready atomic.Bool
	check func() bool
	log   zerolog.Logger
	pprof bool
	bound atomic.Pointer[string] // the address listened on, once listening
	// fallback: a taken address is replaced by a free port of the same host.
	fallback bool
}

// FallBackWhenTaken makes Run serve on a free port of the same host, logged, when the
// address is in use (a second worker on one host, with the default address): for an
// address the operator did not choose. An address the operator chose stays strict.
func (s *Server) FallBackWhenTaken() { s.fallback = true }

// Addr is the address the server listens on ("" before it listens): with --ops-addr
// :0, the port picked.
func (s *Server) Addr() string {
	if a := s.bound.Load(); a != nil {
		return *a
	}
	return ""
}

// EnablePprof mounts net/http/pprof under /debug/pprof/ on the ops address. Off by
// default: profiles expose internals and cost CPU while taken.
func (s *Server) EnablePprof() { s.pprof = true }

// ReadyWhen adds a readiness condition (e.g. the NATS connection is up).
func (s *Server) ReadyWhen(f func() bool) { s.check = f }

// NewServer builds the ops server; addr "" disables it. Besides cs, /metrics has the
// Go runtime's and the process's metrics, and mq_build_info.
func NewServer(addr string, log zerolog.Logger, cs ...prometheus.Collector) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), BuildInfo())
	reg.MustRegister(cs...)
	return &Server{addr: addr, reg: reg, log: log}
}

// BuildInfo is the gauge mq_build_info{version,revision,go_version}, always 1: the
// labels say which build a process runs (package version).
func BuildInfo() prometheus.Collector {
	i := version.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "mq_build_info",
		Help:        "Always 1; the labels are the build this process runs: version, VCS revision, Go version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "go_version": i.GoVersion}})
	g.Set(1)
	return g
}

// NATSMetrics are the NATS connection's state, read at each scrape:
// mq_nats_connected (1 while connected, 0 while disconnected or reconnecting) and
// mq_nats_reconnects_total.
func NATSMetrics(nc *nats.Conn) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mq_nats_connected",
			Help: "1 while the process's NATS connection is up, 0 while it is down or reconnecting."},
			func() float64 {
				if nc.IsConnected() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mq_nats_reconnects_total",
			Help: "Times the process's NATS connection was re-established after a loss."},
			func() float64 { return float64(nc.Stats().Reconnects) }),
	}
}

// SetReady flips /readyz.
func (s *Server) SetReady(v bool) { s.ready.Store(v) }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if s.addr == "" {
		<-ctx.Done()
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.ready.Load() && (s.check == nil || s.check()) {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	if s.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	ln, err := s.listen()
	if err != nil {
		return err
	}
	bound := ln.Addr().String()
	s.bound.Store(&bound)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	// Shut down when ctx ends, or at once when Serve fails.
	served, stop := context.WithCancel(ctx)
	defer stop()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		<-served.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.log.Info().Str("addr", bound).Bool("pprof", s.pprof).Msg("ops endpoints: /metrics /healthz /readyz")
	err = srv.Serve(ln)
	stop()
	<-shut
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listen listens on the ops address, or with fallback on a free port of its host when
// the address is in use.
func (s *Server) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", s.addr)
	if err == nil || !s.fallback || !errors.Is(err, syscall.EADDRINUSE) {
		if err != nil {
			return nil, fmt.Errorf("ops endpoints on %s: %w", s.addr, err)
		}
		return ln, nil
	}
	host, _, serr := net.SplitHostPort(s.addr)
	if serr != nil {
		return nil, fmt.Errorf("ops endpoints on %s: %w", s.addr, err)
	}
	ln, ferr := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if ferr != nil {
		return nil, fmt.Errorf("ops endpoints on %s: %w (and on a free port: %w)", s.addr, err, ferr)
	}
	s.log.Warn().Str("taken", s.addr).Str("addr", ln.Addr().String()).
		Msg("ops address in use (another process on this host?): serving on a free port instead; give each process its own --ops-addr for a fixed scrape target")
	return ln, nil
}

// Serve runs a component next to its ops endpoints and returns when the component
// returns (or the endpoints fail, which stops the component): the endpoints report ready
// once the component is started, and not ready from the moment ctx ends (the drain
// starts). /metrics and /healthz are served until the component has returned, so the
// drain is observed to its end.
func (s *Server) Serve(ctx context.Context, run func(context.Context) error) error {
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	// The endpoints outlive ctx: they stop once run has returned.
	opsCtx, stopOps := context.WithCancel(context.WithoutCancel(ctx))
	defer stopOps()
	opsErr := make(chan error, 1)
	go func() {
		err := s.Run(opsCtx)
		if err != nil {
			stopRun() // no endpoints: the component stops
		}
		opsErr <- err
	}()
	notReady := context.AfterFunc(ctx, func() { s.SetReady(false) }) // draining: not ready for new work
	defer notReady()
	s.SetReady(true)
	err := run(runCtx)
	s.SetReady(false)
	stopOps()
	if oerr := <-opsErr; err == nil {
		err = oerr
	}
	return err
}
