package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
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
	started     time.Time
	// statusRev is the revision of the run's status key this collector last saw or
	// wrote: status writes are compare-and-set on it.
	statusRev uint64
	// reserved are the output keys no input key may take (outputs, usage, model, _error).
	reserved map[string]bool
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
	dec := json.NewDecoder(bytes.NewReader(t))
	if _, err := dec.Token(); err != nil {
		return bad("input row data: "+err.Error(), "")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return bad("input row data: "+err.Error(), "")
		}
		k, _ := tok.(string)
		switch {
		case seen[k]:
			return bad(fmt.Sprintf("input key %q appears twice", k), k)
		case r.reserved[k]:
			return bad(fmt.Sprintf("input key %q is also an output column", k), k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return bad("input row data: "+err.Error(), "")
		}
	}
	return nil
}

func reservedKeys(o *wire.Open) map[string]bool {
	m := map[string]bool{"_error": true}
	for _, q := range o.Queries {
		for _, c := range q.Columns {
			m[c] = true
		}
		m[q.Name+"_usage"], m[q.Name+"_model"] = true, true
	}
	return m
}

// headerRow reports whether a row can give a run its CSV input columns: its data made
// it through the door and it has keys.
func headerRow(rs *rowState, data json.RawMessage) bool {
	if rs.preErr != nil && rs.preErr.Reason == wire.ReasonMalformedRecord {
		return false
	}
	return len(objectKeys(data)) > 0
}

// maxCSVPending bounds the rows held for a CSV header that no well-formed row gave yet.
const maxCSVPending = 1000

// Stats are a run's counters, kept in the checkpoint and the summary.
type Stats struct {
	RowsOK           int     `json:"rows_ok"`
	RowsFailed       int     `json:"rows_failed"`
	Calls            int64   `json:"calls"`
	Retries          int64   `json:"retries"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	Cost             float64 `json:"cost"`
}

type checkpoint struct {
	Run      string       `json:"run"`
	Next     int          `json:"next"`
	Above    []int        `json:"above,omitempty"`
	Offsets  sink.Offsets `json:"offsets"`
	Stats    Stats        `json:"stats"`
	Started  time.Time    `json:"started"`
	Finished bool         `json:"finished"`
	// The lease under which it was written: a collector never overwrites a checkpoint
	// of a later epoch of the same lease bucket (it has been fenced off).
	LeaseEpoch  uint64 `json:"lease_epoch,omitempty"`
	LeaseBucket string `json:"lease_bucket,omitempty"`
}

type rowState struct {
	have       []uint64
	count      int
	input      bool
	preErr     *wire.Error
	data       json.RawMessage
	dataCached bool
	results    [][]byte // per query; nil when not cached (read back by subject)
	resultSeqs []uint64 // stream sequences, deleted once the row is durably out
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
		rs = &rowState{have: make([]uint64, (r.m+63)/64), results: make([][]byte, r.m), resultSeqs: make([]uint64, r.m)}
		r.rows[i] = rs
	}
	return rs
}

func (r *run) isEmitted(i int) bool { return i < r.next || r.above[i] }

func (r *run) complete(rs *rowState) bool {
	return rs != nil && rs.input && (rs.preErr != nil || rs.count == r.m)
}

func (r *run) emittedCount() int { return r.next + len(r.above) }

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
		return r, nil
	}
	out, err := sink.Open(dir, sink.Options{CSV: c.cfg.CSV, RawFormulas: c.cfg.CSVRawFormulas, Guard: c.fence.Check}, cp.Offsets)
	if err != nil {
		return nil, err
	}
	r.out = out
	// Claim the run for this lease epoch before anything else is written: a stale
	// collector that slipped past its fence cannot put an older checkpoint back.
	if err := c.writeCheckpoint(r, cp.Offsets); err != nil {
		out.Close()
		return nil, err
	}
	if len(o.InputColumns) > 0 {
		if err := r.setCSVColumns(o.InputColumns); err != nil {
			return nil, err
		}
	}
	c.log.Info().Str("run", o.Run).Int("queries", r.m).Str("order", r.order).Int("resume_at", r.next).Str("dir", dir).Msg("run opened")
	return r, nil
}

func (r *run) setCSVColumns(input []string) error {
	okCols := append([]string{}, input...)
	for _, q := range r.open.Queries {
		okCols = append(okCols, q.Columns...)
		okCols = append(okCols, q.Name+"_usage", q.Name+"_model")
	}
	errCols := append(append([]string{}, input...), "_error")
	return r.out.SetCSVColumns(okCols, errCols)
}

// advance emits every row that may go out now. touched is the row an event changed
// (-1: any row may have).
func (c *Collector) advance(ctx context.Context, r *run, touched int) error {
	if r.order == wire.OrderCompletion {
		ids := make([]int, 0)
		if touched >= 0 {
			if r.complete(r.rows[touched]) {
				ids = append(ids, touched)
			}
		} else {
			for i, rs := range r.rows {
				if r.complete(rs) {
					ids = append(ids, i)
				}
			}
		}
		sort.Ints(ids)
		for _, i := range ids {
			if err := c.emit(ctx, r, i); err != nil {
				return err
			}
		}
		for r.above[r.next] {
			delete(r.above, r.next)
			r.next++
		}
	} else {
		for r.complete(r.rows[r.next]) {
			if err := c.emit(ctx, r, r.next); err != nil {
				return err
			}
		}
	}
	// Finished when every row of [0, total) is out: not when as many rows are.
	if r.sealed && r.next >= r.total && !r.finished {
		return c.finish(ctx, r)
	}
	return nil
}

// emit writes row i (complete) to the sink and forgets its state.
func (c *Collector) emit(ctx context.Context, r *run, i int) error {
	rs := r.rows[i]
	data := rs.data
	if !rs.dataCached {
		msg, err := c.getLast(ctx, c.input, wire.InputRowSubject(r.id, i))
		if err != nil {
			return err
		}
		var row wire.Row
		if err := wire.Decode(msg, &row); err != nil {
			return fmt.Errorf("input row %s/%d: %w", r.id, i, err)
		}
		data = row.Data
	}
	var line []byte
	var ok bool
	if rs.preErr != nil {
		line = withField(data, "_error", rs.preErr)
	} else {
		results := make([]wire.Result, r.m)
		for qi, q := range r.open.Queries {
			b := rs.results[qi]
			if b == nil {
				var err error
				if b, err = c.getLast(ctx, c.results, wire.ResultSubject(r.id, i, q.Name)); err != nil {
					return err
				}
			}
			if err := wire.Decode(b, &results[qi]); err != nil {
				results[qi] = wire.Result{Query: q.Name, Error: &wire.Error{Reason: wire.ReasonPoison, Message: "undecodable result: " + err.Error()}}
			}
		}
		line, ok = r.fold(data, results)
	}
	if r.out.CSVNeedsColumns() && headerRow(rs, data) {
		if err := r.setCSVColumns(objectKeys(data)); err != nil {
			return err
		}
	}
	var err error
	if ok {
		err = r.out.WriteOK(line)
		r.stats.RowsOK++
		c.m.rows.WithLabelValues("ok").Inc()
	} else {
		err = r.out.WriteError(line)
		r.stats.RowsFailed++
		c.m.rows.WithLabelValues("error").Inc()
	}
	if err != nil {
		return err
	}
	if r.out.CSVNeedsColumns() && r.out.CSVPending() >= maxCSVPending {
		c.log.Warn().Str("run", r.id).Int("rows", maxCSVPending).Msg("no well-formed row among the first rows: CSV header without input columns")
		if err := r.setCSVColumns(nil); err != nil {
			return err
		}
	}
	c.dropRow(r, i) // release memory
	if i == r.next {
		r.next++
		for r.above[r.next] {
			delete(r.above, r.next)
			r.next++
		}
	} else {
		r.above[i] = true
	}
	// The input row stays until the run finishes: it tells a resuming producer that the
	// row (and, published before it, every job of it) is on the bus.
	for _, seq := range rs.resultSeqs {
		r.emittedTop = max(r.emittedTop, seq)
	}
	c.dirty[r.id] = r
	c.pending++
	return nil
}

// fold builds the output line of a row whose M results are all in: a success row only
// when every query succeeded, else an error row carrying none of the outputs.
func (r *run) fold(data json.RawMessage, results []wire.Result) ([]byte, bool) {
	var failed []map[string]any
	for qi := range results {
		res := &results[qi]
		// What the provider billed for the query: every call of every delivery
		// (docs/WIRE.md, "Calls, retries and tokens").
		r.stats.Calls += int64(res.Calls)
		r.stats.Retries += int64(res.Retries)
		if b := res.Billed; b != nil {
			r.stats.PromptTokens += b.PromptTokens
			r.stats.CompletionTokens += b.CompletionTokens
			r.stats.Cost += float64(b.PromptTokens)/1000*r.open.PromptPer1K + float64(b.CompletionTokens)/1000*r.open.CompletionPer1K
		}
		if !res.OK {
			e := res.Error
			if e == nil {
				e = &wire.Error{Reason: wire.ReasonLLMCallFailed, Message: "failed result without an error"}
			}
			failed = append(failed, map[string]any{"query": r.open.Queries[qi].Name, "error": e})
			continue
		}
		for _, col := range r.open.Queries[qi].Columns {
			if _, ok := res.Fields[col]; !ok {
				failed = append(failed, map[string]any{"query": r.open.Queries[qi].Name, "error": &wire.Error{Reason: wire.ReasonInvalidResult,
					Message: fmt.Sprintf("success result without output column %q", col), Details: map[string]any{"field": col}}})
				break
			}
		}
	}
	if len(failed) > 0 {
		return withField(data, "_error", map[string]any{
			"reason": wire.ReasonQueryFailed, "failed_queries": failed,
			"succeeded_count": len(results) - len(failed), "total_count": len(results),
		}), false
	}
	var b bytes.Buffer
	b.Write(openObject(data))
	first := isEmptyObject(data)
	add := func(k string, v []byte) {
		if !first {
			b.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(v)
	}
	for qi, q := range r.open.Queries {
		res := &results[qi]
		for _, col := range q.Columns {
			add(col, res.Fields[col]) // present: checked above
		}
		u, _ := json.Marshal(res.Usage)
		add(q.Name+"_usage", u)
		m, _ := json.Marshal(res.Model)
		add(q.Name+"_model", m)
	}
	b.WriteByte('}')
	return b.Bytes(), true
}

// openObject returns the object without its closing brace ("{" for no data).
func openObject(data json.RawMessage) []byte {
	t := bytes.TrimSpace(data)
	if len(t) < 2 || t[0] != '{' {
		return []byte("{")
	}
	return t[:len(t)-1]
}

func isEmptyObject(data json.RawMessage) bool {
	t := bytes.TrimSpace(openObject(data))
	return len(bytes.TrimSpace(t[1:])) == 0
}

func withField(data json.RawMessage, key string, v any) []byte {
	var b bytes.Buffer
	b.Write(openObject(data))
	if !isEmptyObject(data) {
		b.WriteByte(',')
	}
	kb, _ := json.Marshal(key)
	vb, _ := json.Marshal(v)
	b.Write(kb)
	b.WriteByte(':')
	b.Write(vb)
	b.WriteByte('}')
	return b.Bytes()
}

// objectKeys lists a JSON object's keys in order.
func objectKeys(data json.RawMessage) []string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var keys []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return keys
		}
		k, _ := t.(string)
		keys = append(keys, k)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return keys
		}
	}
	return keys
}

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

// checkpoint makes every emitted row durable: fsync the files, write the checkpoint,
// publish the run's progress, then purge what is no longer needed.
func (c *Collector) checkpoint(ctx context.Context) error {
	for id, r := range c.dirty {
		if r.out == nil {
			delete(c.dirty, id)
			continue
		}
		off, err := r.out.Sync()
		if err != nil {
			return fmt.Errorf("run %s: %w", id, err)
		}
		if err := c.writeCheckpoint(r, off); err != nil {
			return err
		}
		if err := c.publishStatus(ctx, r); err != nil {
			return err
		}
		c.purgeRows(ctx, r)
		delete(c.dirty, id)
	}
	c.pending = 0
	return nil
}

// writeCheckpoint replaces the run's checkpoint, unless the one on disk was written
// under a later epoch of the lease (then this collector is stale: ErrLost).
func (c *Collector) writeCheckpoint(r *run, off sink.Offsets) error {
	disk, err := loadCheckpoint(r.out.Dir())
	if err != nil {
		return err
	}
	if disk.LeaseBucket == c.fence.Bucket() && disk.LeaseEpoch > c.fence.Epoch() {
		return fmt.Errorf("run %s: checkpoint written under lease epoch %d, this collector holds %d: %w", r.id, disk.LeaseEpoch, c.fence.Epoch(), lease.ErrLost)
	}
	cp := checkpoint{Run: r.id, Next: r.next, Offsets: off, Stats: r.stats, Started: r.started, Finished: r.finished,
		LeaseEpoch: c.fence.Epoch(), LeaseBucket: c.fence.Bucket()}
	for a := range r.above {
		cp.Above = append(cp.Above, a)
	}
	sort.Ints(cp.Above)
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	return r.out.WriteFile(sink.Checkpoint, b)
}

// loadStatusRev reads the revision of the run's status key, the base of its
// compare-and-set writes.
func (c *Collector) loadStatusRev(ctx context.Context, r *run) error {
	e, err := c.runsKV.Get(ctx, r.id)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		r.statusRev = 0
	case err != nil:
		return fmt.Errorf("read status of run %s: %w", r.id, err)
	default:
		r.statusRev = e.Revision()
	}
	return nil
}

// publishStatus writes the run's status by compare-and-set on the revision this
// collector last saw: a status written by a collector of a later lease epoch is never
// overwritten (ErrLost). Other failures are logged: the status is advisory.
func (c *Collector) publishStatus(ctx context.Context, r *run) error {
	st := wire.RunStatus{Run: r.id, State: wire.RunOpen, Emitted: r.emittedCount(), OK: r.stats.RowsOK, Failed: r.stats.RowsFailed,
		Next: r.next, OutDir: r.out.Dir(), Updated: time.Now().UTC(), Finished: r.finished,
		Deployments: r.open.Deployments, Started: r.started}
	if r.sealed {
		st.State, st.Total = wire.RunSealed, r.total
	}
	if r.finished {
		st.State = wire.RunCompleted
	}
	st.LeaseEpoch = c.fence.Epoch()
	b, _ := json.Marshal(st)
	for range 3 {
		if err := c.fence.Check(); err != nil {
			return fmt.Errorf("publish status of run %s: %w", r.id, err)
		}
		var rev uint64
		var err error
		if r.statusRev == 0 {
			rev, err = c.runsKV.Create(ctx, r.id, b)
		} else {
			rev, err = c.runsKV.Update(ctx, r.id, b, r.statusRev)
		}
		if err == nil {
			r.statusRev = rev
			return nil
		}
		if !queue.IsKeyExists(err) {
			if ctx.Err() == nil {
				c.log.Warn().Err(err).Str("run", r.id).Msg("publish run status")
			}
			return nil
		}
		// Someone wrote it since: a later collector (stop), or a leftover of ours.
		e, gerr := c.runsKV.Get(ctx, r.id)
		if errors.Is(gerr, jetstream.ErrKeyNotFound) {
			r.statusRev = 0
			continue
		}
		if gerr != nil {
			c.log.Warn().Err(gerr).Str("run", r.id).Msg("read run status")
			return nil
		}
		var cur wire.RunStatus
		if json.Unmarshal(e.Value(), &cur) == nil && cur.LeaseEpoch > c.fence.Epoch() {
			return fmt.Errorf("status of run %s written under lease epoch %d, this collector holds %d: %w", r.id, cur.LeaseEpoch, c.fence.Epoch(), lease.ErrLost)
		}
		r.statusRev = e.Revision()
	}
	return nil
}

// purgeRows hands the results of durably emitted rows to the purger: one purge of the
// run's results subjects below the lowest sequence still needed, a result of a row not
// yet out or one not yet read (the results stream is read in order, so every result
// below resultsSeen+1 has been). A result below that bound whose row is out is no
// longer needed; one of a row not out is above it. Results held above the bound go with
// a later checkpoint or the run's final purge. The fold never waits for the purger; a
// purge it drops (queue full, an error) is done by a later one or the final purge.
func (c *Collector) purgeRows(_ context.Context, r *run) {
	if r.emittedTop < r.purgedBelow {
		return // nothing emitted since the last purge
	}
	bound := c.resultsSeen + 1
	for _, rs := range r.rows {
		for _, seq := range rs.resultSeqs {
			if seq != 0 && seq < bound {
				bound = seq
			}
		}
	}
	if bound <= r.purgedBelow {
		return
	}
	select {
	case c.purges <- purge{stream: c.results, subject: "results." + r.id + ".>", below: bound}:
		r.purgedBelow = bound
	default:
	}
}

// purge is one request to the purger: the messages of subject below a sequence, or
// (subject empty) the message at seq.
type purge struct {
	stream  jetstream.Stream
	subject string
	below   uint64
	seq     uint64
}

// purger deletes emitted rows' messages, a few requests at a time, until ctx ends.
func (c *Collector) purger(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-c.purges:
			if c.fence.Check() != nil {
				continue // not ours to delete any more
			}
			var err error
			if p.subject != "" {
				err = p.stream.Purge(ctx, jetstream.WithPurgeSubject(p.subject), jetstream.WithPurgeSequence(p.below))
			} else {
				err = p.stream.DeleteMsg(ctx, p.seq)
			}
			if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && ctx.Err() == nil {
				c.log.Debug().Err(err).Str("subject", p.subject).Uint64("below", p.below).Uint64("seq", p.seq).Msg("purge emitted messages")
			}
		}
	}
}

// finish writes the summary of a sealed run whose rows are all out, marks it completed
// and purges what is left of it.
func (c *Collector) finish(ctx context.Context, r *run) error {
	if r.out.CSVNeedsColumns() { // no well-formed row in the whole run
		if err := r.setCSVColumns(nil); err != nil {
			return err
		}
	}
	off, err := r.out.Sync()
	if err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	r.finished = true
	sum := Summary{Run: r.id, Status: "completed", Rows: r.total, Stats: r.stats, Started: r.started, Finished: time.Now().UTC(),
		Dir: r.out.Dir(), Results: r.out.Dir() + "/" + sink.ResultsJSONL, Errors: r.out.Dir() + "/" + sink.ErrorsJSONL}
	sum.WallSeconds = sum.Finished.Sub(r.started).Seconds()
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := r.out.WriteFile(sink.Summary, append(b, '\n')); err != nil {
		return err
	}
	if err := c.writeCheckpoint(r, off); err != nil {
		return err
	}
	// The run's submitted records go before its status says finished: a submitter that
	// reuses the run id once it reads "finished" must see its new records refused by the
	// producer service (finished_run), not purged here unseen.
	if err := c.fence.Check(); err != nil {
		return fmt.Errorf("purge run %s: %w", r.id, err)
	}
	if err := c.submit.Purge(ctx, jetstream.WithPurgeSubject("submit.*."+r.id+".>")); err != nil && ctx.Err() == nil {
		c.log.Warn().Err(err).Str("run", r.id).Msg("purge a finished run's submitted records")
	}
	if err := c.publishStatus(ctx, r); err != nil {
		return err
	}
	if err := c.fence.Check(); err != nil {
		return fmt.Errorf("purge run %s: %w", r.id, err)
	}
	r.out.Close()
	r.out = nil
	for i := range r.rows {
		c.dropRow(r, i)
	}
	r.rows = nil
	c.forget(r.id)
	if err := c.cleanup(ctx, r.id, r.open.Deployments); err != nil {
		return err
	}
	c.log.Info().Str("run", r.id).Int("rows_ok", r.stats.RowsOK).Int("rows_failed", r.stats.RowsFailed).Float64("wall_seconds", sum.WallSeconds).Msg("run completed")
	return nil
}

// cleanup removes everything of a finished run from the bus but its final status:
// its subjects in the input, results and jobs streams (its submitted records went before
// the final status, see finish), its job consumers, and
// its keys "<run>.*" in the runs and retry buckets (purged, so that watchers see it,
// then the purge markers removed). It is idempotent: a collector that finds a finished
// run's data on start runs it again. Failures are logged; a restart retries them.
func (c *Collector) cleanup(ctx context.Context, id string, deployments []string) error {
	if err := c.fence.Check(); err != nil {
		return fmt.Errorf("clean up run %s: %w", id, err)
	}
	log := c.log.With().Str("run", id).Logger()
	for _, p := range []struct {
		s       jetstream.Stream
		subject string
	}{
		{c.input, "input." + id + ".>"}, {c.results, "results." + id + ".>"},
		{c.jobs, "jobs.*." + id + ".>"},
	} {
		if err := p.s.Purge(ctx, jetstream.WithPurgeSubject(p.subject)); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Str("subject", p.subject).Msg("purge a finished run")
		}
	}
	for _, dep := range deployments { // the run's job consumers are done
		if err := c.js.DeleteConsumer(ctx, wire.StreamJobs, queue.JobConsumerName(dep, id)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			log.Debug().Err(err).Msg("delete job consumer")
		}
	}
	for _, kv := range []jetstream.KeyValue{c.runsKV, c.retryKV} {
		keys, err := kv.ListKeysFiltered(ctx, id+".>")
		if err != nil {
			log.Warn().Err(err).Str("bucket", kv.Bucket()).Msg("list keys of a finished run")
			continue
		}
		for k := range keys.Keys() {
			if err := kv.Purge(ctx, k); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("key", k).Msg("purge a key of a finished run")
			}
		}
		_ = keys.Stop()
		if s, err := c.js.Stream(ctx, "KV_"+kv.Bucket()); err == nil {
			if err := s.Purge(ctx, jetstream.WithPurgeSubject("$KV."+kv.Bucket()+"."+id+".>")); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("bucket", kv.Bucket()).Msg("purge the purge markers of a finished run")
			}
		}
	}
	return nil
}

// Summary is written to summary.json when a sealed run is complete.
type Summary struct {
	Run         string    `json:"run"`
	Status      string    `json:"status"`
	Rows        int       `json:"rows_total"`
	Stats       Stats     `json:"stats"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	WallSeconds float64   `json:"wall_seconds"`
	Dir         string    `json:"dir"`
	Results     string    `json:"results"`
	Errors      string    `json:"errors"`
}

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

type metrics struct {
	rows     *prometheus.CounterVec
	rejected *prometheus.CounterVec
	takeover prometheus.Gauge
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
	return &metrics{
		rows:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_collector_rows_total", Help: "Rows emitted, by outcome."}, []string{"outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_collector_rejected_total", Help: "Events refused at the door, by reason."}, []string{"reason"}),
		takeover: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mq_collector_lease_wait_seconds", Help: "How long this collector stood by before it took the lease."}),
	}
}

// Collectors returns the collector's metrics for registration.
func (c *Collector) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.m.rows, c.m.rejected, c.m.takeover}
}
