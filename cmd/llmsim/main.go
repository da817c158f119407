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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/version"
)

// options is everything the command reads from its flags.
type options struct {
	addr     string
	logLevel string
	sim      llmsim.Config
}

func main() { os.Exit(run(os.Args[1:])) }

// run returns the exit code: 0 stopped by a signal (or -h), 1 failed while serving,
// 2 bad flags.
func run(args []string) int {
	opts, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, version.ErrPrinted) {
		return cli.ExitOK
	}
	if err != nil {
		return cli.Usage("llmsim", err)
	}
	log, err := newLogger(opts.logLevel)
	if err != nil {
		return cli.Usage("llmsim", err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := serve(ctx, opts, log); err != nil {
		log.Error().Err(err).Msg("llmsim stopped")
		return cli.ExitFailed
	}
	return cli.ExitOK
}

// serve runs the simulator on opts.addr until ctx ends.
func serve(ctx context.Context, opts options, log zerolog.Logger) error {
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
		opts               options
		keys, deps, models string
		cfg                = &opts.sim
		faults             = llmsim.Faults{}
		burstEvery         time.Duration
		burstFor           time.Duration
	)
	ver := version.Register(fs)
	fs.StringVar(&opts.addr, "addr", "127.0.0.1:8081", "listen address")
	fs.StringVar(&opts.logLevel, "log-level", "info", "log level: debug logs one line per request")
	fs.StringVar(&keys, "keys", "", "comma-separated accepted API keys; empty accepts any")
	fs.StringVar(&deps, "deployments", "", "comma-separated accepted Azure deployments; empty accepts any")
	fs.StringVar(&models, "models", "", "comma-separated models the OpenAI route accepts (others: 404 model_not_found); empty accepts any")
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
	fs.BoolVar(&cfg.FirstTryOnly, "fault-first-try-only", false, "draw --fault percentages only on a request's first try (a retry or a re-ask of it gets none)")
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
	if ver.Print(os.Stdout, "llmsim") {
		return options{}, version.ErrPrinted
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.Keys = cli.List(keys)
	cfg.Deployments = cli.List(deps)
	cfg.Models = cli.List(models)
	cfg.Burst429 = llmsim.Burst429{Every: burstEvery, For: burstFor}
	cfg.Faults = faults
	if err := cfg.Validate(); err != nil {
		return options{}, err
	}
	return opts, nil
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
