// Command llmsim serves the OpenAI-compatible LLM simulator of package
// internal/llmsim on one address until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// options is everything the command reads from its flags.
type options struct {
	addr     string
	logLevel string
	sim      llmsim.Config
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmsim:", err)
		os.Exit(2)
	}
	log, err := newLogger(opts.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmsim:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, log); err != nil {
		log.Error().Err(err).Msg("llmsim stopped")
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options, log zerolog.Logger) error {
	srv, err := llmsim.New(opts.sim, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", opts.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", opts.addr, err)
	}
	log.Info().
		Str("addr", ln.Addr().String()).
		Int("keys", len(opts.sim.Keys)).
		Strs("deployments", opts.sim.Deployments).
		Interface("settings", srv.Settings()).
		Msg("llmsim listening")
	return srv.Serve(ctx, ln)
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("llmsim", flag.ContinueOnError)
	var (
		opts       options
		keys, deps string
		cfg        = &opts.sim
		faults     = llmsim.Faults{}
		burstEvery time.Duration
		burstFor   time.Duration
	)
	fs.StringVar(&opts.addr, "addr", "127.0.0.1:8081", "listen address")
	fs.StringVar(&opts.logLevel, "log-level", "info", "log level: debug logs one line per request")
	fs.StringVar(&keys, "keys", "", "comma-separated accepted API keys; empty accepts any")
	fs.StringVar(&deps, "deployments", "", "comma-separated accepted Azure deployments; empty accepts any")
	fs.DurationVar(&cfg.Latency, "latency", 0, "base latency per answer")
	fs.DurationVar(&cfg.Jitter, "jitter", 0, "extra uniform latency in [0, jitter)")
	fs.Float64Var(&cfg.RPS, "rps", 0, "requests per second; 0 = unlimited")
	fs.IntVar(&cfg.RPM, "rpm", 0, "requests per minute (Azure style); exclusive with --rps")
	fs.IntVar(&cfg.Burst, "burst", 0, "request bucket capacity (default 1 with --rps, rpm/6 with --rpm)")
	fs.IntVar(&cfg.TPM, "tpm", 0, "tokens per minute; 0 = unlimited")
	fs.IntVar(&cfg.MaxConcurrency, "max-concurrency", 0, "admitted requests in flight at once; 0 = unlimited")
	fs.Func("ratelimit-headers", "`set` of x-ratelimit-* headers on answers and limiter 429s: "+
		strings.Join(llmsim.RateLimitHeaderSets, ", ")+" (default azure)", func(v string) error {
		if !slices.Contains(llmsim.RateLimitHeaderSets, v) {
			return fmt.Errorf("want one of %s", strings.Join(llmsim.RateLimitHeaderSets, ", "))
		}
		cfg.RateLimitHeaders = v
		return nil
	})
	fs.DurationVar(&cfg.InjectedRetryAfter, "injected-retry-after", llmsim.DefaultInjectedRetryAfter, "retry-after on injected 429/503/529")
	fs.DurationVar(&burstEvery, "burst429-every", 0, "period of 429 bursts")
	fs.DurationVar(&burstFor, "burst429-for", 0, "length of each 429 burst")
	fs.Int64Var(&cfg.Seed, "seed", 1, "seed for fault draws and jitter")
	fs.Func("fault", "KIND=PCT, repeatable; kinds: "+strings.Join(llmsim.FaultKinds, ", "), func(v string) error {
		kind, pct, ok := strings.Cut(v, "=")
		if !ok {
			return fmt.Errorf("%q: want KIND=PCT", v)
		}
		p, err := strconv.ParseFloat(strings.TrimSuffix(pct, "%"), 64)
		if err != nil {
			return fmt.Errorf("%q: percent: %w", v, err)
		}
		faults[strings.TrimSpace(kind)] = p
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.Keys = splitList(keys)
	cfg.Deployments = splitList(deps)
	cfg.Burst429 = llmsim.Burst429{Every: burstEvery, For: burstFor}
	cfg.Faults = faults
	if err := cfg.Validate(); err != nil {
		return options{}, err
	}
	return opts, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// newLogger writes JSON, or console lines when stderr is a terminal.
func newLogger(level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("log level %q: %w", level, err)
	}
	if lvl == zerolog.NoLevel {
		return zerolog.Logger{}, errors.New("log level: must not be empty")
	}
	var log zerolog.Logger
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	} else {
		log = zerolog.New(os.Stderr)
	}
	return log.Level(lvl).With().Timestamp().Logger(), nil
}
