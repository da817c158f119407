// Command producer publishes a run: it reads rows (CSV or JSONL, file or stdin), expands
// each into the pipeline's M query jobs and publishes them to NATS JetStream.
//
// Exit codes: 0 all rows published, 2 nothing published (invalid config, input header,
// usage), 3 published but some rows failed to parse or render (they appear as error
// rows), 1 any other failure.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		natsURL  = flag.String("nats", ops.NATSURL(), "NATS server URL (env NATS_URL)")
		cfgPath  = flag.String("config", "", "pipeline config (YAML), required")
		inPath   = flag.String("input", "-", "input file, or - for stdin")
		format   = flag.String("format", "", "input format: csv | jsonl (default: from the file extension)")
		runID    = flag.String("run", "", "run id (default: a new UUIDv7); rerun with the same id to resume")
		wait     = flag.Bool("wait", false, "wait until the collector has emitted every row, then print the summary")
		waitMax  = flag.Duration("wait-timeout", 0, "give up waiting after this long (0 = no limit)")
		replicas = flag.Int("replicas", 1, "stream replicas when creating streams (3 in a NATS cluster)")
		ahead    = flag.Int("max-ahead", 1000, "flow control: rows published ahead of the rows the collector has written")
		level    = flag.String("log-level", "info", "log level")
		opsAddr  = flag.String("ops-addr", "", "with --serve: address of /metrics, /healthz, /readyz (empty: off)")
		serve    = flag.String("serve", "", "run as a service for upstream publishers: a directory of pipeline configs, <name>.yaml each (see docs/WIRE.md, submit subjects)")
	)
	flag.Parse()
	log := ops.Logger("producer", *level)
	usage := func(err error) int {
		fmt.Fprintf(os.Stderr, "producer: %v\n", err)
		return 2
	}
	if *serve != "" {
		return runService(*serve, *natsURL, *opsAddr, *replicas, *ahead, log)
	}
	if *cfgPath == "" {
		return usage(errors.New("--config is required"))
	}
	p, err := config.LoadPipeline(*cfgPath)
	if err != nil {
		return usage(err)
	}
	var f input.Format
	if *format != "" {
		f, err = input.ParseFormat(*format)
	} else if *inPath == "-" {
		err = errors.New("--format is required when reading stdin")
	} else {
		f, err = input.FormatFromPath(*inPath)
	}
	if err != nil {
		return usage(err)
	}
	var in io.Reader = os.Stdin
	if *inPath != "-" {
		fh, err := os.Open(*inPath)
		if err != nil {
			return usage(fmt.Errorf("input: %w", err))
		}
		defer fh.Close()
		in = fh
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, js, err := queue.ConnectJetStream(*natsURL, "multiquery-producer", log)
	if err != nil {
		log.Error().Err(err).Msg("connect")
		return 1
	}
	defer nc.Drain()
	if err := queue.WaitConnected(ctx, nc, 30*time.Second); err != nil {
		log.Error().Err(err).Msg("connect")
		return 1
	}
	cfg := producer.Config{Pipeline: p, Input: in, Format: f, Run: *runID, Topology: queue.Topology{Replicas: *replicas}, MaxAhead: *ahead}
	var bar *mpb.Bar
	var progress *mpb.Progress
	if isatty.IsTerminal(os.Stderr.Fd()) {
		progress = mpb.NewWithContext(ctx, mpb.WithOutput(os.Stderr))
		bar = progress.AddBar(0, mpb.PrependDecorators(decor.Name("rows published "), decor.CurrentNoUnit("%d")),
			mpb.AppendDecorators(decor.AverageSpeed(0, " %.0f rows/s")))
		cfg.Progress = func(int) { bar.Increment() }
	}
	rep, err := producer.Run(ctx, js, cfg, log)
	if bar != nil {
		bar.SetTotal(-1, true)
		progress.Wait()
	}
	var ue *producer.UsageError
	if errors.As(err, &ue) {
		return usage(err)
	}
	if err != nil {
		log.Error().Err(err).Msg("produce")
		return 1
	}
	fmt.Printf("run %s: %d rows, %d jobs, %d row errors\n", rep.Run, rep.Rows, rep.Jobs, rep.RowErrors)
	if rep.Cancelled {
		fmt.Printf("run %s was cancelled: only the %d rows above were published; their unanswered queries end as 'cancelled' error rows\n", rep.Run, rep.Rows)
	}
	if *wait {
		wctx := ctx
		if *waitMax > 0 {
			var cancel context.CancelFunc
			wctx, cancel = context.WithTimeout(ctx, *waitMax)
			defer cancel()
		}
		st, err := status.WaitRun(wctx, js, rep.Run, func(s wire.RunStatus) {
			log.Info().Int("emitted", s.Emitted).Int("total", s.Total).Int("failed", s.Failed).Msg("progress")
		})
		if err != nil {
			log.Error().Err(err).Msg("wait")
			return 1
		}
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Println(string(b))
	}
	if rep.RowErrors > 0 {
		return 3
	}
	return 0
}

// runService loads every <name>.yaml of dir and serves submitted runs until SIGTERM.
func runService(dir, natsURL, opsAddr string, replicas, ahead int, log zerolog.Logger) int {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		fmt.Fprintf(os.Stderr, "producer: --serve %s: no <name>.yaml pipeline configs\n", dir)
		return 2
	}
	pipelines := map[string]*config.Pipeline{}
	for _, f := range files {
		p, err := config.LoadPipeline(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "producer: %s: %v\n", f, err)
			return 2
		}
		pipelines[strings.TrimSuffix(filepath.Base(f), ".yaml")] = p
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, js, err := queue.ConnectJetStream(natsURL, "multiquery-producer-service", log)
	if err != nil {
		log.Error().Err(err).Msg("connect")
		return 1
	}
	defer nc.Drain()
	m := producer.NewMetrics()
	srv := ops.NewServer(opsAddr, log, append(m.Collectors(), queue.Collectors()...)...)
	srv.ReadyWhen(nc.IsConnected)
	srv.SetReady(true)
	opsDone := make(chan struct{})
	go func() {
		defer close(opsDone)
		if err := srv.Run(ctx); err != nil {
			log.Error().Err(err).Msg("ops server")
		}
	}()
	defer func() { stop(); <-opsDone }()
	if err := producer.Serve(ctx, js, producer.ServiceConfig{Pipelines: pipelines, Topology: queue.Topology{Replicas: replicas}, MaxAhead: ahead, Metrics: m}, log); err != nil {
		log.Error().Err(err).Msg("producer service")
		return 1
	}
	return 0
}
