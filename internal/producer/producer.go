// Package producer owns turning input rows into a run on the bus: it validates the
// pipeline against the input header, renders all M prompts of a row before publishing
// any of its jobs, publishes the row once and then its jobs (Nats-Msg-Id on everything,
// first-writer-wins streams), and brackets the run with open and seal records.
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
}

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
	deps := map[string]bool{}
	for _, q := range queries {
		deps[q.Deployment] = true
	}
	if cfg.Run == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return Report{}, fmt.Errorf("run id: %w", err)
		}
		cfg.Run = id.String()
	}
	if !wire.ValidToken(cfg.Run) {
		return Report{}, &UsageError{fmt.Errorf("run: %q is not a valid id ([A-Za-z0-9_-]+)", cfg.Run)}
	}
	if err := queue.Ensure(ctx, js, cfg.Topology); err != nil {
		return Report{}, err
	}

	open := wire.Open{V: wire.Version, Run: cfg.Run, Order: p.Order, ConfigHash: p.Hash(), Created: time.Now().UTC(),
		PromptPer1K: p.Cost.PromptPer1K, CompletionPer1K: p.Cost.CompletionPer1K}
	open.InputColumns = header
	for d := range deps {
		open.Deployments = append(open.Deployments, d)
	}
	for _, q := range queries {
		qi := wire.QueryInfo{Name: q.Name}
		for _, o := range q.Outputs {
			qi.Columns = append(qi.Columns, o.Column)
		}
		open.Queries = append(open.Queries, qi)
	}
	pub := &publisher{js: js, window: cfg.Window, log: log}
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
		n, rowErr, err := publishRow(ctx, pub, p, queries, cfg.Run, rec, header)
		if err != nil {
			return rep, err
		}
		rep.Rows++
		rep.Jobs += n
		if rowErr {
			rep.RowErrors++
		}
		if cfg.Progress != nil {
			cfg.Progress(rep.Rows)
		}
	}
	if err := pub.wait(ctx); err != nil {
		return rep, err
	}
	seal := wire.Seal{V: wire.Version, Run: cfg.Run, Rows: rep.Rows}
	if err := pub.sync(ctx, wire.InputSealSubject(cfg.Run), "seal."+cfg.Run, seal); err != nil {
		return rep, err
	}
	log.Info().Int("rows", rep.Rows).Int("jobs", rep.Jobs).Int("row_errors", rep.RowErrors).Str("input_sha256", hex.EncodeToString(hasher.Sum(nil))).Msg("run sealed")
	return rep, nil
}

// publishRow renders all M prompts of a row, then publishes the row and its jobs. A row
// that cannot be rendered is published with its error and no job.
func publishRow(ctx context.Context, pub *publisher, p *config.Pipeline, queries []config.Query, run string, rec input.Row, header []string) (jobs int, rowErr bool, err error) {
	row := wire.Row{V: wire.Version, Run: run, Row: rec.Index}
	if rec.Err != nil {
		var re *input.RecordError
		line := rec.Line
		if errors.As(rec.Err, &re) {
			line = re.Line
		}
		row.Error = &wire.Error{Reason: wire.ReasonMalformedRecord, Message: rec.Err.Error(), Details: map[string]any{"line": line, "raw": rec.Raw}}
		return 0, true, pub.async(ctx, wire.InputRowSubject(run, rec.Index), "row."+run+"."+itoa(rec.Index), row)
	}
	data, err := rec.JSON()
	if err != nil {
		row.Error = &wire.Error{Reason: wire.ReasonMalformedRecord, Message: err.Error(), Details: map[string]any{"line": rec.Line}}
		return 0, true, pub.async(ctx, wire.InputRowSubject(run, rec.Index), "row."+run+"."+itoa(rec.Index), row)
	}
	row.Data = data
	if header != nil && !sameColumns(header, rec.Columns) {
		if err := p.CheckInputColumns(rec.Columns); err != nil {
			row.Error = &wire.Error{Reason: wire.ReasonMalformedRecord, Message: err.Error(), Details: map[string]any{"line": rec.Line}}
			return 0, true, pub.async(ctx, wire.InputRowSubject(run, rec.Index), "row."+run+"."+itoa(rec.Index), row)
		}
	}
	values := rec.Map()
	built := make([]wire.Job, 0, len(queries))
	now := time.Now().UTC()
	for _, q := range queries {
		msgs, err := q.Render(values, p.Lookup)
		if err != nil {
			var re *config.RenderError
			details := map[string]any{"query": q.Name, "line": rec.Line}
			if errors.As(err, &re) && re.Field != "" {
				details["field"] = re.Field
			}
			row.Error = &wire.Error{Reason: wire.ReasonTemplateRendering, Message: err.Error(), Details: details}
			return 0, true, pub.async(ctx, wire.InputRowSubject(run, rec.Index), "row."+run+"."+itoa(rec.Index), row)
		}
		built = append(built, buildJob(p, q, run, rec.Index, msgs, now))
	}
	if err := pub.async(ctx, wire.InputRowSubject(run, rec.Index), "row."+run+"."+itoa(rec.Index), row); err != nil {
		return 0, false, err
	}
	for i := range built {
		j := &built[i]
		if err := pub.async(ctx, wire.JobSubject(j.Deployment, run, j.Row, j.Query), wire.JobMsgID(run, j.Row, j.Query), j); err != nil {
			return i, false, err
		}
	}
	return len(built), false, nil
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
// a first-writer-wins stream already holds counts as published.
type publisher struct {
	js      jetstream.JetStream
	window  int
	log     zerolog.Logger
	pending []pending
}

type pending struct {
	msg *nats.Msg
	fut jetstream.PubAckFuture
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

func (p *publisher) publishSync(ctx context.Context, m *nats.Msg) error {
	err := queue.Retry(ctx, func(ctx context.Context) error {
		_, err := p.js.PublishMsg(ctx, m)
		if queue.IsFirstWriterLost(err) {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", m.Subject, err)
	}
	return nil
}

func (p *publisher) async(ctx context.Context, subject, id string, v any) error {
	m, err := newMsg(subject, id, v)
	if err != nil {
		return err
	}
	fut, err := p.js.PublishMsgAsync(m)
	if err != nil {
		// Too many pending or disconnected: settle what is out, then publish synchronously.
		if werr := p.wait(ctx); werr != nil {
			return werr
		}
		return p.publishSync(ctx, m)
	}
	p.pending = append(p.pending, pending{msg: m, fut: fut})
	if len(p.pending) >= p.window {
		return p.wait(ctx)
	}
	return nil
}

// wait settles every pending publish; failed ones (other than first-writer-wins) are
// retried synchronously so nothing is dropped.
func (p *publisher) wait(ctx context.Context) error {
	for _, pd := range p.pending {
		select {
		case <-pd.fut.Ok():
			continue
		case err := <-pd.fut.Err():
			if queue.IsFirstWriterLost(err) {
				continue
			}
			if err := p.publishSync(ctx, pd.msg); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.pending = p.pending[:0]
	return nil
}
