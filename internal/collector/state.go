package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// run is the collector's state of one run.
type run struct {
	id       string
	open     wire.Open
	order    string
	m        int
	sealed   bool
	total    int
	finished bool
	out      *sink.Run
	// csvInput are the input columns of the CSV headers once fixed (setCSVColumns;
	// empty, not nil, for headers without input columns); nil until then.
	csvInput []string
	// Emitted rows: every row < next, plus the sparse set above it (completion order).
	next  int
	above map[int]bool
	rows  map[int]*rowState
	stats Stats
	// Results of emitted rows are purged once a checkpoint made them durable, in one
	// request per checkpoint: every result of the run below the lowest one still needed
	// (purgedBelow is the last such bound; emittedTop the highest result sequence of an
	// emitted row).
	purgedBelow uint64
	emittedTop  uint64
	// held is the purge bound's index: every result applied to a row not yet out, in
	// the order read (heldFrom: the entries before it are of rows gone out). The stream
	// is read in order, so the first entry whose row still holds it is the lowest
	// sequence still needed, and a checkpoint reads it without visiting every waiting
	// row. heldUnordered: a sequence came below the last one (never, as the stream is
	// read); purgeRows then visits every waiting row instead.
	held          []heldResult
	heldFrom      int
	heldUnordered bool
	started       time.Time
	// statusRev is the revision of the run's status key this collector last saw or
	// wrote: status writes are compare-and-set on it.
	statusRev uint64
	// reserved are the output keys no input key may take (outputs, usage, model, _error).
	reserved map[string]bool
	// storeDone: the files of a finished run are stored (or need not be, NoStore); until
	// then a failed store is tried again at storeAt, after storeWait (complete).
	storeDone bool
	storeAt   time.Time
	storeWait time.Duration
	// raws holds the stored results of the row being emitted (rowLine), reused.
	raws [][]byte
	// keys are the output keys as JSON, per query (fold).
	keys []queryKeys
}

// rowState is what the collector holds of one row not yet emitted: the bitset of the
// queries whose result is in, its input (or pre-known error), and the bodies kept in
// memory.
type rowState struct {
	have       []uint64
	count      int
	input      bool
	preErr     *wire.Error
	data       json.RawMessage
	dataCached bool
	// dataInResult: the input data came in the first query's result (wire.Job.Data),
	// not in an input row message; read back from there when not cached.
	dataInResult bool
	results      [][]byte // per query; nil when not cached (read back by subject)
	resultSeqs   []uint64 // stream sequences, deleted once the row is durably out
	// sourceRow is, in a resubmission, the row in the original run (-1: none).
	sourceRow int
}

// origin is row i's row in the original run: its own index, or a resubmission's
// source_row.
func (rs *rowState) origin(i int) int {
	if rs.sourceRow >= 0 {
		return rs.sourceRow
	}
	return i
}

func (rs *rowState) has(i int) bool { return rs.have[i/64]&(1<<(i%64)) != 0 }

func (rs *rowState) set(i int) {
	if !rs.has(i) {
		rs.have[i/64] |= 1 << (i % 64)
		rs.count++
	}
}

func (r *run) rowState(i int) *rowState {
	rs := r.rows[i]
	if rs == nil {
		rs = &rowState{have: make([]uint64, (r.m+63)/64), results: make([][]byte, r.m), resultSeqs: make([]uint64, r.m), sourceRow: -1}
		r.rows[i] = rs
	}
	return rs
}

func (r *run) isEmitted(i int) bool { return i < r.next || r.above[i] }

func (r *run) complete(rs *rowState) bool {
	return rs != nil && rs.input && (rs.preErr != nil || rs.count == r.m)
}

func (r *run) emittedCount() int { return r.next + len(r.above) }

// openRun builds the state of a run from its open record and its checkpoint (rows
// already emitted), opens its files truncated to the checkpoint, and claims it for this
// lease epoch. A run whose checkpoint says finished is returned without files.
func (c *Collector) openRun(ctx context.Context, o *wire.Open) (*run, error) {
	dir := c.runDir(o.Run)
	cp, err := loadCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	r := &run{id: o.Run, open: *o, m: len(o.Queries), rows: map[int]*rowState{}, above: map[int]bool{}, reserved: reservedKeys(o),
		next: cp.Next, stats: cp.Stats, started: cp.Started, finished: cp.Finished}
	for _, a := range cp.Above {
		r.above[a] = true
	}
	r.order = o.Order
	if c.cfg.Order != "" {
		r.order = c.cfg.Order
	}
	if r.order == "" {
		r.order = wire.OrderInput
	}
	if r.started.IsZero() {
		r.started = o.Created
		if r.started.IsZero() {
			r.started = time.Now()
		}
	}
	if err := c.loadStatusRev(ctx, r); err != nil {
		return nil, err
	}
	if r.finished {
		loadSummaryTotal(dir, r)
		return r, nil
	}
	out, err := sink.Open(dir, sink.Options{CSV: c.cfg.CSV, RawFormulas: c.cfg.CSVRawFormulas, Guard: c.fence.Check}, cp.Offsets)
	if err != nil {
		return nil, err
	}
	r.out = out
	out.AddCSVExtra(cp.CSVExtra)
	// Claim the run for this lease epoch before anything else is written: a stale
	// collector that slipped past its fence cannot put an older checkpoint back.
	if err := c.writeCheckpoint(r, cp.Offsets); err != nil {
		out.Close()
		return nil, err
	}
	if err := r.restoreCSVColumns(cp); err != nil {
		return nil, err
	}
	c.log.Info().Str("run", o.Run).Int("queries", r.m).Str("order", r.order).Int("resume_at", r.next).Str("dir", dir).Msg("run opened")
	return r, nil
}

// runDir is where a run's files live.
func (c *Collector) runDir(id string) string { return filepath.Join(c.cfg.OutDir, id) }

// reservedKeys are the output keys of a run no input key may take.
func reservedKeys(o *wire.Open) map[string]bool {
	m := map[string]bool{"_error": true}
	for _, q := range o.Queries {
		for _, c := range q.Columns {
			m[c] = true
		}
		m[q.Name+"_usage"], m[q.Name+"_model"] = true, true
		if o.Cache {
			m[q.Name+"_cached"] = true
		}
		if len(o.Pools) > 0 {
			m[q.Name+"_deployment"] = true
		}
	}
	return m
}

// checkRowData checks an input row's data at the door: a JSON object without repeated
// keys and without a key that an output of the run also writes (the output row would
// carry the key twice). need says whether data is required (a row without an error).
func (r *run) checkRowData(data json.RawMessage, need bool) *wire.Error {
	bad := func(msg, field string) *wire.Error {
		e := &wire.Error{Reason: wire.ReasonMalformedRecord, Message: msg}
		if field != "" {
			e.Details = map[string]any{"field": field}
		}
		return e
	}
	t := bytes.TrimSpace(data)
	if len(t) == 0 {
		if need {
			return bad("input row without data", "")
		}
		return nil
	}
	if t[0] != '{' {
		return bad("input row data is not a JSON object", "")
	}
	seen := map[string]bool{}
	keyErr := func(k string) *wire.Error {
		switch {
		case seen[k]:
			return bad(fmt.Sprintf("input key %q appears twice", k), k)
		case r.reserved[k]:
			return bad(fmt.Sprintf("input key %q is also an output column", k), k)
		}
		seen[k] = true
		return nil
	}
	if json.Valid(t) { // every well-formed row: its keys scanned, not decoded
		var e *wire.Error
		eachKey(t, func(k string) bool { e = keyErr(k); return e == nil })
		return e
	}
	// Malformed: the decoder names what is wrong and where.
	dec := json.NewDecoder(bytes.NewReader(t))
	if _, err := dec.Token(); err != nil {
		return bad("input row data: "+err.Error(), "")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return bad("input row data: "+err.Error(), "")
		}
		k, _ := tok.(string)
		if e := keyErr(k); e != nil {
			return e
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return bad("input row data: "+err.Error(), "")
		}
	}
	return nil
}

// apply folds one event into the state of its run, then emits what may go out now
// (advance). Each kind has its own step: applyOpen, applySeal, applyRow, applyResult;
// an event of a run not open here goes through applyUnopened first.
func (c *Collector) apply(ctx context.Context, ev event) error {
	r := c.runs[ev.run]
	if ev.kind == evOpen {
		return c.applyOpen(ctx, r, ev)
	}
	if r == nil {
		return c.applyUnopened(ctx, ev)
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
		return c.applySeal(ctx, r, ev)
	case evRow:
		return c.applyRow(ctx, r, ev)
	case evResult:
		return c.applyResult(ctx, r, ev)
	}
	return c.advance(ctx, r, ev.row)
}

// applyOpen opens a run at its open record (the first one wins; an undecodable or
// invalid one is ignored), replays the events kept while it was missing, and emits
// what may go out. A run whose checkpoint says finished is cleaned up again instead.
func (c *Collector) applyOpen(ctx context.Context, r *run, ev event) error {
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
		// the bus: the collector stopped between the finished checkpoint and the end of
		// the purge. Its files are final: store them (again: stored once), then finish.
		c.dropOrphans(o.Run)
		return c.complete(ctx, r)
	}
	c.runs[o.Run] = r
	if err := c.replayOrphans(ctx, o.Run); err != nil {
		return err
	}
	return c.advance(ctx, r, -1)
}

// applyUnopened takes an event of a run not open here. The two streams are read
// independently: a result may come before its run's open record, which is then read by
// subject rather than buffered. Without an open record (yet), the event is a late
// duplicate of a finished, purged run (deleted), or kept as an orphan until the open
// record shows up (a publisher that broke the open-first rule).
func (c *Collector) applyUnopened(ctx context.Context, ev event) error {
	data, err := c.getLast(ctx, c.input, c.names.InputOpenSubject(ev.run))
	if err == nil {
		if err := c.apply(ctx, event{kind: evOpen, run: ev.run, data: data}); err != nil {
			return err
		}
		if r := c.runs[ev.run]; r != nil {
			return c.apply(ctx, ev)
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	if c.isDone(ctx, ev.run) {
		c.deleteLate(ctx, ev)
		return nil
	}
	return c.keepOrphan(ctx, ev)
}

// applySeal seals a run with its row count (the first seal wins) and drops the rows
// read before it but numbered past it; any row may now be the last one out.
func (c *Collector) applySeal(ctx context.Context, r *run, ev event) error {
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
	return c.advance(ctx, r, -1)
}

// applyRow sets a row's input (the first one wins): its data, checked at the door, or
// the error it carries; an input row nobody can read still completes, as an error row.
// Its data is kept in memory within MemoryLimit, else read back when the row goes out.
func (c *Collector) applyRow(ctx context.Context, r *run, ev event) error {
	if r.isEmitted(ev.row) {
		return nil
	}
	var row wire.Row
	if err := wire.Decode(ev.data, &row); err != nil {
		// An input row nobody can read still completes: as an error row.
		row = wire.Row{Run: r.id, Row: ev.row, Error: &wire.Error{Reason: wire.ReasonMalformedRecord, Message: "undecodable input row: " + err.Error()}}
	}
	rs := r.rowState(ev.row)
	if rs.input {
		return nil
	}
	if row.SourceRow != nil && r.open.Resubmit != nil && *row.SourceRow >= 0 {
		rs.sourceRow = *row.SourceRow
	}
	c.setInput(r, rs, row.Data, row.Error, false)
	return c.advance(ctx, r, ev.row)
}

// setInput sets a row's input: its data, checked at the door (what the row cannot be
// written with is dropped and the row becomes an error row), or the error it carries.
// inResult says the data came in the row's first result (wire.Job.Data), where it is
// read back when it is not kept.
func (c *Collector) setInput(r *run, rs *rowState, data json.RawMessage, preErr *wire.Error, inResult bool) {
	if bad := r.checkRowData(data, preErr == nil); bad != nil {
		if preErr == nil {
			preErr = withRaw(bad, data)
		}
		data = nil
	}
	rs.input = true
	c.waiting++
	rs.preErr = preErr
	rs.dataInResult = inResult
	if c.cached+int64(len(data)) <= c.cfg.MemoryLimit {
		rs.data = data
		rs.dataCached = true
		c.cached += int64(len(data))
	}
}

// withRaw keeps the text of data refused at the door in the error's raw (capped as a
// malformed record's raw text is): the row is written without its data, and nothing of
// the input is lost.
func withRaw(e *wire.Error, data json.RawMessage) *wire.Error {
	t := bytes.TrimSpace(data)
	if len(t) == 0 {
		return e
	}
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	e.Details["raw"] = input.CapRaw(t)
	return e
}

// applyResult sets a query's bit in its row: the first result wins. Its body is kept in
// memory within MemoryLimit, else read back by subject when the row goes out.
func (c *Collector) applyResult(ctx context.Context, r *run, ev event) error {
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
	r.hold(ev.row, qi, ev.seq)
	if c.cached+int64(len(ev.data)) <= c.cfg.MemoryLimit {
		rs.results[qi] = ev.data
		c.cached += int64(len(ev.data))
	}
	if qi == 0 && !rs.input && r.open.Resubmit == nil {
		// A row whose first query's job carried its data has no input row message:
		// the data comes back in that query's result. (A resubmission's rows are
		// input rows, each with its source_row.)
		if data := wire.RowData(ev.data); data != nil {
			c.setInput(r, rs, data, nil, true)
		}
	}
	return c.advance(ctx, r, ev.row)
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

// maxOrphans bounds the events kept, over all runs, whose open record is missing; their
// bytes are also bounded by a quarter of MemoryLimit.
const maxOrphans = 100000

// orphanSize is what an orphan event (without its body) holds in memory, roughly.
func orphanSize(ev event) int64 { return 96 + int64(len(ev.run)+len(ev.q)) }

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
		s, subject := c.input, c.names.InputSealSubject(id)
		switch ev.kind {
		case evRow:
			subject = c.names.InputRowSubject(id, ev.row)
		case evResult:
			s, subject = c.results, c.names.ResultSubject(id, ev.row, ev.q)
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
