// Command multiquery runs a whole pipeline on one machine, in one process: `multiquery
// run` starts an embedded NATS JetStream server (its store under the output
// directory), the producer, a worker and the collector, and returns when every row is
// written. Run the same command again after an interruption (Ctrl-C, kill -9) and it
// resumes: no finished query is called again. `multiquery run --dry-run` checks the
// configs and the input, renders every prompt and prints the prompt tokens and the
// estimated cost, and starts nothing.
//
// Exit codes: 0 every row ok, 2 nothing done (usage, invalid config or input header),
// 3 the run finished but some rows are error rows, 1 any other failure (an
// interrupted run included: run it again to resume).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/estimate"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/local"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/proc"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/version"
	"github.com/multiquery/multiquery/internal/worker"
)

// exitRowErrors: the run finished, but some rows are error rows (the producer's 3).
const exitRowErrors = 3

// lineEvery is how often progress is printed as a line when stderr is not a terminal.
const lineEvery = 5 * time.Second

func main() {
	proc.TuneGC(os.Getenv)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: multiquery run --config pipeline.yaml --workers worker.yaml --input rows.csv --out DIR [flags]
       multiquery --version

Runs the producer, a worker and the collector in one process on an embedded NATS
JetStream server. Run the same command again to resume an interrupted run.

Flags of run:
`

// options is everything `multiquery run` reads from its flags.
type options struct {
	cfgPath, workersPath, inPath, format, out, store, runID, logLevel string
	concurrency                                                       int
	csv, dryRun                                                       bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("multiquery run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var o options
	fs.StringVar(&o.cfgPath, "config", "", "pipeline config (YAML), required")
	fs.StringVar(&o.workersPath, "workers", "", "worker config (YAML: deployments), required")
	fs.StringVar(&o.inPath, "input", "", "input file (CSV or JSONL), required")
	fs.StringVar(&o.format, "format", "", "input format: csv | jsonl (default: from the file extension)")
	fs.StringVar(&o.out, "out", "out", "output directory (one sub-directory per run)")
	fs.StringVar(&o.store, "store", "", "JetStream store directory (default: <out>/"+local.StoreSubdir+")")
	fs.StringVar(&o.runID, "run", "", "run id (default: local- and a hash of the pipeline and the input, so that the same command resumes)")
	fs.IntVar(&o.concurrency, "concurrency", worker.DefaultConcurrency, "calls in flight per deployment")
	fs.BoolVar(&o.csv, "csv", false, "also write results.csv and errors.csv")
	fs.BoolVar(&o.dryRun, "dry-run", false, "check the configs and the input, render every prompt, print rows, queries, prompt tokens and the estimated cost; starts nothing")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level (logs go to stderr)")
	return o, fs.Parse(args)
}

// run returns the exit code, so that every deferred cleanup runs.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		fmt.Fprintln(stdout, version.Get().Line("multiquery"))
		return cli.ExitOK
	}
	if len(args) == 0 || args[0] != "run" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			_, _ = parseFlags([]string{"-h"}, stdout) // prints the usage and the flags
			return cli.ExitOK
		}
		_, _ = parseFlags([]string{"-h"}, stderr)
		return cli.ExitUsage
	}
	o, err := parseFlags(args[1:], stderr)
	if err != nil {
		return cli.ParseExit(err)
	}
	cfg, err := o.config()
	if err != nil {
		return usageErr(stderr, err)
	}
	if o.dryRun {
		return dryRun(cfg, stdout, stderr)
	}
	log := ops.Logger("multiquery", o.logLevel)
	ctx, stop := cli.SignalContext()
	defer stop()
	p := newProgress(stderr)
	cfg.Progress = p.update
	res, err := local.Run(ctx, cfg, log)
	p.close()
	var ue *producer.UsageError
	switch {
	case errors.As(err, &ue):
		return usageErr(stderr, err)
	case err != nil && ctx.Err() != nil:
		fmt.Fprintf(stderr, "multiquery: run %s interrupted; run the same command again to resume\n", res.Run)
		return cli.ExitFailed
	case err != nil:
		log.Error().Err(err).Str("run", res.Run).Msg("run failed; run the same command again to resume")
		return cli.ExitFailed
	}
	printResult(stdout, res)
	if res.Status.Failed > 0 || res.Producer.RowErrors > 0 {
		return exitRowErrors
	}
	return cli.ExitOK
}

func usageErr(w io.Writer, err error) int {
	fmt.Fprintf(w, "multiquery: %v\n", err)
	return cli.ExitUsage
}

// config loads both configs and checks the flags against them.
func (o options) config() (local.Config, error) {
	var errs []error
	for _, f := range []struct{ name, v string }{{"--config", o.cfgPath}, {"--workers", o.workersPath}, {"--input", o.inPath}} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.name))
		}
	}
	if len(errs) > 0 {
		return local.Config{}, errors.Join(errs...)
	}
	p, err := config.LoadPipeline(o.cfgPath)
	if err != nil {
		return local.Config{}, err
	}
	wc, err := config.LoadWorker(o.workersPath)
	if err != nil {
		return local.Config{}, err
	}
	deps, err := worker.DeploymentsFromConfig(wc)
	if err != nil {
		return local.Config{}, err
	}
	var f input.Format
	if o.format != "" {
		f, err = input.ParseFormat(o.format)
	} else {
		f, err = input.FormatFromPath(o.inPath)
	}
	if err != nil {
		return local.Config{}, err
	}
	cfg := local.Config{Pipeline: p, Deployments: deps, InputPath: o.inPath, Format: f, OutDir: o.out, StoreDir: o.store,
		Run: o.runID, Concurrency: o.concurrency, CSV: o.csv}
	return cfg, cfg.Check()
}

// dryRun renders every prompt and prints the estimate; it starts nothing.
func dryRun(cfg local.Config, stdout, stderr io.Writer) int {
	runID := cfg.Run
	if runID == "" {
		id, err := local.DefaultRunID(cfg.Pipeline.Hash(), cfg.InputPath)
		if err != nil {
			return usageErr(stderr, err)
		}
		runID = id
	}
	in, err := os.Open(cfg.InputPath)
	if err != nil {
		return usageErr(stderr, fmt.Errorf("input: %w", err))
	}
	defer in.Close()
	t := estimate.NewTally()
	rep, err := producer.DryRun(producer.Config{Pipeline: cfg.Pipeline, Input: in, Format: cfg.Format, Run: runID}, t.Add)
	var ue *producer.UsageError
	if errors.As(err, &ue) {
		return usageErr(stderr, err)
	}
	if err != nil {
		fmt.Fprintf(stderr, "multiquery: dry run: %v\n", err)
		return cli.ExitFailed
	}
	fmt.Fprintf(stdout, "dry run of run %s: nothing was started\n", runID)
	c := cfg.Pipeline.Cost
	if err := t.Write(stdout, estimate.Prices{PromptPer1K: c.PromptPer1K, CompletionPer1K: c.CompletionPer1K}); err != nil {
		return cli.ExitFailed
	}
	if rep.RowErrors > 0 {
		return exitRowErrors
	}
	return cli.ExitOK
}

// printResult prints how the run ended and where its files are.
func printResult(w io.Writer, res local.Result) {
	st := res.Status
	if res.AlreadyFinished {
		fmt.Fprintf(w, "run %s had already finished; nothing was called again\n", res.Run)
	}
	fmt.Fprintf(w, "run %s: %d rows: %d ok, %d failed\n", res.Run, st.Total, st.OK, st.Failed)
	for _, name := range sink.OutputFiles(true) {
		if name == sink.ResubmitJSONL || name == sink.OpenJSON {
			continue // the system's own, for a resubmission
		}
		path := filepath.Join(res.Dir, name)
		if _, err := os.Stat(path); err == nil {
			fmt.Fprintf(w, "  %s\n", path)
		}
	}
}

// progress shows a local run's progress on stderr: a bar on a terminal, a line every
// lineEvery otherwise.
type progress struct {
	w    io.Writer
	p    *mpb.Progress
	bar  *mpb.Bar
	text atomic.Pointer[string] // the bar's right-hand text
	last time.Time
}

func newProgress(w io.Writer) *progress {
	pr := &progress{w: w}
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		pr.p = mpb.New(mpb.WithOutput(w), mpb.WithRefreshRate(200*time.Millisecond))
		pr.bar = pr.p.AddBar(0, mpb.PrependDecorators(decor.Name("rows "), decor.CountersNoUnit("%d/%d")),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
				if t := pr.text.Load(); t != nil {
					return *t
				}
				return ""
			})))
	}
	return pr
}

// describe is a snapshot as text, without the rows done.
func describe(s local.Snapshot) string {
	eta := "?"
	switch {
	case s.Done:
		eta = "done"
	case s.ETA > 0:
		eta = s.ETA.String()
	}
	line := fmt.Sprintf("ok %d, failed %d | calls %d, 429s %d | %.1f calls/s | ETA %s", s.OK, s.Failed, s.Calls, s.Capacity, s.CallRate, eta)
	if s.Blocked != "" {
		// Deployment-wide errors: the calls wait (retried every 15 s) until it is fixed.
		line += " | BLOCKED: " + s.Blocked + " (calls retried every 15 s; to change the key or config, stop and run the command again: the run resumes)"
	}
	return line
}

func (pr *progress) update(s local.Snapshot) {
	if pr.bar != nil {
		t := describe(s)
		pr.text.Store(&t)
		pr.bar.SetTotal(int64(s.Rows), false)
		pr.bar.SetCurrent(int64(s.Emitted))
		return
	}
	if s.Done || time.Since(pr.last) >= lineEvery {
		pr.last = time.Now()
		fmt.Fprintf(pr.w, "run %s: rows %d/%d written (%d published) | %s\n", s.Run, s.Emitted, s.Rows, s.Published, describe(s))
	}
}

func (pr *progress) close() {
	if pr.p == nil {
		return
	}
	pr.bar.Abort(false)
	pr.p.Wait()
}
