// Package collector owns row assembly: it folds run records, input rows and query
// results into per-row completion bitsets and emits every row exactly once, as a success
// row (input + all M outputs) or an error row (input + _error), never partially.
//
// It reads the input and results streams with ordered consumers (no acks, nothing to
// block: JetStream is the reorder buffer), keeps bodies in memory up to a bound and reads
// the others back by subject when their row's turn comes, and checkpoints after every
// fsynced batch: a restart truncates the files to the checkpoint and replays the streams,
// skipping rows already emitted.
package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
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
	// row is read until rows go out. Memory is bounded by it and MemoryLimit.
	MaxPendingRows int
	Topology       queue.Topology
	// Name identifies this collector in its lease; NoLease turns the single-active lease
	// off (one collector by deployment).
	Name    string
	NoLease bool
	// LeaseTTL is the lease's time to live (0: lease.DefaultTTL); every collector on the
	// same NATS must use the same value.
	LeaseTTL time.Duration
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
	js      jetstream.JetStream
	log     zerolog.Logger
	runsKV  jetstream.KeyValue
	retryKV jetstream.KeyValue
	input   jetstream.Stream
	results jetstream.Stream
	jobs    jetstream.Stream
	submit  jetstream.Stream
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
	// fence is the lease held while active (nil with NoLease): every side effect passes
	// it first (docs/OPERATIONS.md, "Collector lease and fencing").
	fence *lease.Fence
}

// maxOrphans bounds the events kept, over all runs, whose open record is missing; their
// bytes are also bounded by a quarter of MemoryLimit.
const maxOrphans = 100000

// orphanSize is what an orphan event (without its body) holds in memory, roughly.
func orphanSize(ev event) int64 { return 96 + int64(len(ev.run)+len(ev.q)) }

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

// New builds a collector.
func New(js jetstream.JetStream, cfg Config, log zerolog.Logger) (*Collector, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Collector{cfg: cfg, js: js, log: log.With().Str("component", "collector").Logger(),
		runs: map[string]*run{}, orphans: map[string][]event{}, done: map[string]bool{}, dirty: map[string]*run{}, purges: make(chan purge, 100000), m: newMetrics()}, nil
}

// Run folds events until ctx ends, checkpointing as it goes; it returns after a last
// checkpoint and once every goroutine it started has exited.
func (c *Collector) Run(ctx context.Context) error {
	if err := queue.Ensure(ctx, c.js, c.cfg.Topology); err != nil {
		return err
	}
	var err error
	if c.runsKV, err = c.js.KeyValue(ctx, wire.BucketRuns); err != nil {
		return fmt.Errorf("open kv %s: %w", wire.BucketRuns, err)
	}
	if c.input, err = c.js.Stream(ctx, wire.StreamInput); err != nil {
		return fmt.Errorf("open stream %s: %w", wire.StreamInput, err)
	}
	if c.results, err = c.js.Stream(ctx, wire.StreamResults); err != nil {
		return fmt.Errorf("open stream %s: %w", wire.StreamResults, err)
	}
	if c.jobs, err = c.js.Stream(ctx, wire.StreamJobs); err != nil {
		return fmt.Errorf("open stream %s: %w", wire.StreamJobs, err)
	}
	if c.submit, err = c.js.Stream(ctx, wire.StreamSubmit); err != nil {
		return fmt.Errorf("open stream %s: %w", wire.StreamSubmit, err)
	}
	if c.retryKV, err = c.js.KeyValue(ctx, wire.BucketRetry); err != nil {
		return fmt.Errorf("open kv %s: %w", wire.BucketRetry, err)
	}
	if c.cfg.NoLease {
		return c.active(ctx)
	}
	kv, err := lease.Ensure(ctx, c.js, c.cfg.Topology.Defaults().Replicas, c.cfg.LeaseTTL)
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
	stopIn, err := c.consume(ctx, wire.StreamInput, "input.>", inputs)
	if err != nil {
		return err
	}
	defer stopIn()
	stopRes, err := c.consume(ctx, wire.StreamResults, "results.>", results)
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
	if len(subj) > 8 && subj[:8] == "results." {
		a, err := wire.ParseResultSubject(subj)
		if err != nil {
			c.log.Warn().Err(err).Msg("ignoring result on a malformed subject")
			return event{}, false
		}
		return event{kind: evResult, run: a.Run, row: a.Row, q: a.Query, data: msg.Data()}, true
	}
	run, kind, row, err := wire.ParseInputSubject(subj)
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

func (c *Collector) apply(ctx context.Context, ev event) error {
	r := c.runs[ev.run]
	if ev.kind == evOpen {
		if r != nil {
			return nil // a duplicate open: first wins
		}
		var o wire.Open
		if err := wire.Decode(ev.data, &o); err != nil {
			c.log.Error().Err(err).Str("run", ev.run).Msg("undecodable open record; run ignored")
			return nil
		}
		if err := o.Validate(); err != nil || o.Run != ev.run {
			c.log.Error().Err(err).Str("run", ev.run).Msg("invalid open record; run ignored")
			return nil
		}
		r, err := c.openRun(ctx, &o)
		if err != nil {
			return err
		}
		if r.finished {
			// Finished before (its checkpoint says so), yet its open record is still on
			// the bus: the collector stopped between the checkpoint and the purge.
			c.dropOrphans(o.Run)
			c.forget(o.Run)
			return c.cleanup(ctx, o.Run, o.Deployments)
		}
		c.runs[o.Run] = r
		if err := c.replayOrphans(ctx, o.Run); err != nil {
			return err
		}
		return c.advance(ctx, r, -1)
	}
	if r == nil {
		// The two streams are read independently: a result may come before its run's
		// open record. Read the open record by subject rather than buffering.
		data, err := c.getLast(ctx, c.input, wire.InputOpenSubject(ev.run))
		if err == nil {
			if err := c.apply(ctx, event{kind: evOpen, run: ev.run, data: data}); err != nil {
				return err
			}
			if r = c.runs[ev.run]; r != nil {
				return c.apply(ctx, ev)
			}
		} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
		// No open record (yet): a late duplicate of a finished, purged run, or a publisher
		// that broke the open-first rule.
		if c.isDone(ctx, ev.run) {
			c.deleteLate(ctx, ev)
			return nil
		}
		return c.keepOrphan(ctx, ev)
	}
	if r.finished {
		return nil
	}
	if ev.kind != evSeal && r.sealed && ev.row >= r.total {
		c.rejectBeyondSeal(r, ev.row)
		return nil
	}
	switch ev.kind {
	case evSeal:
		var s wire.Seal
		if err := wire.Decode(ev.data, &s); err != nil {
			c.log.Error().Err(err).Str("run", r.id).Msg("undecodable seal record")
			return nil
		}
		if r.sealed {
			if s.Rows != r.total {
				c.log.Error().Str("run", r.id).Int("rows", s.Rows).Int("sealed", r.total).Msg("a second seal with another row count ignored: the first seal wins")
			}
			return nil
		}
		r.sealed, r.total = true, s.Rows
		c.dirty[r.id] = r
		// Rows read before the seal but numbered past it are not part of the run.
		for i := range r.rows {
			if i >= r.total {
				c.rejectBeyondSeal(r, i)
				c.dropRow(r, i)
			}
		}
		for i := range r.above {
			if i >= r.total {
				c.log.Error().Str("run", r.id).Int("row", i).Int("sealed", r.total).Msg("a row numbered past the seal was written before the seal was read")
			}
		}
	case evRow:
		if r.isEmitted(ev.row) {
			return nil
		}
		var row wire.Row
		if err := wire.Decode(ev.data, &row); err != nil {
			// An input row nobody can read still completes: as an error row.
			row = wire.Row{Run: r.id, Row: ev.row, Error: &wire.Error{Reason: wire.ReasonMalformedRecord, Message: "undecodable input row: " + err.Error()}}
		}
		if bad := r.checkRowData(row.Data, row.Error == nil); bad != nil {
			// What the row cannot be written with is dropped; the row becomes an error row.
			row.Data = nil
			if row.Error == nil {
				row.Error = bad
			}
		}
		rs := r.rowState(ev.row)
		if rs.input {
			return nil
		}
		rs.input = true
		c.waiting++
		rs.preErr = row.Error
		if c.cached+int64(len(row.Data)) <= c.cfg.MemoryLimit {
			rs.data = row.Data
			rs.dataCached = true
			c.cached += int64(len(row.Data))
		}
	case evResult:
		qi := r.open.QueryIndex(ev.q)
		if qi < 0 {
			c.log.Warn().Str("run", r.id).Str("query", ev.q).Msg("result of an unknown query ignored")
			return nil
		}
		if r.isEmitted(ev.row) {
			return nil
		}
		rs := r.rowState(ev.row)
		if rs.has(qi) {
			return nil // first result wins
		}
		rs.set(qi)
		rs.resultSeqs[qi] = ev.seq
		if c.cached+int64(len(ev.data)) <= c.cfg.MemoryLimit {
			rs.results[qi] = ev.data
			c.cached += int64(len(ev.data))
		}
	}
	touched := ev.row
	if ev.kind == evSeal {
		touched = -1
	}
	return c.advance(ctx, r, touched)
}

// keepOrphan keeps an event of a run without an open record, without its body (read
// back by subject when the open record shows up), within maxOrphans and a quarter of
// MemoryLimit. Beyond, the event is dropped and counted: a restart replays it.
func (c *Collector) keepOrphan(_ context.Context, ev event) error {
	ev.data = nil
	size := orphanSize(ev)
	if c.orphanN >= maxOrphans || c.orphanBytes+size > c.cfg.MemoryLimit/4 {
		c.m.reject(rejectOrphanLimit)
		c.log.Warn().Str("run", ev.run).Int("orphans", c.orphanN).Msg("event of a run without an open record dropped: orphan limit reached (a restart reads it again)")
		return nil
	}
	c.orphans[ev.run] = append(c.orphans[ev.run], ev)
	c.orphanN++
	c.orphanBytes += size
	c.cached += size
	return nil
}

// dropOrphans forgets the kept events of a run.
func (c *Collector) dropOrphans(id string) {
	for _, ev := range c.orphans[id] {
		size := orphanSize(ev)
		c.orphanN--
		c.orphanBytes -= size
		c.cached -= size
	}
	delete(c.orphans, id)
}

// maxDone bounds the finished runs remembered in memory.
const maxDone = 10000

// forget drops a finished run from memory, remembering only that it is done.
func (c *Collector) forget(id string) {
	delete(c.runs, id)
	delete(c.dirty, id)
	if !c.done[id] {
		c.done[id] = true
		c.doneOrder = append(c.doneOrder, id)
		if len(c.doneOrder) > maxDone {
			delete(c.done, c.doneOrder[0])
			c.doneOrder = c.doneOrder[1:]
		}
	}
}

// isDone reports whether a run is finished: remembered, or so says its final status.
func (c *Collector) isDone(ctx context.Context, id string) bool {
	if c.done[id] {
		return true
	}
	if _, kept := c.orphans[id]; kept {
		return false // asked already for this run
	}
	e, err := c.runsKV.Get(ctx, id)
	if err != nil {
		return false
	}
	var st wire.RunStatus
	if json.Unmarshal(e.Value(), &st) != nil || !st.Finished {
		return false
	}
	c.forget(id)
	return true
}

// deleteLate deletes a message of a finished run that arrived after its purge.
func (c *Collector) deleteLate(ctx context.Context, ev event) {
	c.m.reject(rejectFinishedRun)
	if ev.seq == 0 || c.fence.Check() != nil {
		return
	}
	s := c.input
	if ev.kind == evResult {
		s = c.results
	}
	if err := s.DeleteMsg(ctx, ev.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && ctx.Err() == nil {
		c.log.Debug().Err(err).Str("run", ev.run).Uint64("seq", ev.seq).Msg("delete a late message of a finished run")
	}
}

// replayOrphans applies the kept events of a run that was just opened, reading each
// body back by subject (one that is gone was purged: skipped).
func (c *Collector) replayOrphans(ctx context.Context, id string) error {
	evs := c.orphans[id]
	delete(c.orphans, id)
	for _, ev := range evs {
		size := orphanSize(ev)
		c.orphanN--
		c.orphanBytes -= size
		c.cached -= size
		s, subject := c.input, wire.InputSealSubject(id)
		switch ev.kind {
		case evRow:
			subject = wire.InputRowSubject(id, ev.row)
		case evResult:
			s, subject = c.results, wire.ResultSubject(id, ev.row, ev.q)
		}
		msg, err := c.getLastMsg(ctx, s, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		ev.data, ev.seq = msg.Data, msg.Sequence
		if err := c.apply(ctx, ev); err != nil {
			return err
		}
	}
	return nil
}

// rejectBeyondSeal counts and logs an event of a row the seal says does not exist.
func (c *Collector) rejectBeyondSeal(r *run, row int) {
	c.m.reject(rejectRowBeyondSeal)
	c.log.Error().Str("run", r.id).Int("row", row).Int("sealed", r.total).Msg("row numbered past the seal rejected")
}

// dropRow forgets a row that will not be written, releasing what it held.
func (c *Collector) dropRow(r *run, i int) {
	rs := r.rows[i]
	if rs == nil {
		return
	}
	if rs.input {
		c.waiting--
	}
	if rs.dataCached {
		c.cached -= int64(len(rs.data))
	}
	for _, b := range rs.results {
		c.cached -= int64(len(b))
	}
	delete(r.rows, i)
}

func (c *Collector) closeAll() {
	for _, r := range c.runs {
		if r.out != nil {
			r.out.Close()
		}
	}
}

// runDir is where a run's files live.
func (c *Collector) runDir(id string) string { return filepath.Join(c.cfg.OutDir, id) }

// loadCheckpoint reads a run's checkpoint; a missing one is an empty checkpoint.
func loadCheckpoint(dir string) (*checkpoint, error) {
	b, err := os.ReadFile(filepath.Join(dir, sink.Checkpoint))
	if errors.Is(err, os.ErrNotExist) {
		return &checkpoint{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("decode checkpoint %s: %w", dir, err)
	}
	return &cp, nil
}
