package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/wire"
)

// Job is the job of query q of row row of run, with the prompt msgs rendered for the
// row: what the producer publishes, and what mqctl resubmit publishes again when it
// renders a row anew (RenderRow).
func (p *Pipeline) Job(q Query, run string, row int, msgs []Message, now time.Time) wire.Job {
	j := wire.Job{V: wire.Version, Run: run, Row: row, Query: q.Name, Deployment: q.Deployment,
		Request:                 wire.Request{Model: q.Model, Temperature: q.Temperature, MaxCompletionTokens: q.MaxCompletionTokens, ResponseFormat: q.ResponseFormat},
		MaxCapacityRetrySeconds: p.MaxCapacityRetrySeconds, MaxAttempts: p.MaxAttempts,
		MaxAnswerRetries: p.AnswerRetries(), ReaskWithError: p.ReaskWithError, Enqueued: now, Pool: q.Pool}
	for _, m := range msgs {
		j.Request.Messages = append(j.Request.Messages, wire.Message{Role: m.Role, Content: m.Content})
	}
	if q.ResponseFormat == wire.FormatStructured {
		j.Request.Schema = q.JSONSchema()
	}
	if p.Cache.Enabled {
		j.Cache = &wire.JobCache{TTLSeconds: int64(max(p.Cache.TTL/time.Second, 1))}
	}
	for _, o := range q.Outputs {
		j.Outputs = append(j.Outputs, wire.OutputField{Field: o.Field, Column: o.Column, Type: o.Type, Values: o.Values})
	}
	return j
}

// RenderRow renders the M jobs of row row of run from the row's data as the collector
// wrote it (a JSON object, keys in input order): the jobs the producer rendered from
// the input record. mqctl resubmit asks again with them the queries of an error row
// whose jobs were not kept (a query that had succeeded).
func (p *Pipeline) RenderRow(run string, row int, data json.RawMessage, now time.Time) ([]wire.Job, error) {
	rec, err := input.NewJSONL(bytes.NewReader(data)).Next()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("render row %d: no data", row)
	}
	if err == nil {
		err = rec.Err
	}
	if err != nil {
		return nil, fmt.Errorf("render row %d: %w", row, err)
	}
	values := rec.Map()
	jobs := make([]wire.Job, 0, len(p.queries))
	for _, q := range p.Queries() {
		msgs, err := q.Render(values, p.Lookup)
		if err != nil {
			return nil, fmt.Errorf("render row %d, query %s: %w", row, q.Name, err)
		}
		jobs = append(jobs, p.Job(q, run, row, msgs, now))
	}
	return jobs, nil
}
