// Package collector owns row assembly: it folds run records, input rows and query
// results into per-row completion bitsets and emits every row exactly once, as a success
// row (input + all M outputs) or an error row (input + _error), never partially.
//
// It reads the input and results streams with ordered consumers (no acks, nothing to
// block: JetStream is the reorder buffer), keeps bodies in memory up to a bound and reads
// the others back by subject when their row's turn comes, and checkpoints after every
// fsynced batch: a restart truncates the files to the checkpoint and replays the streams,
// skipping rows already emitted.
//
// The code follows an event's flow: this file reads the streams (Run, active, the
// decoding of events, reads back by subject); state.go folds each event into its run's
// state (openRun, apply by event kind, orphans of runs not open yet); emit.go writes
// the rows that may go out, in the run's order (advance, emit, fold); checkpoint.go
// makes them durable and releases what is no longer needed (checkpoint, status, purge,
// finish, cleanup).
package collector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/backlog"
	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Config configures the collector.
type Config struct {
	OutDir string // one sub-directory per run
	CSV    bool   // also write results.csv / errors.csv
	// CSVRawFormulas writes CSV cells verbatim; by default a cell starting with = + - @,
	// a tab or a carriage return is prefixed with ' (spreadsheet formula injection).
	CSVRawFormulas bool
	Order          string        // "" = the run's own order; input | completion overrides
	MemoryLimit    int64         // bytes of bodies kept in memory; beyond, read back by subject
	FlushInterval  time.Duration // max time between checkpoints
	FlushRows      int           // checkpoint after this many emitted rows
	// MaxPendingRows bounds the rows held (input in, not yet emitted): past it no input
	// row is read until rows go out. Memory is bounded by it and MemoryLimit. A row
	// carried in its first job comes with that result, which is always read, as every
	// result is: those rows are bounded by the producer's window (--max-ahead).
	MaxPendingRows int
	Topology       queue.Topology
	// Name identifies this collector in its lease; NoLease turns the single-active lease
	// off (one collector by deployment).
	Name    string
	NoLease bool
	// LeaseTTL is the lease's time to live (0: lease.DefaultTTL); every collector on the
	// same NATS must use the same value.
	LeaseTTL time.Duration
	// NoStore turns off storing each completed run's output files in the results bucket
	// (wire.Names.BucketResults, where mqctl get fetches them): the files then stay on the
	// collector's volume only.
	NoStore bool
	// PublishRows also publishes each emitted row's line on the rows stream
	// (wire.Names.RowSubject: rows.<run>.<row>, first writer wins) for downstream
	// consumers, before the row counts as written.
	PublishRows bool
	// BacklogInterval is how often the active collector reads the job consumers for
	// mq_jobs_backlog (0: backlog.DefaultInterval).
	BacklogInterval time.Duration
}

// DefaultMemoryLimit is Config.MemoryLimit (the collector's --memory-limit) when not set.
const DefaultMemoryLimit = 64 << 20

func (c *Config) defaults() {
	if c.MemoryLimit <= 0 {
		c.MemoryLimit = DefaultMemoryLimit
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 200 * time.Millisecond
	}
	if c.FlushRows <= 0 {
		c.FlushRows = 1000
	}
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if c.MaxPendingRows <= 0 {
		c.MaxPendingRows = 20000
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.OutDir == "" {
		errs = append(errs, errors.New("out: an output directory is required"))
	}
	switch c.Order {
	case "", wire.OrderInput, wire.OrderCompletion:
	default:
		errs = append(errs, fmt.Errorf("order: %q is not input or completion", c.Order))
	}
	return errors.Join(errs...)
}

// Collector assembles rows.
type Collector struct {
	started atomic.Bool // Run has its streams and lease bucket: active or standing by
	cfg     Config
	names   wire.Names // cfg.Topology.Names
	js      jetstream.JetStream
	log     zerolog.Logger
	runsKV  jetstream.KeyValue
	retryKV jetstream.KeyValue
	input   jetstream.Stream
	results jetstream.Stream
	jobs    jetstream.Stream
	submit  jetstream.Stream
	obs     jetstream.ObjectStore // the results bucket (nil with NoStore)
	// done remembers recently finished runs (bounded; the runs bucket's final status
	// answers for older ones), whose late events are deleted on arrival.
	done      map[string]bool
	doneOrder []string

	runs    map[string]*run
	orphans map[string][]event // events (bodies dropped) of runs whose open record is not seen yet
	// orphanN and orphanBytes bound the orphans (the bytes also count in cached).
	orphanN     int
	orphanBytes int64
	cached      int64
	dirty       map[string]*run
	pending     int // rows emitted since the last checkpoint
	waiting     int // rows whose input is in and which are not emitted yet
	purges      chan purge
	// resultsSeen is the highest results stream sequence read: the stream is read in
	// order, so every result below it has been applied.
	resultsSeen uint64
	m           *metrics
	backlog     *backlog.Meter // mq_jobs_backlog, polled while active
	// fence is the lease held while active (nil with NoLease): every side effect passes
	// it first (docs/OPERATIONS.md, "Collector lease and fencing").
	fence *lease.Fence
	// fault, set by tests only, is called at the fault points of store.go; an error
	// stops the collector there.
	fault func(point string) error
}

// New builds a collector.
func New(js jetstream.JetStream, cfg Config, log zerolog.Logger) (*Collector, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Collector{cfg: cfg, names: cfg.Topology.Names, js: js, log: log.With().Str("component", "collector").Logger(),
		runs: map[string]*run{}, orphans: map[string][]event{}, done: map[string]bool{}, dirty: map[string]*run{}, purges: make(chan purge, 100000), m: newMetrics(),
		backlog: backlog.New(js, cfg.Topology.Names, cfg.BacklogInterval, log)}, nil
}

// Run folds events until ctx ends, checkpointing as it goes; it returns after a last
// checkpoint and once every goroutine it started has exited.
func (c *Collector) Run(ctx context.Context) error {
	if err := queue.EnsureAwait(ctx, c.js, c.cfg.Topology, c.log); err != nil {
		return err
	}
	var err error
	if c.runsKV, err = c.js.KeyValue(ctx, c.names.BucketRuns()); err != nil {
		return fmt.Errorf("open kv %s: %w", c.names.BucketRuns(), err)
	}
	if c.input, err = c.js.Stream(ctx, c.names.StreamInput()); err != nil {
		return fmt.Errorf("open stream %s: %w", c.names.StreamInput(), err)
	}
	if c.results, err = c.js.Stream(ctx, c.names.StreamResults()); err != nil {
		return fmt.Errorf("open stream %s: %w", c.names.StreamResults(), err)
	}
	if c.jobs, err = c.js.Stream(ctx, c.names.StreamJobs()); err != nil {
		return fmt.Errorf("open stream %s: %w", c.names.StreamJobs(), err)
	}
	if c.submit, err = c.js.Stream(ctx, c.names.StreamSubmit()); err != nil {
		return fmt.Errorf("open stream %s: %w", c.names.StreamSubmit(), err)
	}
	if c.retryKV, err = c.js.KeyValue(ctx, c.names.BucketRetry()); err != nil {
		return fmt.Errorf("open kv %s: %w", c.names.BucketRetry(), err)
	}
	if !c.cfg.NoStore {
		if c.obs, err = c.openResults(ctx); err != nil {
			return fmt.Errorf("open object store %s: %w", c.names.BucketResults(), err)
		}
	}
	if c.cfg.NoLease {
		return c.active(ctx)
	}
	kv, err := lease.Ensure(ctx, c.js, c.names.BucketLease(), c.cfg.Topology.Defaults().Replicas, c.cfg.LeaseTTL, c.log)
	if err != nil {
		return err
	}
	c.started.Store(true)
	defer c.started.Store(false)
	// Several collectors may run; one holds the lease and emits, the others stand by.
	return lease.Hold(ctx, kv, "collector", c.cfg.Name, c.cfg.LeaseTTL, c.log, func(ctx context.Context, f *lease.Fence) error {
		c.m.takeover.Set(f.Waited().Seconds())
		c.fence = f
		return c.active(ctx)
	})
}

// openResults opens the results bucket, creating it again when it is gone: an operator
// may delete it between the topology's check and this open, and a collector starting up
// must not fail on that any more than store does at a run's end.
func (c *Collector) openResults(ctx context.Context) (obs jetstream.ObjectStore, err error) {
	if err := c.injectFault(faultBeforeOpen); err != nil {
		return nil, err
	}
	err = c.withResults(ctx, func() (err error) {
		obs, err = c.js.ObjectStore(ctx, c.names.BucketResults())
		return err
	})
	return obs, err
}

// withResults runs f, and once more after creating the results bucket again when f found
// it gone (an operator deleted it).
func (c *Collector) withResults(ctx context.Context, f func() error) error {
	err := f()
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if err := queue.EnsureResults(ctx, c.js, c.cfg.Topology); err != nil {
			return err
		}
		err = f()
	}
	return err
}

// Started reports whether Run is up (holding the lease or standing by for it): the
// /readyz condition.
func (c *Collector) Started() bool { return c.started.Load() }

// active is the collector's work while it holds the lease.
func (c *Collector) active(ctx context.Context) error {
	// Two channels: input rows are taken only while fewer than MaxPendingRows rows wait
	// for results, so a fast input stream cannot fill memory; results are always taken
	// (a row's results are what frees it).
	inputs := make(chan event, 1024)
	results := make(chan event, 4096)
	stopIn, err := c.consume(ctx, c.names.StreamInput(), c.names.InputSubjects(), inputs)
	if err != nil {
		return err
	}
	defer stopIn()
	stopRes, err := c.consume(ctx, c.names.StreamResults(), c.names.ResultSubjects(), results)
	if err != nil {
		return err
	}
	defer stopRes()

	var wg sync.WaitGroup
	pctx, stopPurge := context.WithCancel(ctx)
	defer func() { stopPurge(); wg.Wait() }()
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); c.purger(pctx) }()
	}
	// Only the active collector exports the backlog: the fleet's sum counts it once.
	wg.Add(1)
	go func() { defer wg.Done(); c.backlog.Run(pctx) }()
	tick := time.NewTicker(c.cfg.FlushInterval)
	defer tick.Stop()
	defer c.closeAll()
	for {
		in := inputs
		if c.waiting >= c.cfg.MaxPendingRows {
			in = nil
		}
		var ev event
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), lease.ErrLost) {
				return lease.ErrLost // another collector may be active: write nothing more
			}
			return c.checkpoint(context.WithoutCancel(ctx))
		case ev = <-in:
		case ev = <-results:
			c.resultsSeen = max(c.resultsSeen, ev.seq)
		case <-tick.C:
			if err := c.checkpoint(ctx); err != nil {
				return err
			}
			if err := c.retryStores(ctx); err != nil {
				return err
			}
			continue
		}
		if err := c.apply(ctx, ev); err != nil {
			return err
		}
		if c.pending >= c.cfg.FlushRows {
			if err := c.checkpoint(ctx); err != nil {
				return err
			}
		}
	}
}

// consume streams every message of a subject space from the start, in order, into events.
func (c *Collector) consume(ctx context.Context, stream, filter string, events chan<- event) (func(), error) {
	var cons jetstream.Consumer
	err := queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		cons, err = c.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ordered consumer on %s: %w", stream, err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		ev, ok := c.decodeEvent(msg)
		if !ok {
			return
		}
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}, jetstream.PullMaxMessages(1000), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			c.log.Debug().Err(err).Str("stream", stream).Msg("consume")
		}
	}))
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", stream, err)
	}
	return cc.Stop, nil
}

type eventKind int

const (
	evOpen eventKind = iota
	evRow
	evSeal
	evResult
)

type event struct {
	kind eventKind
	run  string
	row  int
	q    string
	data []byte
	seq  uint64 // stream sequence, to delete the message once its row is out
}

func (c *Collector) decodeEvent(msg jetstream.Msg) (event, bool) {
	ev, ok := c.decodeSubject(msg)
	if !ok {
		return ev, false
	}
	if err := wire.ValidateRunID(ev.run); err != nil {
		// Such a run can never be opened: nothing of it is kept.
		c.m.reject(rejectInvalidRunID)
		c.log.Warn().Err(err).Str("subject", msg.Subject()).Msg("event of an invalid run id dropped")
		return event{}, false
	}
	if meta, err := msg.Metadata(); err == nil {
		ev.seq = meta.Sequence.Stream
	}
	return ev, true
}

func (c *Collector) decodeSubject(msg jetstream.Msg) (event, bool) {
	subj := msg.Subject()
	if c.names.Kind(subj) == "results" {
		a, err := c.names.ParseResultSubject(subj)
		if err != nil {
			c.log.Warn().Err(err).Msg("ignoring result on a malformed subject")
			return event{}, false
		}
		return event{kind: evResult, run: a.Run, row: a.Row, q: a.Query, data: msg.Data()}, true
	}
	run, kind, row, err := c.names.ParseInputSubject(subj)
	if err != nil {
		c.log.Warn().Err(err).Msg("ignoring input on a malformed subject")
		return event{}, false
	}
	switch kind {
	case wire.InputOpen:
		return event{kind: evOpen, run: run, data: msg.Data()}, true
	case wire.InputSeal:
		return event{kind: evSeal, run: run, data: msg.Data()}, true
	default:
		return event{kind: evRow, run: run, row: row, data: msg.Data()}, true
	}
}

// getLast reads back the body of the last message on subject (retried; a missing
// message is jetstream.ErrMsgNotFound).
func (c *Collector) getLast(ctx context.Context, s jetstream.Stream, subject string) ([]byte, error) {
	msg, err := c.getLastMsg(ctx, s, subject)
	if err != nil {
		return nil, err
	}
	return msg.Data, nil
}

func (c *Collector) getLastMsg(ctx context.Context, s jetstream.Stream, subject string) (*jetstream.RawStreamMsg, error) {
	var msg *jetstream.RawStreamMsg
	err := retryGet(ctx, func(ctx context.Context) error {
		var err error
		msg, err = s.GetLastMsgForSubject(ctx, subject)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read back %s: %w", subject, err)
	}
	return msg, nil
}

// retryGet retries a read of the bus with a backoff, up to 20 times, unless the
// message is not found or ctx ends.
func retryGet(ctx context.Context, fn func(ctx context.Context) error) error {
	var err error
	for attempt := range 20 {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = fn(actx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(time.Duration(1<<min(attempt, 5)) * 50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return err
}

// closeAll closes the files of every open run.
func (c *Collector) closeAll() {
	for _, r := range c.runs {
		if r.out != nil {
			r.out.Close()
		}
	}
}

type metrics struct {
	rows          *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	takeover      prometheus.Gauge
	storeFailures prometheus.Counter
}

// Reasons of mq_collector_rejected_total.
const (
	rejectRowBeyondSeal = "row_beyond_seal"
	rejectInvalidRunID  = "invalid_run_id"
	rejectOrphanLimit   = "orphan_limit"
	rejectFinishedRun   = "finished_run"
)

func (m *metrics) reject(reason string) { m.rejected.WithLabelValues(reason).Inc() }

// rejectedCount reads a rejection counter (for tests).
func (m *metrics) rejectedCount(reason string) float64 {
	var out dto.Metric
	if err := m.rejected.WithLabelValues(reason).Write(&out); err != nil {
		return -1
	}
	return out.GetCounter().GetValue()
}

func newMetrics() *metrics {
	m := &metrics{
		rows:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_collector_rows_total", Help: "Rows emitted, by outcome."}, []string{"outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_collector_rejected_total", Help: "Events refused at the door, by reason."}, []string{"reason"}),
		takeover: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mq_collector_lease_wait_seconds", Help: "How long this collector stood by before it took the lease."}),
		storeFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "mq_collector_store_failures_total",
			Help: "Failed attempts to store a completed run's files in the results bucket (each is retried; the run says finished once they are stored)."}),
	}
	// Every label value is known: each series starts at 0.
	m.rows.WithLabelValues("ok")
	m.rows.WithLabelValues("error")
	for _, r := range []string{rejectInvalidRunID, rejectRowBeyondSeal, rejectOrphanLimit, rejectFinishedRun} {
		m.rejected.WithLabelValues(r)
	}
	return m
}

// Collectors returns the collector's metrics for registration.
func (c *Collector) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{c.m.rows, c.m.rejected, c.m.takeover, c.m.storeFailures}, c.backlog.Collectors()...)
}
