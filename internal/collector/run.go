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
	// messages of rows emitted since the last checkpoint, deleted once it is durable
	toPurge []purge
	started time.Time
}

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

func (c *Collector) openRun(o *wire.Open) (*run, error) {
	dir := c.runDir(o.Run)
	cp, err := loadCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	r := &run{id: o.Run, open: *o, m: len(o.Queries), rows: map[int]*rowState{}, above: map[int]bool{},
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
	if r.finished {
		return r, nil
	}
	out, err := sink.Open(dir, c.cfg.CSV, cp.Offsets)
	if err != nil {
		return nil, err
	}
	r.out = out
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
	if r.sealed && r.emittedCount() >= r.total && !r.finished {
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
	if r.out.CSVNeedsColumns() {
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
	// release memory
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
		r.toPurge = append(r.toPurge, purge{stream: c.results, seq: seq})
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
			v, ok := res.Fields[col]
			if !ok {
				v = []byte("null")
			}
			add(col, v)
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
	var msg *jetstream.RawStreamMsg
	err := retryGet(ctx, func(ctx context.Context) error {
		var err error
		msg, err = s.GetLastMsgForSubject(ctx, subject)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read back %s: %w", subject, err)
	}
	return msg.Data, nil
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
		c.publishStatus(ctx, r)
		c.purgeRows(ctx, r)
		delete(c.dirty, id)
	}
	c.pending = 0
	return nil
}

func (c *Collector) writeCheckpoint(r *run, off sink.Offsets) error {
	cp := checkpoint{Run: r.id, Next: r.next, Offsets: off, Stats: r.stats, Started: r.started, Finished: r.finished}
	for a := range r.above {
		cp.Above = append(cp.Above, a)
	}
	sort.Ints(cp.Above)
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	return sink.WriteFileAtomic(r.out.Dir(), sink.Checkpoint, b)
}

// Status is the run progress published in the runs KV bucket under the run id.
type Status struct {
	Run     string `json:"run"`
	State   string `json:"state"` // open | sealed | completed
	Total   int    `json:"rows_total"`
	Emitted int    `json:"rows_emitted"`
	OK      int    `json:"rows_ok"`
	Failed  int    `json:"rows_failed"`
	Next    int    `json:"watermark"` // every row below has been emitted
	OutDir  string `json:"out_dir"`
	// Deployments and Started come from the open record (for status and ETA).
	Deployments []string  `json:"deployments"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	Finished    bool      `json:"finished"`
}

func (c *Collector) publishStatus(ctx context.Context, r *run) {
	st := Status{Run: r.id, State: "open", Emitted: r.emittedCount(), OK: r.stats.RowsOK, Failed: r.stats.RowsFailed,
		Next: r.next, OutDir: r.out.Dir(), Updated: time.Now().UTC(), Finished: r.finished,
		Deployments: r.open.Deployments, Started: r.started}
	if r.sealed {
		st.State, st.Total = "sealed", r.total
	}
	if r.finished {
		st.State = "completed"
	}
	b, _ := json.Marshal(st)
	if _, err := c.runsKV.Put(ctx, r.id, b); err != nil && ctx.Err() == nil {
		c.log.Warn().Err(err).Str("run", r.id).Msg("publish run status")
	}
}

// purgeRows hands the durably emitted rows to the purger: their input and results are
// no longer needed. The fold never waits for it; a row the purger drops (queue full, an
// error) stays until its run finishes and is purged whole.
func (c *Collector) purgeRows(_ context.Context, r *run) {
	for _, p := range r.toPurge {
		if p.seq == 0 {
			continue
		}
		select {
		case c.purges <- p:
		default:
		}
	}
	r.toPurge = r.toPurge[:0]
}

// purge is one message to delete, by stream sequence: a subject purge would scan the
// stream's subjects (quadratic over a run), a delete by sequence does not.
type purge struct {
	stream jetstream.Stream
	seq    uint64
}

// purger deletes emitted rows' messages, a few requests at a time, until ctx ends.
func (c *Collector) purger(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-c.purges:
			if err := p.stream.DeleteMsg(ctx, p.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && ctx.Err() == nil {
				c.log.Debug().Err(err).Uint64("seq", p.seq).Msg("delete emitted message")
			}
		}
	}
}

// finish writes the summary of a sealed run whose rows are all out, marks it completed
// and purges what is left of it.
func (c *Collector) finish(ctx context.Context, r *run) error {
	off, err := r.out.Sync()
	if err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	r.finished = true
	sum := Summary{Run: r.id, Status: "completed", Rows: r.total, Stats: r.stats, Started: r.started, Finished: time.Now().UTC(),
		Dir: r.out.Dir(), Results: r.out.Dir() + "/" + sink.ResultsJSONL, Errors: r.out.Dir() + "/" + sink.ErrorsJSONL}
	sum.WallSeconds = sum.Finished.Sub(r.started).Seconds()
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := sink.WriteFileAtomic(r.out.Dir(), sink.Summary, append(b, '\n')); err != nil {
		return err
	}
	if err := c.writeCheckpoint(r, off); err != nil {
		return err
	}
	c.publishStatus(ctx, r)
	r.toPurge = r.toPurge[:0]
	_ = c.input.Purge(ctx, jetstream.WithPurgeSubject("input."+r.id+".>"))
	_ = c.results.Purge(ctx, jetstream.WithPurgeSubject("results."+r.id+".>"))
	for _, dep := range r.open.Deployments { // the run's job consumers are done
		if err := c.js.DeleteConsumer(ctx, wire.StreamJobs, queue.JobConsumerName(dep, r.id)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			c.log.Debug().Err(err).Str("run", r.id).Msg("delete job consumer")
		}
	}
	r.out.Close()
	r.out = nil
	r.rows = nil
	delete(c.dirty, r.id)
	c.log.Info().Str("run", r.id).Int("rows_ok", r.stats.RowsOK).Int("rows_failed", r.stats.RowsFailed).Float64("wall_seconds", sum.WallSeconds).Msg("run completed")
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
	takeover prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		rows:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_collector_rows_total", Help: "Rows emitted, by outcome."}, []string{"outcome"}),
		takeover: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mq_collector_lease_wait_seconds", Help: "How long this collector stood by before it took the lease."}),
	}
}

// Collectors returns the collector's metrics for registration.
func (c *Collector) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.m.rows, c.m.takeover}
}
