package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

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

// emit writes row i (complete) to the sink and forgets its state: its input data and
// results (read back by subject when not in memory) folded into one line, the line
// written, the row marked emitted.
func (c *Collector) emit(ctx context.Context, r *run, i int) error {
	rs := r.rows[i]
	data, err := c.inputData(ctx, r, i, rs)
	if err != nil {
		return err
	}
	line, ok, raws, err := c.rowLine(ctx, r, i, rs, data)
	if err != nil {
		return err
	}
	if err := c.writeLine(r, rs, data, line, ok); err != nil {
		return err
	}
	if !ok || r.open.Resubmit != nil {
		// Only a row that ends in error (and every row of a resubmission, itself made
		// of error rows) leaves what a resubmission needs: nothing on the success path.
		if err := r.out.WriteResubmit(resubmitEntry(rs.origin(i), ok, data, raws)); err != nil {
			return err
		}
	}
	clear(raws) // the bodies go with the row
	if c.cfg.PublishRows {
		if err := c.publishRow(ctx, r, i, line, ok); err != nil {
			return err
		}
	}
	c.markEmitted(r, i, rs)
	return nil
}

// publishRow publishes row i's line on the rows stream, awaiting its ack, before the row
// counts as written (and so before a checkpoint moves past it): a collector that dies
// between the two publishes it again, and the stream keeps the first (first writer
// wins, and the message id dedups within the window). A full stream is waited out.
func (c *Collector) publishRow(ctx context.Context, r *run, i int, line []byte, ok bool) error {
	msg := nats.NewMsg(c.names.RowSubject(r.id, i))
	msg.Data = bytes.TrimRight(line, "\n")
	outcome := wire.RowOK
	if !ok {
		outcome = wire.RowError
	}
	msg.Header.Set(wire.HeaderRowOutcome, outcome)
	err := queue.RetryPublish(ctx, c.log, c.names, msg.Subject, func(ctx context.Context) error {
		_, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(wire.RowMsgID(r.id, i)))
		return err
	})
	if err != nil {
		return fmt.Errorf("publish row %s/%d: %w", r.id, i, err)
	}
	return nil
}

// inputData is row i's input data: kept in memory, or read back by subject.
func (c *Collector) inputData(ctx context.Context, r *run, i int, rs *rowState) (json.RawMessage, error) {
	if rs.dataCached {
		return rs.data, nil
	}
	if rs.dataInResult {
		msg, err := c.getLast(ctx, c.results, c.names.ResultSubject(r.id, i, r.open.Queries[0].Name))
		if err != nil {
			return nil, err
		}
		return wire.RowData(msg), nil
	}
	msg, err := c.getLast(ctx, c.input, c.names.InputRowSubject(r.id, i))
	if err != nil {
		return nil, err
	}
	var row wire.Row
	if err := wire.Decode(msg, &row); err != nil {
		return nil, fmt.Errorf("input row %s/%d: %w", r.id, i, err)
	}
	return row.Data, nil
}

// resubmitEntry is a row's line of resubmit.jsonl (wire.ResubmitEntry): its row in the
// original run and, for an error row, its data and results as stored (none for a
// pre-known error). A success entry (a resubmission's) names its row only.
func resubmitEntry(row int, ok bool, data json.RawMessage, raws [][]byte) []byte {
	if ok {
		return []byte(`{"row":` + strconv.Itoa(row) + `,"ok":true}`)
	}
	e := wire.ResubmitEntry{Row: row, Data: data}
	for _, b := range raws {
		e.Results = append(e.Results, b)
	}
	b, err := json.Marshal(e)
	if err != nil { // a result that is not JSON: kept without the results
		b, _ = json.Marshal(wire.ResubmitEntry{Row: row, Data: data})
	}
	return b
}

// rowLine builds row i's output line: an error line for a row with a pre-known error,
// else the fold of its M results (each kept in memory or read back by subject; an
// undecodable one is a poison error). ok reports a success line; raws are the results
// as stored (none for a pre-known error), for resubmit.jsonl, valid until the next row.
func (c *Collector) rowLine(ctx context.Context, r *run, i int, rs *rowState, data json.RawMessage) ([]byte, bool, [][]byte, error) {
	if rs.preErr != nil {
		return withField(data, "_error", rs.preErr), false, nil, nil
	}
	results := make([]wire.Result, r.m)
	if len(r.raws) != r.m {
		r.raws = make([][]byte, r.m)
	}
	raws := r.raws // reused row after row: the success path allocates nothing for it
	for qi, q := range r.open.Queries {
		b := rs.results[qi]
		if b == nil {
			var err error
			if b, err = c.getLast(ctx, c.results, c.names.ResultSubject(r.id, i, q.Name)); err != nil {
				return nil, false, nil, err
			}
		}
		raws[qi] = b
		if err := wire.Decode(b, &results[qi]); err != nil {
			results[qi] = wire.Result{Query: q.Name, Error: &wire.Error{Reason: wire.ReasonPoison, Message: "undecodable result: " + err.Error()}}
			raws[qi] = nil
		}
	}
	line, ok := r.fold(data, results)
	return line, ok, raws, nil
}

// writeLine writes a row's line to the run's results or errors, counting it, and gives
// the CSV files their header once a well-formed row shows the input columns (or
// without input columns after maxCSVPending rows without one).
func (c *Collector) writeLine(r *run, rs *rowState, data json.RawMessage, line []byte, ok bool) error {
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
	return nil
}

// markEmitted releases row i's state and records it emitted (next, or above it), for
// the next checkpoint.
func (c *Collector) markEmitted(r *run, i int, rs *rowState) {
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
		if res.Cached {
			r.stats.Cached++
		}
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
	keys := r.outputKeys()
	size := len(data) + 2
	for qi := range results {
		for _, v := range results[qi].Fields {
			size += len(v) + 32
		}
		size += 160 + len(results[qi].Model)
	}
	b := bytes.NewBuffer(make([]byte, 0, size))
	b.Write(openObject(data))
	first := isEmptyObject(data)
	add := func(k, v []byte) {
		if !first {
			b.WriteByte(',')
		}
		first = false
		b.Write(k) // the key's JSON and a colon
		b.Write(v)
	}
	var ub [96]byte
	for qi, q := range r.open.Queries {
		res, k := &results[qi], &keys[qi]
		for ci, col := range q.Columns {
			add(k.columns[ci], res.Fields[col]) // present: checked above
		}
		add(k.usage, res.Usage.AppendJSON(ub[:0]))
		add(k.model, k.modelJSON(res.Model))
		if r.open.Cache {
			add(k.cached, strconv.AppendBool(nil, res.Cached))
		}
		if len(r.open.Pools) > 0 {
			d, _ := json.Marshal(res.Deployment)
			add(k.deployment, d)
		}
	}
	b.WriteByte('}')
	return b.Bytes(), true
}

// queryKeys are a query's output keys as JSON, each with its colon, built once per run,
// and the last model name it encoded (a run's answers name one model, or a few).
type queryKeys struct {
	columns                          [][]byte
	usage, model, cached, deployment []byte
	lastModel                        string
	lastModelJSON                    []byte
}

// outputKeys returns the run's output keys, building them on first use.
func (r *run) outputKeys() []queryKeys {
	if r.keys != nil {
		return r.keys
	}
	key := func(k string) []byte {
		b, _ := json.Marshal(k)
		return append(b, ':')
	}
	r.keys = make([]queryKeys, len(r.open.Queries))
	for qi, q := range r.open.Queries {
		k := &r.keys[qi]
		for _, col := range q.Columns {
			k.columns = append(k.columns, key(col))
		}
		k.usage, k.model = key(q.Name+"_usage"), key(q.Name+"_model")
		k.cached, k.deployment = key(q.Name+"_cached"), key(q.Name+"_deployment")
	}
	return r.keys
}

func (k *queryKeys) modelJSON(model string) []byte {
	if k.lastModelJSON == nil || model != k.lastModel {
		k.lastModel = model
		k.lastModelJSON, _ = json.Marshal(model)
	}
	return k.lastModelJSON
}

// maxCSVPending bounds the rows held for a CSV header that no well-formed row gave yet.
const maxCSVPending = 1000

// headerRow reports whether a row can give a run its CSV input columns: its data made
// it through the door and it has keys.
func headerRow(rs *rowState, data json.RawMessage) bool {
	if rs.preErr != nil && rs.preErr.Reason == wire.ReasonMalformedRecord {
		return false
	}
	return len(objectKeys(data)) > 0
}

func (r *run) setCSVColumns(input []string) error {
	r.csvInput = append([]string{}, input...)
	okCols := append([]string{}, input...)
	for _, q := range r.open.Queries {
		okCols = append(okCols, q.Columns...)
		okCols = append(okCols, q.Name+"_usage", q.Name+"_model")
		if r.open.Cache {
			okCols = append(okCols, q.Name+"_cached")
		}
		if len(r.open.Pools) > 0 {
			okCols = append(okCols, q.Name+"_deployment")
		}
	}
	errCols := append(append([]string{}, input...), "_error")
	return r.out.SetCSVColumns(okCols, errCols)
}

// restoreCSVColumns fixes the CSV headers of a run opened again: from its open record's
// input columns, or, for a run without them whose headers are already written, from the
// input columns the checkpoint kept (an older checkpoint has none: they are read back
// from errors.csv's header). Taking them from the next row instead would write its
// cells under the header in that row's key order.
func (r *run) restoreCSVColumns(cp *checkpoint) error {
	input := r.open.InputColumns
	if len(input) == 0 {
		if !r.out.CSVHeaderWritten() {
			return nil // the next well-formed row's keys, as before the restart
		}
		input = cp.CSVInput
		if input == nil {
			var err error
			if input, err = r.out.CSVHeaderInput(); err != nil {
				return fmt.Errorf("run %s: %w", r.id, err)
			}
		}
	}
	return r.setCSVColumns(input)
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
