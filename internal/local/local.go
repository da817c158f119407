// Package local owns local mode (`multiquery run`): one run on a laptop, in one
// process. It starts an embedded nats-server with JetStream (its store in a directory,
// no listener), then the real producer, a worker and the collector on it, exactly as
// the separate processes run them, and returns when the collector has written every
// row. An interrupted run (Ctrl-C, kill -9) resumes when run again with the same run id
// and store: the producer skips what is queued or answered, the collector truncates its
// files to its checkpoint, jobs in flight are delivered again, and no finished query is
// called again.
//
// It is the one package that composes the process packages (producer, worker,
// collector); only cmd/multiquery imports it.
package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// StoreSubdir is where the JetStream store goes under the output directory when
// Config.StoreDir is not set.
const StoreSubdir = ".multiquery/nats"

// DefaultDrainTimeout is how long calls in flight may finish when a run is interrupted.
const DefaultDrainTimeout = 10 * time.Second

// DefaultProgressEvery is how often Config.Progress is called when
// Config.ProgressEvery is not set.
const DefaultProgressEvery = time.Second

// Config configures one local run.
type Config struct {
	Pipeline *config.Pipeline
	// Deployments serve the pipeline's aliases (worker.DeploymentsFromConfig).
	Deployments []worker.Deployment
	// InputPath is the input file (a file, not stdin: a rerun reads it again to resume)
	// in Format.
	InputPath string
	Format    input.Format
	// OutDir gets one directory per run (the collector's --out).
	OutDir string
	// StoreDir holds the JetStream store; "" is <OutDir>/StoreSubdir.
	StoreDir string
	// Run is the run id; "" is DefaultRunID of the pipeline and the input.
	Run string
	// Concurrency is the worker's slots per deployment (0: worker.DefaultConcurrency).
	Concurrency int
	// CSV also writes results.csv and errors.csv.
	CSV bool
	// DrainTimeout bounds how long calls in flight finish after an interrupt
	// (0: DefaultDrainTimeout).
	DrainTimeout time.Duration
	// Progress, if set, is called every ProgressEvery while the run goes, and once at
	// the end.
	Progress      func(Snapshot)
	ProgressEvery time.Duration
}

// Result is what a local run did.
type Result struct {
	Run string
	// Dir is the run's output directory, <OutDir>/<Run>.
	Dir string
	// AlreadyFinished: the run had finished before; nothing was started.
	AlreadyFinished bool
	// Producer is the producer's report (zero when AlreadyFinished).
	Producer producer.Report
	// Status is the run's final status as the collector wrote it.
	Status wire.RunStatus
}

// Store is the store directory of cfg.
func (cfg Config) Store() string {
	if cfg.StoreDir != "" {
		return cfg.StoreDir
	}
	return filepath.Join(cfg.OutDir, StoreSubdir)
}

// Check does the whole-run checks that need no server (what the flags and the configs
// must agree on): Run's usage errors before it starts anything.
func (cfg Config) Check() error {
	var errs []error
	if cfg.Pipeline == nil {
		errs = append(errs, errors.New("pipeline: required"))
	}
	if cfg.InputPath == "" || cfg.InputPath == "-" {
		errs = append(errs, errors.New("input: a file is required (a rerun reads it again to resume)"))
	}
	if cfg.OutDir == "" {
		errs = append(errs, errors.New("out: an output directory is required"))
	}
	if cfg.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("concurrency: %d is negative", cfg.Concurrency))
	}
	if cfg.Pipeline != nil {
		served := map[string]bool{}
		for _, d := range cfg.Deployments {
			served[d.LLM.Alias] = true
		}
		for _, q := range cfg.Pipeline.Queries() {
			if !servesQuery(served, q) {
				errs = append(errs, fmt.Errorf("query %s: deployment %q is not in the worker config", q.Name, q.Deployment))
				break
			}
		}
	}
	if cfg.Run != "" {
		if err := wire.ValidateRunID(cfg.Run); err != nil {
			errs = append(errs, fmt.Errorf("run: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Run runs cfg's run to its end (or resumes it) and returns its result. A
// *producer.UsageError means nothing was started or published. When ctx ends, the run
// stops where it is (calls in flight get DrainTimeout) and Run returns ctx's error:
// run it again to resume.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) (Result, error) {
	if err := cfg.Check(); err != nil {
		return Result{}, &producer.UsageError{Err: err}
	}
	total, digest, err := scanInput(cfg.InputPath, cfg.Format)
	if err != nil {
		return Result{}, &producer.UsageError{Err: err}
	}
	if cfg.Run == "" {
		cfg.Run = runID(cfg.Pipeline.Hash(), digest)
	}
	res := Result{Run: cfg.Run, Dir: filepath.Join(cfg.OutDir, cfg.Run)}
	srv, err := startServer(cfg.Store(), log)
	if err != nil {
		return res, err
	}
	defer srv.shutdown()
	nc, js, err := srv.connect("multiquery-local", log)
	if err != nil {
		return res, err
	}
	defer nc.Close()
	topo := queue.Topology{}
	if err := queue.EnsureLog(ctx, js, topo, log); err != nil {
		return res, err
	}
	if st, ok, err := finished(ctx, js, cfg.Run); err != nil || ok {
		if err == nil {
			err = sameRun(res.Dir, cfg.Run, cfg.Pipeline.Hash(), digest)
		}
		res.AlreadyFinished, res.Status = ok && err == nil, st
		return res, err
	}
	r := &localRun{cfg: cfg, js: js, log: log, total: total, started: time.Now(), inputHash: digest}
	return r.run(ctx, res, topo)
}

// localRun is one local run in progress: its components and what progress reads.
type localRun struct {
	cfg       Config
	js        jetstream.JetStream
	log       zerolog.Logger
	total     int
	inputHash string // the input file's SHA-256, the open record's input_hash
	started   time.Time
	published atomic.Int64
	metrics   *prometheus.Registry
}

// run starts the worker and the collector, publishes the run, waits for the collector
// to finish it, then stops the components.
func (r *localRun) run(ctx context.Context, res Result, topo queue.Topology) (Result, error) {
	cfg := r.cfg
	drain := cfg.DrainTimeout
	if drain <= 0 {
		drain = DefaultDrainTimeout
	}
	w, err := worker.New(r.js, worker.Config{Name: "local", Concurrency: cfg.Concurrency, Deployments: cfg.Deployments,
		Topology: topo, DrainTimeout: drain, Run: cfg.Run}, r.log)
	if err != nil {
		return res, &producer.UsageError{Err: err}
	}
	c, err := collector.New(r.js, collector.Config{OutDir: cfg.OutDir, CSV: cfg.CSV, Topology: topo, Name: "local",
		NoLease: true, NoStore: true}, r.log)
	if err != nil {
		return res, &producer.UsageError{Err: err}
	}
	r.metrics = prometheus.NewRegistry()
	for _, m := range w.Collectors() {
		r.metrics.MustRegister(m)
	}
	compCtx, stopComps := context.WithCancel(context.Background())
	defer stopComps()
	g, gctx := errgroup.WithContext(compCtx)
	g.Go(func() error { return ended(w.Run(gctx), "worker") })
	g.Go(func() error { return ended(c.Run(gctx), "collector") })

	// The flow ends with ctx, or when a component fails.
	flowCtx, cancelFlow := context.WithCancel(ctx)
	stopWatch := context.AfterFunc(gctx, cancelFlow)
	var wg sync.WaitGroup
	if cfg.Progress != nil {
		wg.Go(func() { r.report(flowCtx) })
	}
	rep, st, err := r.flow(flowCtx, topo)
	res.Producer, res.Status = rep, st
	cancelFlow()
	stopWatch()
	wg.Wait()
	if cfg.Progress != nil {
		cfg.Progress(r.snapshot(context.WithoutCancel(ctx), nil))
	}
	stopComps()
	if gerr := g.Wait(); gerr != nil {
		return res, gerr
	}
	return res, err
}

// ended is a component's Run error, nil when it ended because it was stopped.
func ended(err error, what string) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// flow publishes the run, then waits until the collector has written every row.
func (r *localRun) flow(ctx context.Context, topo queue.Topology) (producer.Report, wire.RunStatus, error) {
	f, err := os.Open(r.cfg.InputPath)
	if err != nil {
		return producer.Report{}, wire.RunStatus{}, &producer.UsageError{Err: fmt.Errorf("input: %w", err)}
	}
	defer f.Close()
	rep, err := producer.Run(ctx, r.js, producer.Config{Pipeline: r.cfg.Pipeline, Input: f, Format: r.cfg.Format, Run: r.cfg.Run,
		InputHash: r.inputHash, Topology: topo, Progress: func(n int) { r.published.Store(int64(n)) }}, r.log)
	if err != nil {
		return rep, wire.RunStatus{}, err
	}
	r.published.Store(int64(rep.Rows))
	st, err := status.WaitRun(ctx, r.js, wire.Names{}, r.cfg.Run, nil)
	if err != nil {
		return rep, st, err
	}
	r.awaitCleanup(ctx)
	return rep, st, nil
}

// cleanupWait bounds how long a finished run waits for the collector's cleanup.
const cleanupWait = 10 * time.Second

// awaitCleanup waits (at most cleanupWait) until the collector has cleaned the finished
// run up, its keys in the runs and retry buckets last: stopped before, the collector
// would only do it again on the next start.
func (r *localRun) awaitCleanup(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, cleanupWait)
	defer cancel()
	left := func(bucket string) uint64 {
		s, err := r.js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			return 0
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter("$KV."+bucket+"."+r.cfg.Run+".>"))
		if err != nil {
			return 1
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		return n
	}
	for left(wire.BucketRuns)+left(wire.BucketRetry) > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sameRun refuses a finished run's id given with another pipeline config or input
// (exit 2, as the producer refuses a reused run id): its files answer another question.
// It compares with the open record in the run's directory; what that record does not
// say (a run of an earlier build has no input_hash, a deleted directory nothing) is not
// refused.
func sameRun(dir, run, configHash, inputHash string) error {
	b, err := os.ReadFile(filepath.Join(dir, sink.OpenJSON))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", run, err)
	}
	var open wire.Open
	if err := json.Unmarshal(b, &open); err != nil {
		return fmt.Errorf("run %s: decode %s: %w", run, sink.OpenJSON, err)
	}
	switch {
	case open.ConfigHash != "" && open.ConfigHash != configHash:
		return &producer.UsageError{Err: fmt.Errorf("run %s finished with another pipeline config (hash %.12s, now %.12s); use a new run id, or no --run", run, open.ConfigHash, configHash)}
	case open.InputHash != "" && open.InputHash != inputHash:
		return &producer.UsageError{Err: fmt.Errorf("run %s finished with another input (SHA-256 %.12s, now %.12s); use a new run id, or no --run", run, open.InputHash, inputHash)}
	}
	return nil
}

// finished reads the run's status: ok when the run has finished.
func finished(ctx context.Context, js jetstream.JetStream, run string) (wire.RunStatus, bool, error) {
	st, err := runStatus(ctx, js, run)
	if err != nil || st == nil || !st.Finished {
		return wire.RunStatus{}, false, err
	}
	return *st, true, nil
}

// runStatus reads the run's status record, nil when there is none yet.
func runStatus(ctx context.Context, js jetstream.JetStream, run string) (*wire.RunStatus, error) {
	kv, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		return nil, fmt.Errorf("open kv %s: %w", wire.BucketRuns, err)
	}
	return status.Read(ctx, kv, run)
}

// scanInput reads the input file once: it counts its records (error records included:
// the progress total) and hashes its bytes (the digest of runID and the open record's
// input_hash).
func scanInput(path string, f input.Format) (rows int, digest string, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, "", fmt.Errorf("input: %w", err)
	}
	defer fh.Close()
	h := sha256.New()
	in := io.TeeReader(fh, h)
	rd, err := input.NewReader(in, f)
	if err != nil {
		return 0, "", fmt.Errorf("input: %w", err)
	}
	for {
		_, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rows, "", fmt.Errorf("read input: %w", err)
		}
		rows++
	}
	if _, err := io.Copy(io.Discard, in); err != nil { // what the reader left unread
		return rows, "", fmt.Errorf("input %s: %w", path, err)
	}
	return rows, hex.EncodeToString(h.Sum(nil)), nil
}

// servesQuery reports whether the worker config serves a query's deployment: its
// alias, or for a pool at least one member.
func servesQuery(served map[string]bool, q config.Query) bool {
	if q.Pool == nil {
		return served[q.Deployment]
	}
	for _, m := range q.Pool {
		if served[m.Alias] {
			return true
		}
	}
	return false
}
