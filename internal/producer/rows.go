package producer

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/wire"
)

// next returns the next record: first those read ahead to find the header.
func (s *source) next() (input.Row, error) {
	if len(s.pre) > 0 {
		r := s.pre[0]
		s.pre = s.pre[1:]
		return r, nil
	}
	return s.rd.Next()
}

// planNext turns the next record into its plan (planRow, then fit), adds it to the
// rolling hash and counts it.
func (fr *fileRun) planNext(rec input.Row) (plan, error) {
	pl := planRow(fr.p, fr.queries, fr.cfg.Run, rec, fr.in.header)
	// A row of a run in input order rides in its first job (publishPlan can then tell
	// a row already written by the run's watermark).
	pl.carry = fr.p.Order == wire.OrderInput
	hashRow(fr.rolling, rec, pl.data)
	pl, err := fit(pl, fr.pub.names, fr.limit)
	if err != nil {
		return pl, err
	}
	if pl.row.Error != nil && pl.row.Error.Reason == wire.ReasonRowTooLarge {
		fr.log.Warn().Int("row", rec.Index).Str("reason", pl.row.Error.Message).Msg("row too large for a message: published as an error row")
	}
	fr.rep.Rows++
	if pl.rowErr {
		fr.rep.RowErrors++
	}
	return pl, nil
}

// skipPublished skips a row the resume point covers (an earlier attempt published it):
// its jobs are counted, and at the last such row the rolling hash must match the one
// checkpointed, or the input is not the one the run was started with.
func (fr *fileRun) skipPublished(rec input.Row, pl plan) (bool, error) {
	if fr.prev == nil || rec.Index >= fr.prev.Through {
		return false, nil
	}
	fr.rep.Jobs += len(pl.jobs)
	if rec.Index == fr.prev.Through-1 && hex.EncodeToString(fr.rolling.Sum(nil)) != fr.prev.RowsSHA256 {
		return true, &UsageError{fmt.Errorf("run %s: the input differs from the one this run was started with (rows 0..%d); use a new run id", fr.cfg.Run, rec.Index)}
	}
	return true, nil
}

// hashRow feeds one record into the rolling hash of the input: its data as planRow
// encoded it (plan.data; nil when the record is malformed: its raw text), so that a
// rerun can prove it reads the same rows.
func hashRow(h hash.Hash, rec input.Row, data []byte) {
	b := data
	if b == nil {
		b = []byte(rec.Raw)
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// plan is what one record becomes on the bus: its jobs, then its row. A record that
// cannot be parsed or rendered is a row carrying its error and no job.
type plan struct {
	row    wire.Row
	jobs   []wire.Job
	rowErr bool
	// data is the record as planRow encoded it (nil for a malformed record), also when
	// the row does not carry it (a colliding key) and after fit drops it (too large):
	// what the rolling hash of the input reads.
	data []byte
	// carry: the row's data may ride in its first job (wire.Job.Data) instead of an
	// input row message; fit decides whether it does.
	carry bool
	// line is the record's line in the input (0: not from a file, a submitted row).
	line int
	// Set by fit: the encoded jobs and row (nil when the first job carries the row).
	jobMsgs []*nats.Msg
	rowMsg  *nats.Msg
}

// maxCarried bounds the data a row's first job carries: a larger row keeps its own
// input row message, so that a job and its result stay well within max_payload.
const maxCarried = 64 << 10

// carried reports whether the plan's first job carries its row (no input row message).
func (pl *plan) carried() bool { return len(pl.jobs) > 0 && pl.jobs[0].Data != nil }

// planRow renders all M prompts of a row before anything of it is published.
func planRow(p *config.Pipeline, queries []config.Query, run string, rec input.Row, header []string) plan {
	row := wire.Row{V: wire.Version, Run: run, Row: rec.Index}
	var data []byte
	fail := func(e *wire.Error) plan {
		row.Error = e
		return plan{row: row, rowErr: true, data: data}
	}
	if rec.Err != nil {
		return fail(malformedError(rec))
	}
	data, err := rec.JSON()
	if err != nil {
		return fail(&wire.Error{Reason: wire.ReasonMalformedRecord, Message: err.Error(), Details: map[string]any{"line": rec.Line}})
	}
	if header != nil && !sameColumns(header, rec.Columns) {
		if err := p.CheckInputColumns(rec.Columns); err != nil {
			// Its data cannot be written beside the outputs: the error row keeps its text.
			return fail(malformedError(collidingRecord(rec, data, err)))
		}
	}
	row.Data = data
	values := rec.Map()
	jobs := make([]wire.Job, 0, len(queries))
	now := time.Now().UTC()
	for _, q := range queries {
		msgs, err := q.Render(values, p.Lookup)
		if err != nil {
			var re *config.RenderError
			details := map[string]any{"query": q.Name, "line": rec.Line}
			if errors.As(err, &re) && re.Field != "" {
				details["field"] = re.Field
			}
			return fail(&wire.Error{Reason: wire.ReasonTemplateRendering, Message: err.Error(), Details: details})
		}
		jobs = append(jobs, p.Job(q, run, rec.Index, msgs, now))
	}
	return plan{row: row, jobs: jobs, data: data, line: rec.Line}
}

// malformedError is the error of a malformed record: its line, its raw text, and the
// key at fault when known.
func malformedError(rec input.Row) *wire.Error {
	line, field := rec.Line, ""
	var re *input.RecordError
	if errors.As(rec.Err, &re) {
		line, field = re.Line, re.Field
	}
	details := map[string]any{"line": line, "raw": rec.Raw}
	if field != "" {
		details["field"] = field
	}
	return &wire.Error{Reason: wire.ReasonMalformedRecord, Message: rec.Err.Error(), Details: details}
}

// collidingRecord makes a record with a key that an output also writes (err, from
// config.CheckInputColumns) a malformed one: its error names the first such key, and its
// text (data, the record as encoded) is kept as its raw text.
func collidingRecord(rec input.Row, data []byte, err error) input.Row {
	re := &input.RecordError{Line: rec.Line, Msg: err.Error()}
	var ce *config.ColumnError
	if errors.As(err, &ce) {
		re.Field = ce.Column
	}
	return input.Row{Index: rec.Index, Line: rec.Line, Raw: input.CapRaw(data), Err: re}
}

// fit encodes a plan's messages and checks each against limit (the server's
// max_payload): a row or a rendered prompt too large for one message can never be
// published, so the row becomes an error row (row_too_large) naming its size and the
// limit; without its data when the data itself is what does not fit.
func fit(pl plan, names wire.Names, limit int64) (plan, error) {
	run, row := pl.row.Run, pl.row.Row
	pl.jobMsgs, pl.rowMsg = pl.jobMsgs[:0], nil
	if pl.carry && pl.row.Error == nil && len(pl.jobs) > 0 && len(pl.row.Data) <= maxCarried {
		pl.jobs[0].V, pl.jobs[0].Data = wire.VersionCarried, pl.row.Data
	}
	for i := range pl.jobs {
		j := &pl.jobs[i]
		m, err := newMsg(names.JobSubject(j.Deployment, run, j.Row, j.Query), wire.JobMsgID(run, j.Row, j.Query), j)
		if err != nil {
			return pl, err
		}
		if size := msgSize(m); limit > 0 && size > limit && j.Data != nil {
			// Too large with the row: the row keeps its own message.
			j.V, j.Data = wire.Version, nil
			if m, err = newMsg(m.Subject, m.Header.Get(wire.HeaderMsgID), j); err != nil {
				return pl, err
			}
		}
		if size := msgSize(m); limit > 0 && size > limit {
			pl.jobs, pl.jobMsgs, pl.rowErr = nil, nil, true
			pl.row.Error = tooLarge(row, pl.line, size, limit, map[string]any{"query": j.Query},
				fmt.Sprintf("the rendered prompt of query %s is %d bytes, over the server's max_payload of %d", j.Query, size, limit))
			break
		}
		pl.jobMsgs = append(pl.jobMsgs, m)
	}
	if pl.carried() {
		return pl, nil
	}
	m, err := newMsg(names.InputRowSubject(run, row), "row."+run+"."+itoa(row), pl.row)
	if err != nil {
		return pl, err
	}
	if size := msgSize(m); limit > 0 && size > limit {
		pl.jobs, pl.jobMsgs, pl.rowErr = nil, nil, true
		pl.row.Data = nil
		pl.row.Error = tooLarge(row, pl.line, size, limit, nil, fmt.Sprintf("the row is %d bytes as a message, over the server's max_payload of %d; its data is left out", size, limit))
		if m, err = newMsg(m.Subject, m.Header.Get(wire.HeaderMsgID), pl.row); err != nil {
			return pl, err
		}
	}
	pl.rowMsg = m
	return pl, nil
}

// tooLarge is a row_too_large error naming the row, and its input line when it came
// from a file (line > 0), as the other reasons of a record do.
func tooLarge(row, line int, size, limit int64, details map[string]any, msg string) *wire.Error {
	d := map[string]any{"row": row, "size_bytes": size, "limit_bytes": limit}
	where := fmt.Sprintf("row %d", row)
	if line > 0 {
		d["line"] = line
		where = fmt.Sprintf("line %d (row %d)", line, row)
	}
	for k, v := range details {
		d[k] = v
	}
	return &wire.Error{Reason: wire.ReasonRowTooLarge, Message: where + ": " + msg, Details: d}
}

// msgSize is what a message counts against max_payload: its data and its encoded
// headers ("NATS/1.0\r\n", "Key: value\r\n" each, "\r\n").
func msgSize(m *nats.Msg) int64 {
	n := len(m.Data) + len("NATS/1.0\r\n") + 2
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return int64(n)
}

func sameColumns(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func itoa(i int) string { return strconv.Itoa(i) }
