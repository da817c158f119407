// Package producer owns turning input rows into a run on the bus: it validates the
// pipeline against the input header, renders all M prompts of a row before publishing
// any of them, publishes the row's jobs and then the row once (Nats-Msg-Id on
// everything, first-writer-wins streams), and brackets the run with open and seal
// records. It stays at most MaxAhead rows ahead of the collector, and checkpoints in KV
// so that a rerun with the same run id resumes without calling any job twice.
package producer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Config configures one producer run.
type Config struct {
	Pipeline *config.Pipeline
	Input    io.Reader
	Format   input.Format
	Run      string // run id; "" = a new UUIDv7
	Topology queue.Topology
	// Progress, if set, is called after each row is published.
	Progress func(rows int)
	// Window bounds publishes awaiting their ack.
	Window int
	// MaxAhead is how many rows the producer may be ahead of the rows the collector has
	// written (flow control: the streams never hold a whole giant input).
	MaxAhead int
}

// DefaultMaxAhead is Config.MaxAhead and ServiceConfig.MaxAhead (the producer's
// --max-ahead) when not set.
const DefaultMaxAhead = 1000

// UsageError is a whole-run problem found before anything was published (exit 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Report tells what was published.
type Report struct {
	Run       string
	Rows      int // rows published (including error rows)
	Jobs      int
	RowErrors int // malformed records and rows that failed to render
	// Cancelled: the run was cancelled (mqctl cancel); Rows were published before.
	Cancelled bool
}

// Run publishes a whole run and returns its report. A *UsageError means nothing was
// published.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) (Report, error) {
	if cfg.Pipeline == nil {
		return Report{}, &UsageError{errors.New("pipeline: required")}
	}
	if cfg.Window <= 0 {
		cfg.Window = 2048
	}
	if cfg.MaxAhead <= 0 {
		cfg.MaxAhead = DefaultMaxAhead
	}
	hasher := sha256.New()
	rd, err := input.NewReader(io.TeeReader(cfg.Input, hasher), cfg.Format)
	if err != nil {
		return Report{}, &UsageError{fmt.Errorf("input: %w", err)}
	}
	p := cfg.Pipeline
	queries := p.Queries()
	// Whole-run checks before anything is published.
	header := rd.Header()
	var pre []input.Row // records read ahead to find a JSONL header
	if header == nil {  // JSONL: the first well-formed row's keys are the columns
		for {
			row, err := rd.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return Report{}, fmt.Errorf("read input: %w", err)
			}
			pre = append(pre, row)
			if row.Err == nil {
				header = row.Columns
				break
			}
		}
	}
	if err := p.CheckInputColumns(header); err != nil {
		return Report{}, &UsageError{fmt.Errorf("input header: %w", err)}
	}
	if cfg.Run == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return Report{}, fmt.Errorf("run id: %w", err)
		}
		cfg.Run = id.String()
	}
	if err := wire.ValidateRunID(cfg.Run); err != nil {
		return Report{}, &UsageError{fmt.Errorf("--run: %w", err)}
	}
	if err := queue.Ensure(ctx, js, cfg.Topology); err != nil {
		return Report{}, err
	}

	open := openRecord(p, cfg.Run, header)
	runs, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		return Report{}, fmt.Errorf("open kv %s: %w", wire.BucketRuns, err)
	}
	if err := refuseFinished(ctx, runs, cfg.Run); err != nil {
		return Report{}, err
	}
	ck := &checkpointer{kv: runs, run: cfg.Run, configHash: open.ConfigHash}
	prev, err := ck.load(ctx)
	if err != nil {
		return Report{}, err
	}
	if prev != nil && prev.ConfigHash != open.ConfigHash {
		return Report{}, &UsageError{fmt.Errorf("run %s was started with another pipeline config (hash %.12s, now %.12s); use a new run id", cfg.Run, prev.ConfigHash, open.ConfigHash)}
	}
	if prev != nil {
		log.Info().Str("run", cfg.Run).Int("published_through", prev.Through).Msg("resuming from the checkpoint")
	}
	pub := &publisher{js: js, window: cfg.Window, log: log}
	flow := &flowControl{kv: runs, run: cfg.Run, ahead: cfg.MaxAhead, flush: pub.wait}
	limit := js.Conn().MaxPayload()
	if err := pub.sync(ctx, wire.InputOpenSubject(cfg.Run), "open."+cfg.Run, open); err != nil {
		return Report{}, err
	}
	log = log.With().Str("run", cfg.Run).Logger()
	log.Info().Int("queries", len(queries)).Msg("run opened")

	rep := Report{Run: cfg.Run}
	next := func() (input.Row, error) {
		if len(pre) > 0 {
			r := pre[0]
			pre = pre[1:]
			return r, nil
		}
		return rd.Next()
	}
	// Checkpoint every few rows, once everything before it is acknowledged: a rerun with
	// the same run id skips what the checkpoint covers and checks the rows after it.
	every := max(1, cfg.Window/(len(queries)+1))
	rolling := sha256.New()
	for {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("run %s interrupted after %d rows (unsealed; rerun with --run %s to resume): %w", cfg.Run, rep.Rows, cfg.Run, err)
		}
		rec, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, fmt.Errorf("read input after row %d: %w", rep.Rows, err)
		}
		hashRow(rolling, rec)
		pl, err := fit(planRow(p, queries, cfg.Run, rec, header), limit)
		if err != nil {
			return rep, err
		}
		if pl.row.Error != nil && pl.row.Error.Reason == wire.ReasonRowTooLarge {
			log.Warn().Int("row", rec.Index).Str("reason", pl.row.Error.Message).Msg("row too large for a message: published as an error row")
		}
		rep.Rows++
		if pl.rowErr {
			rep.RowErrors++
		}
		if prev != nil && rec.Index < prev.Through {
			rep.Jobs += len(pl.jobs)
			if rec.Index == prev.Through-1 && hex.EncodeToString(rolling.Sum(nil)) != prev.RowsSHA256 {
				return rep, &UsageError{fmt.Errorf("run %s: the input differs from the one this run was started with (rows 0..%d); use a new run id", cfg.Run, rec.Index)}
			}
			continue
		}
		if err := flow.wait(ctx, rec.Index); errors.Is(err, errCancelled) {
			rep.Rows-- // this row is not published
			if pl.rowErr {
				rep.RowErrors--
			}
			rep.Cancelled = true
			log.Warn().Int("published", rep.Rows).Msg("run cancelled: no more rows are published")
			break
		} else if err != nil {
			return rep, err
		}
		careful := prev != nil && rec.Index < prev.Through+every
		n, err := publishPlan(ctx, pub, cfg.Run, pl, careful)
		rep.Jobs += n
		if err != nil {
			return rep, err
		}
		if cfg.Progress != nil {
			cfg.Progress(rep.Rows)
		}
		if rep.Rows%every == 0 {
			if err := pub.wait(ctx); err != nil {
				return rep, err
			}
			if err := ck.save(ctx, rep.Rows, hex.EncodeToString(rolling.Sum(nil))); err != nil {
				return rep, err
			}
		}
	}
	if prev != nil && rep.Rows < prev.Through {
		return rep, &UsageError{fmt.Errorf("run %s: the input has %d rows, fewer than the %d already published; use a new run id", cfg.Run, rep.Rows, prev.Through)}
	}
	if err := pub.wait(ctx); err != nil {
		return rep, err
	}
	if !rep.Cancelled {
		if err := ck.save(ctx, rep.Rows, hex.EncodeToString(rolling.Sum(nil))); err != nil {
			return rep, err
		}
	}
	seal := wire.Seal{V: wire.Version, Run: cfg.Run, Rows: rep.Rows}
	if err := pub.sync(ctx, wire.InputSealSubject(cfg.Run), "seal."+cfg.Run, seal); err != nil {
		return rep, err
	}
	log.Info().Int("rows", rep.Rows).Int("jobs", rep.Jobs).Int("row_errors", rep.RowErrors).Str("input_sha256", hex.EncodeToString(hasher.Sum(nil))).Msg("run sealed")
	return rep, nil
}

// openRecord is the run's open record for a pipeline.
func openRecord(p *config.Pipeline, run string, header []string) wire.Open {
	open := wire.Open{V: wire.Version, Run: run, Order: p.Order, ConfigHash: p.Hash(), Created: time.Now().UTC(),
		PromptPer1K: p.Cost.PromptPer1K, CompletionPer1K: p.Cost.CompletionPer1K, InputColumns: header}
	seen := map[string]bool{}
	for _, q := range p.Queries() {
		if !seen[q.Deployment] {
			seen[q.Deployment] = true
			open.Deployments = append(open.Deployments, q.Deployment)
		}
		qi := wire.QueryInfo{Name: q.Name}
		for _, o := range q.Outputs {
			qi.Columns = append(qi.Columns, o.Column)
		}
		open.Queries = append(open.Queries, qi)
	}
	return open
}

// plan is what one record becomes on the bus: its jobs, then its row. A record that
// cannot be parsed or rendered is a row carrying its error and no job.
type plan struct {
	row    wire.Row
	jobs   []wire.Job
	rowErr bool
	// Set by fit: the encoded jobs and row.
	jobMsgs []*nats.Msg
	rowMsg  *nats.Msg
}

// planRow renders all M prompts of a row before anything of it is published.
func planRow(p *config.Pipeline, queries []config.Query, run string, rec input.Row, header []string) plan {
	row := wire.Row{V: wire.Version, Run: run, Row: rec.Index}
	fail := func(e *wire.Error) plan {
		row.Error = e
		return plan{row: row, rowErr: true}
	}
	if rec.Err != nil {
		var re *input.RecordError
		line := rec.Line
		if errors.As(rec.Err, &re) {
			line = re.Line
		}
		return fail(&wire.Error{Reason: wire.ReasonMalformedRecord, Message: rec.Err.Error(), Details: map[string]any{"line": line, "raw": rec.Raw}})
	}
	data, err := rec.JSON()
	if err != nil {
		return fail(&wire.Error{Reason: wire.ReasonMalformedRecord, Message: err.Error(), Details: map[string]any{"line": rec.Line}})
	}
	row.Data = data
	if header != nil && !sameColumns(header, rec.Columns) {
		if err := p.CheckInputColumns(rec.Columns); err != nil {
			return fail(&wire.Error{Reason: wire.ReasonMalformedRecord, Message: err.Error(), Details: map[string]any{"line": rec.Line}})
		}
	}
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
		jobs = append(jobs, buildJob(p, q, run, rec.Index, msgs, now))
	}
	return plan{row: row, jobs: jobs}
}

// fit encodes a plan's messages and checks each against limit (the server's
// max_payload): a row or a rendered prompt too large for one message can never be
// published, so the row becomes an error row (row_too_large) naming its size and the
// limit; without its data when the data itself is what does not fit.
func fit(pl plan, limit int64) (plan, error) {
	run, row := pl.row.Run, pl.row.Row
	pl.jobMsgs = pl.jobMsgs[:0]
	for i := range pl.jobs {
		j := &pl.jobs[i]
		m, err := newMsg(wire.JobSubject(j.Deployment, run, j.Row, j.Query), wire.JobMsgID(run, j.Row, j.Query), j)
		if err != nil {
			return pl, err
		}
		if size := msgSize(m); limit > 0 && size > limit {
			pl.jobs, pl.jobMsgs, pl.rowErr = nil, nil, true
			pl.row.Error = tooLarge(row, size, limit, map[string]any{"query": j.Query},
				fmt.Sprintf("the rendered prompt of query %s is %d bytes, over the server's max_payload of %d", j.Query, size, limit))
			break
		}
		pl.jobMsgs = append(pl.jobMsgs, m)
	}
	m, err := newMsg(wire.InputRowSubject(run, row), "row."+run+"."+itoa(row), pl.row)
	if err != nil {
		return pl, err
	}
	if size := msgSize(m); limit > 0 && size > limit {
		pl.jobs, pl.jobMsgs, pl.rowErr = nil, nil, true
		pl.row.Data = nil
		pl.row.Error = tooLarge(row, size, limit, nil, fmt.Sprintf("the row is %d bytes as a message, over the server's max_payload of %d; its data is left out", size, limit))
		if m, err = newMsg(m.Subject, m.Header.Get(wire.HeaderMsgID), pl.row); err != nil {
			return pl, err
		}
	}
	pl.rowMsg = m
	return pl, nil
}

func tooLarge(row int, size, limit int64, details map[string]any, msg string) *wire.Error {
	d := map[string]any{"row": row, "size_bytes": size, "limit_bytes": limit}
	for k, v := range details {
		d[k] = v
	}
	return &wire.Error{Reason: wire.ReasonRowTooLarge, Message: fmt.Sprintf("row %d: %s", row, msg), Details: d}
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

// publishPlan publishes a row's jobs, then the row once its jobs are acknowledged (the
// publisher holds rows back until then): an input row on the bus means every job of it
// is too, which is what a resuming producer relies on. With careful set (rows a crashed
// producer or a redelivered submission may have published in part), it first looks for
// each message on the bus and publishes only what is missing, so no job is ever called
// twice. The plan must have been through fit.
func publishPlan(ctx context.Context, pub *publisher, run string, pl plan, careful bool) (int, error) {
	rowSubj := wire.InputRowSubject(run, pl.row.Row)
	if careful {
		there, err := pub.exists(ctx, wire.StreamInput, rowSubj)
		if err != nil {
			return 0, err
		}
		if there {
			return len(pl.jobs), nil
		}
	}
	for i := range pl.jobs {
		j := &pl.jobs[i]
		if careful {
			queued, err := pub.exists(ctx, wire.StreamJobs, pl.jobMsgs[i].Subject)
			if err != nil {
				return i, err
			}
			answered, err := pub.exists(ctx, wire.StreamResults, wire.ResultSubject(run, j.Row, j.Query))
			if err != nil {
				return i, err
			}
			if queued || answered {
				continue
			}
		}
		if err := pub.async(ctx, pl.jobMsgs[i]); err != nil {
			return i, err
		}
	}
	pub.later(pl.rowMsg)
	return len(pl.jobs), nil
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

func buildJob(p *config.Pipeline, q config.Query, run string, row int, msgs []config.Message, now time.Time) wire.Job {
	j := wire.Job{V: wire.Version, Run: run, Row: row, Query: q.Name, Deployment: q.Deployment,
		Request:                 wire.Request{Model: q.Model, Temperature: q.Temperature, MaxCompletionTokens: q.MaxCompletionTokens, ResponseFormat: q.ResponseFormat},
		MaxCapacityRetrySeconds: p.MaxCapacityRetrySeconds, MaxAttempts: p.MaxAttempts, Enqueued: now}
	for _, m := range msgs {
		j.Request.Messages = append(j.Request.Messages, wire.Message{Role: m.Role, Content: m.Content})
	}
	if q.ResponseFormat == wire.FormatStructured {
		j.Request.Schema = q.JSONSchema()
	}
	for _, o := range q.Outputs {
		j.Outputs = append(j.Outputs, wire.OutputField{Field: o.Field, Column: o.Column, Type: o.Type, Values: o.Values})
	}
	return j
}

func itoa(i int) string { return strconv.Itoa(i) }

// publisher publishes with a bounded window of unacknowledged messages; a message that
// a first-writer-wins stream already holds counts as published. Input rows wait (later)
// until every message published before them is acknowledged.
type publisher struct {
	js      jetstream.JetStream
	window  int
	log     zerolog.Logger
	pending []pending
	rows    []*nats.Msg // held back until the jobs before them are acknowledged
}

type pending struct {
	msg     *nats.Msg
	fut     jetstream.PubAckFuture
	settled bool  // the future's outcome was read (its channels yield it once)
	err     error // that outcome
}

func newMsg(subject, id string, v any) (*nats.Msg, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", subject, err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(wire.HeaderMsgID, id)
	m.Header.Set(wire.HeaderSchema, "1")
	return m, nil
}

func (p *publisher) sync(ctx context.Context, subject, id string, v any) error {
	m, err := newMsg(subject, id, v)
	if err != nil {
		return err
	}
	return p.publishSync(ctx, m)
}

// publishSync publishes m and waits for it to be stored; a full stream is waited out.
func (p *publisher) publishSync(ctx context.Context, m *nats.Msg) error {
	return queue.RetryPublish(ctx, p.log, m.Subject, func(ctx context.Context) error {
		_, err := p.js.PublishMsg(ctx, m)
		return err
	})
}

// async publishes m without waiting; past the window it settles what is out first.
func (p *publisher) async(ctx context.Context, m *nats.Msg) error {
	if err := p.send(ctx, m); err != nil {
		return err
	}
	if len(p.pending) >= p.window {
		return p.wait(ctx)
	}
	return nil
}

func (p *publisher) send(ctx context.Context, m *nats.Msg) error {
	fut, err := p.js.PublishMsgAsync(m)
	if err != nil {
		// Too many pending or disconnected: settle what is out, then publish synchronously.
		if werr := p.settle(ctx); werr != nil {
			return werr
		}
		return p.publishSync(ctx, m)
	}
	p.pending = append(p.pending, pending{msg: m, fut: fut})
	return nil
}

// later holds an input row back until wait has every message before it acknowledged.
func (p *publisher) later(m *nats.Msg) { p.rows = append(p.rows, m) }

// wait settles every pending publish, then publishes the rows held back and settles
// them too. Failed publishes (other than first-writer-wins) are retried synchronously,
// a full stream waited out, so nothing is dropped. After an error (ctx ended) what is
// not settled stays, and the next wait takes up where this one stopped.
func (p *publisher) wait(ctx context.Context) error {
	for {
		if err := p.settle(ctx); err != nil {
			return err
		}
		if len(p.rows) == 0 {
			return nil
		}
		for len(p.rows) > 0 {
			if err := p.send(ctx, p.rows[0]); err != nil {
				return err
			}
			p.rows = p.rows[1:]
		}
	}
}

// settle waits for every pending publish, republishing the failed ones.
func (p *publisher) settle(ctx context.Context) error {
	for i := range p.pending {
		pd := &p.pending[i]
		if !pd.settled {
			select {
			case <-pd.fut.Ok():
			case pd.err = <-pd.fut.Err():
			case <-ctx.Done():
				p.pending = p.pending[i:]
				return ctx.Err()
			}
			pd.settled = true
		}
		if pd.err != nil && !queue.IsFirstWriterLost(pd.err) {
			if err := p.publishSync(ctx, pd.msg); err != nil {
				p.pending = p.pending[i:]
				return err
			}
		}
	}
	p.pending = p.pending[:0]
	return nil
}

// reset forgets every publish not yet settled (their submissions are redelivered and
// published again, carefully).
func (p *publisher) reset() {
	p.pending, p.rows = p.pending[:0], p.rows[:0]
}

// refuseFinished refuses a run id whose run has finished: the collector purged its data
// and checkpoints, so publishing it again would pay for every call a second time and
// its output would go nowhere (the run's files are final).
func refuseFinished(ctx context.Context, runs jetstream.KeyValue, run string) error {
	e, err := runs.Get(ctx, run)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read status of run %s: %w", run, err)
	}
	var st wire.RunStatus
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return fmt.Errorf("decode status of run %s: %w", run, err)
	}
	if st.Finished {
		return &UsageError{fmt.Errorf("run %s already finished (%d rows: %d ok, %d failed, output in %s); use a new run id", run, st.Total, st.OK, st.Failed, st.OutDir)}
	}
	return nil
}
