// Command producer publishes a run: it reads rows (CSV or JSONL, file or stdin), expands
// each into the pipeline's M query jobs and publishes them to NATS JetStream.
//
// Exit codes: 0 all rows published, 2 nothing published (invalid config, input header,
// usage), 3 published but some rows failed to parse or render (they appear as error
// rows), 1 any other failure, a run cancelled before every row was published included.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/estimate"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/proc"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// exitRowErrors: the run was published, but some rows failed to parse or render.
const exitRowErrors = 3

func main() {
	proc.TuneGC(os.Getenv)
	os.Exit(run(os.Args[1:]))
}

// options is everything the command reads from its flags.
type options struct {
	proc.Flags
	cfgPath, inPath, format, runID string
	wait, dryRun                   bool
	waitMax                        time.Duration
	ahead                          int
	serve                          string
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("producer", flag.ContinueOnError)
	var o options
	o.Register(fs, "", "with --serve: address of /metrics, /healthz, /readyz (empty: off)")
	fs.StringVar(&o.cfgPath, "config", "", "pipeline config (YAML), required")
	fs.StringVar(&o.inPath, "input", "-", "input file, or - for stdin")
	fs.StringVar(&o.format, "format", "", "input format: csv | jsonl (default: from the file extension)")
	fs.StringVar(&o.runID, "run", "", "run id (default: a new UUIDv7); rerun with the same id to resume")
	fs.BoolVar(&o.wait, "wait", false, "wait until the collector has emitted every row, then print the summary")
	fs.DurationVar(&o.waitMax, "wait-timeout", 0, "give up waiting after this long (0 = no limit)")
	fs.IntVar(&o.ahead, "max-ahead", 0, fmt.Sprintf("flow control: rows published ahead of the rows the collector has written (0: the larger of %d rows and %d jobs' worth)", producer.DefaultMaxAhead, producer.DefaultAheadJobs))
	fs.BoolVar(&o.dryRun, "dry-run", false, "check the config and the input, render every prompt, print rows, queries, prompt tokens and the estimated cost; connects to nothing, publishes nothing")
	fs.StringVar(&o.serve, "serve", "", "run as a service for upstream publishers: a directory of pipeline configs, <name>.yaml each; other YAML files are skipped (see docs/WIRE.md, submit subjects)")
	return o, fs.Parse(args)
}

// run returns the exit code, so that every deferred cleanup (the NATS drain) runs.
func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		return cli.ParseExit(err)
	}
	if o.Version.Print(os.Stdout, "producer") {
		return cli.ExitOK
	}
	if o.dryRun {
		return dryRun(o)
	}
	if err := o.Check(); err != nil {
		return cli.Usage("producer", err)
	}
	log := ops.Logger("producer", o.LogLevel)
	if o.serve != "" {
		return runService(o, log)
	}
	return runFile(o, log)
}

// runFile publishes one run from --input, then (with --wait) waits for its rows.
func runFile(o options, log zerolog.Logger) int {
	cfg, closeInput, err := o.runConfig()
	if err != nil {
		return cli.Usage("producer", err)
	}
	defer closeInput()
	ctx, stop := cli.SignalContext()
	defer stop()
	nc, js, err := o.Connect("multiquery-producer", log)
	if err != nil {
		return cli.ExitFailed
	}
	defer nc.Drain()
	if err := queue.WaitConnected(ctx, nc, 30*time.Second); err != nil {
		log.Error().Err(err).Msg("connect")
		return cli.ExitFailed
	}
	rep, err := publish(ctx, js, cfg, log)
	var ue *producer.UsageError
	if errors.As(err, &ue) {
		return cli.Usage("producer", err)
	}
	if err != nil {
		log.Error().Err(err).Msg("produce")
		return cli.ExitFailed
	}
	fmt.Printf("run %s: %d rows, %d jobs, %d row errors\n", rep.Run, rep.Rows, rep.Jobs, rep.RowErrors)
	if rep.Cancelled {
		fmt.Printf("run %s was cancelled: only the %d rows above were published; their unanswered queries end as 'cancelled' error rows\n", rep.Run, rep.Rows)
	}
	if o.wait {
		if err := waitRun(ctx, js, o.Names(), rep.Run, o.waitMax, log); err != nil {
			log.Error().Err(err).Msg("wait")
			return cli.ExitFailed
		}
	}
	if rep.Cancelled { // not every row was published: no success
		return cli.ExitFailed
	}
	if rep.RowErrors > 0 {
		return exitRowErrors
	}
	return cli.ExitOK
}

// dryRun checks the config and the input and renders every prompt without NATS, then
// prints what the run would publish and cost (package estimate).
func dryRun(o options) int {
	if o.serve != "" {
		return cli.Usage("producer", errors.New("--dry-run: not with --serve"))
	}
	cfg, closeInput, err := o.runConfig()
	if err != nil {
		return cli.Usage("producer", err)
	}
	defer closeInput()
	t := estimate.NewTally()
	rep, err := producer.DryRun(cfg, t.Add)
	var ue *producer.UsageError
	if errors.As(err, &ue) {
		return cli.Usage("producer", err)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "producer: dry run: %v\n", err)
		return cli.ExitFailed
	}
	fmt.Println("dry run: nothing was published")
	c := cfg.Pipeline.Cost
	if err := t.Write(os.Stdout, estimate.Prices{PromptPer1K: c.PromptPer1K, CompletionPer1K: c.CompletionPer1K}); err != nil {
		return cli.ExitFailed
	}
	if rep.RowErrors > 0 {
		return exitRowErrors
	}
	return cli.ExitOK
}

// runConfig loads --config and opens --input in its format; closeInput closes the file.
func (o options) runConfig() (cfg producer.Config, closeInput func(), err error) {
	closeInput = func() {}
	if o.cfgPath == "" {
		return cfg, closeInput, errors.New("--config is required")
	}
	p, err := config.LoadPipeline(o.cfgPath)
	if err != nil {
		return cfg, closeInput, err
	}
	var f input.Format
	switch {
	case o.format != "":
		f, err = input.ParseFormat(o.format)
	case o.inPath == "-":
		err = errors.New("--format is required when reading stdin")
	default:
		f, err = input.FormatFromPath(o.inPath)
	}
	if err != nil {
		return cfg, closeInput, err
	}
	var in io.Reader = os.Stdin
	if o.inPath != "-" {
		fh, err := os.Open(o.inPath)
		if err != nil {
			return cfg, closeInput, fmt.Errorf("input: %w", err)
		}
		in, closeInput = fh, func() { fh.Close() }
	}
	return producer.Config{Pipeline: p, Input: in, Format: f, Run: o.runID, Topology: o.Topology(), MaxAhead: o.ahead}, closeInput, nil
}

// publish runs the producer, with a progress bar on a terminal.
func publish(ctx context.Context, js jetstream.JetStream, cfg producer.Config, log zerolog.Logger) (producer.Report, error) {
	if !isatty.IsTerminal(os.Stderr.Fd()) {
		return producer.Run(ctx, js, cfg, log)
	}
	progress := mpb.NewWithContext(ctx, mpb.WithOutput(os.Stderr))
	bar := progress.AddBar(0, mpb.PrependDecorators(decor.Name("rows published "), decor.CurrentNoUnit("%d")),
		mpb.AppendDecorators(decor.AverageSpeed(0, " %.0f rows/s")))
	cfg.Progress = func(int) { bar.Increment() }
	rep, err := producer.Run(ctx, js, cfg, log)
	bar.SetTotal(-1, true)
	progress.Wait()
	return rep, err
}

// waitRun waits (at most waitMax, 0: no limit) until the collector has emitted every
// row of the run, then prints the run's status as JSON.
func waitRun(ctx context.Context, js jetstream.JetStream, names wire.Names, run string, waitMax time.Duration, log zerolog.Logger) error {
	if waitMax > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, waitMax)
		defer cancel()
	}
	st, err := status.WaitRun(ctx, js, names, run, func(s wire.RunStatus) {
		log.Info().Int("emitted", s.Emitted).Int("total", s.Total).Int("failed", s.Failed).Msg("progress")
	})
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	fmt.Println(string(b))
	return nil
}

// runService loads the pipeline configs of --serve and serves submitted runs until
// SIGTERM.
func runService(o options, log zerolog.Logger) int {
	pipelines, err := loadPipelines(o.serve, log)
	if err != nil {
		return cli.Usage("producer", err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	nc, js, err := o.Connect("multiquery-producer-service", log)
	if err != nil {
		return cli.ExitFailed
	}
	defer nc.Drain()
	m := producer.NewMetrics()
	cs := slices.Concat(ops.NATSMetrics(nc), m.Collectors(), queue.Collectors())
	srv := ops.NewServer(o.OpsAddr, log, cs...)
	var started atomic.Bool
	srv.ReadyWhen(func() bool { return nc.IsConnected() && started.Load() })
	// Ready from the start of the service (its streams exist) until SIGTERM; /metrics and
	// /healthz answer until the service has returned.
	err = srv.Serve(ctx, func(ctx context.Context) error {
		return producer.Serve(ctx, js, producer.ServiceConfig{Pipelines: pipelines, Topology: o.Topology(), MaxAhead: o.ahead, Metrics: m,
			Started: func() { started.Store(true) }}, log)
	})
	if err != nil {
		log.Error().Err(err).Msg("producer service")
		return cli.ExitFailed
	}
	return cli.ExitOK
}

// loadPipelines loads the pipeline configs of --serve (config.LoadPipelineDir) and
// logs each YAML file it skips as not a pipeline config.
func loadPipelines(dir string, log zerolog.Logger) (map[string]*config.Pipeline, error) {
	d, err := config.LoadPipelineDir(dir)
	if err != nil {
		return nil, fmt.Errorf("--serve: %w", err)
	}
	for _, f := range d.Skipped {
		log.Info().Str("file", f.Path).Str("why", f.Why).Msg("--serve: not a pipeline config, skipped")
	}
	names := make([]string, 0, len(d.Pipelines))
	for name := range d.Pipelines {
		names = append(names, name)
	}
	sort.Strings(names)
	log.Info().Strs("pipelines", names).Str("dir", dir).Msg("--serve: pipelines loaded")
	return d.Pipelines, nil
}
