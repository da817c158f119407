// Package ops owns what every process exposes to operators: the zerolog logger (JSON,
// or console on a TTY), the HTTP endpoints /metrics, /healthz and /readyz, and the
// NATS URL default.
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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
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
	// fallback: a taken address is replaced by a free port of the same host.
	fallback bool
}

// FallBackWhenTaken makes Run serve on a free port of the same host, logged, when the
// address is in use (a second worker on one host, with the default address): for an
// address the operator did not choose. An address the operator chose stays strict.
func (s *Server) FallBackWhenTaken() { s.fallback = true }

// EnablePprof mounts net/http/pprof under /debug/pprof/ on the ops address. Off by
// default: profiles expose internals and cost CPU while taken.
func (s *Server) EnablePprof() { s.pprof = true }

// ReadyWhen adds a readiness condition (e.g. the NATS connection is up).
func (s *Server) ReadyWhen(f func() bool) { s.check = f }

// NewServer builds the ops server; addr "" disables it.
func NewServer(addr string, log zerolog.Logger, cs ...prometheus.Collector) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(cs...)
	return &Server{addr: addr, reg: reg, log: log}
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.log.Info().Str("addr", ln.Addr().String()).Bool("pprof", s.pprof).Msg("ops endpoints: /metrics /healthz /readyz")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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

// Serve runs a component next to its ops endpoints and returns when either ends: the
// endpoints report ready once the component is started.
func (s *Server) Serve(ctx context.Context, run func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Run(gctx) })
	g.Go(func() error {
		s.SetReady(true)
		return run(gctx)
	})
	g.Go(func() error {
		<-gctx.Done() // draining: not ready for new work
		s.SetReady(false)
		return nil
	})
	return g.Wait()
}
