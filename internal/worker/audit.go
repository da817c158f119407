package worker

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/jsonw"
	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/wire"
)

// AuditRecord is one LLM HTTP attempt, published to MQ_AUDIT in its run's batches
// (audit.<run>.batch: JSON lines, one record each; DecodeAudit reads them).
type AuditRecord struct {
	V       int    `json:"v"`
	Run     string `json:"run"`
	Row     int    `json:"row"`
	Query   string `json:"query"`
	Attempt int    `json:"attempt"`
	// Reask is n when the query is asked again after n unusable answers (0: absent).
	Reask        int         `json:"reask,omitempty"`
	Deployment   string      `json:"deployment"`
	RequestHash  string      `json:"request_sha256"` // over the request's canonical JSON
	ResponseHash string      `json:"response_sha256,omitempty"`
	Status       int         `json:"status"`
	Error        *AuditError `json:"error,omitempty"`
	LatencyMS    float64     `json:"latency_ms"`
	Usage        *wire.Usage `json:"usage,omitempty"`
	Worker       string      `json:"worker"`
	Time         time.Time   `json:"time"`
	// Cached marks an answer taken from the prompt cache: no HTTP call (status 0, no
	// usage: nothing billed), response_sha256 over the cached answer, latency the lookup's.
	Cached bool `json:"cached,omitempty"`
	// Resubmission is the job's: the original run, row and attempt of a row asked
	// again by mqctl resubmit (absent on a first run's records).
	Resubmission *wire.Resubmission `json:"resubmission,omitempty"`
}

// AuditError classifies a failed attempt.
// Message is sanitized (llm.Redact): nothing key-like is stored.
type AuditError struct {
	Type      string `json:"type"`           // capacity | transient | deployment | permanent
	Code      string `json:"code,omitempty"` // the provider's error code, if any
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
}

// An auditor batches a run's records: one message holds up to auditBatchRecords records
// (or auditBatchBytes), and a batch waits at most auditFlushEvery. One publish and one
// ack per batch instead of per attempt (two NATS messages and a stored message less per
// query; docs/BENCHMARKS.md, "Cost per query").
const (
	auditBatchRecords = 256
	auditBatchBytes   = 256 << 10
	auditFlushEvery   = 100 * time.Millisecond
	// maxAuditPending bounds batches awaiting their ack; past it a batch is dropped and
	// its records counted (mq_worker_audit_dropped_total), never blocking a call.
	maxAuditPending = 256
)

// auditor publishes audit records in batches, one per run, asynchronously on a
// JetStream context of its own, whose error handler counts every record the stream did
// not take (an error ack, an ack timeout, a disconnect): no goroutine per record waits
// for its ack.
type auditor struct {
	js      jetstream.JetStream
	names   wire.Names
	dropped func(records int)

	mu      sync.Mutex
	batches map[string]*auditBatch // by run; a run without records since the last flush is dropped
}

// auditBatch is one run's records not yet published: JSON lines. size is the length of
// the run's last batch: the next one's buffer starts that large instead of doubling its
// way up (half of what a busy run's records allocated).
type auditBatch struct {
	buf     []byte
	records int
	size    int
}

// take returns the batch's records and starts an empty one.
func (b *auditBatch) take() []byte {
	full := b.buf
	b.size = min(len(full)+len(full)/8, auditBatchBytes+64<<10)
	b.buf, b.records = nil, 0
	return full
}

func newAuditor(js jetstream.JetStream, names wire.Names, dropped func(records int)) (*auditor, error) {
	a := &auditor{names: names, dropped: dropped, batches: map[string]*auditBatch{}}
	ajs, err := jetstream.New(js.Conn(),
		jetstream.WithPublishAsyncMaxPending(maxAuditPending),
		jetstream.WithPublishAsyncTimeout(10*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, _ error) { dropped(bytes.Count(m.Data, []byte{'\n'})) }))
	if err != nil {
		return nil, fmt.Errorf("audit publisher: %w", err)
	}
	a.js = ajs
	return a, nil
}

// hashRequest is the audit record's request_sha256: over the request's JSON, as
// json.Marshal writes it (map keys sorted: canonical enough for a hash).
func hashRequest(req wire.Request) string {
	b, _ := req.AppendJSON(make([]byte, 0, req.SizeHint()))
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// record adds one attempt's audit record to its run's batch: req is the request sent,
// reask its re-ask number (0: a first ask).
func (a *auditor) record(job *wire.Job, req wire.Request, attempt, reask int, worker string, ans *llm.Answer, callErr error, latency time.Duration) {
	rec := AuditRecord{V: wire.Version, Run: job.Run, Row: job.Row, Query: job.Query, Attempt: attempt, Reask: reask, Deployment: job.Deployment,
		RequestHash: hashRequest(req), Status: 200, LatencyMS: float64(latency.Microseconds()) / 1000, Worker: worker, Time: time.Now().UTC()}
	if ans != nil {
		sum := sha256.Sum256([]byte(ans.Content))
		rec.ResponseHash = hex.EncodeToString(sum[:])
		rec.Usage = &ans.Usage
	}
	if callErr != nil {
		rec.Error = classifyForAudit(callErr, &rec.Status)
	}
	rec.Resubmission = job.Resubmission
	a.add(rec)
}

// cached adds the audit record of an answer taken from the prompt cache.
func (a *auditor) cached(job *wire.Job, attempt int, worker, content string, latency time.Duration) {
	sum := sha256.Sum256([]byte(content))
	a.add(AuditRecord{V: wire.Version, Run: job.Run, Row: job.Row, Query: job.Query, Attempt: attempt, Deployment: job.Deployment,
		RequestHash: hashRequest(job.Request), ResponseHash: hex.EncodeToString(sum[:]), LatencyMS: float64(latency.Microseconds()) / 1000,
		Worker: worker, Time: time.Now().UTC(), Cached: true, Resubmission: job.Resubmission})
}

// add appends rec to its run's batch and publishes the batch once it is full. The
// record is written straight into the batch (appendJSON), under the lock.
func (a *auditor) add(rec AuditRecord) {
	a.mu.Lock()
	b := a.batches[rec.Run]
	if b == nil {
		b = &auditBatch{}
		a.batches[rec.Run] = b
	}
	if b.buf == nil {
		b.buf = make([]byte, 0, max(b.size, 1024))
	}
	line, err := rec.appendJSON(b.buf)
	if err != nil {
		a.mu.Unlock()
		a.dropped(1)
		return
	}
	b.buf = append(line, '\n')
	b.records++
	var full []byte
	if b.records >= auditBatchRecords || len(b.buf) >= auditBatchBytes {
		full = b.take()
	}
	a.mu.Unlock()
	if full != nil {
		a.publish(rec.Run, full)
	}
}

// appendJSON appends r's JSON to b as json.Marshal writes it, by hand (package jsonw):
// a record for every attempt. The rare parts (an error, a resubmission) go through the
// JSON package. On an error b is returned as it was.
func (r *AuditRecord) appendJSON(b []byte) ([]byte, error) {
	start := len(b)
	b = jsonw.Int(append(b, `{"v":`...), int64(r.V))
	b = jsonw.String(append(b, `,"run":`...), r.Run)
	b = jsonw.Int(append(b, `,"row":`...), int64(r.Row))
	b = jsonw.String(append(b, `,"query":`...), r.Query)
	b = jsonw.Int(append(b, `,"attempt":`...), int64(r.Attempt))
	if r.Reask != 0 {
		b = jsonw.Int(append(b, `,"reask":`...), int64(r.Reask))
	}
	b = jsonw.String(append(b, `,"deployment":`...), r.Deployment)
	b = jsonw.String(append(b, `,"request_sha256":`...), r.RequestHash)
	if r.ResponseHash != "" {
		b = jsonw.String(append(b, `,"response_sha256":`...), r.ResponseHash)
	}
	b = jsonw.Int(append(b, `,"status":`...), int64(r.Status))
	if r.Error != nil {
		e, err := json.Marshal(r.Error)
		if err != nil {
			return b[:start], fmt.Errorf("audit record error: %w", err)
		}
		b = append(append(b, `,"error":`...), e...)
	}
	var err error
	if b, err = jsonw.Float(append(b, `,"latency_ms":`...), r.LatencyMS); err != nil {
		return b[:start], fmt.Errorf("audit record latency_ms: %w", err)
	}
	if r.Usage != nil {
		b = r.Usage.AppendJSON(append(b, `,"usage":`...))
	}
	b = jsonw.String(append(b, `,"worker":`...), r.Worker)
	b = jsonw.Time(append(b, `,"time":`...), r.Time)
	if r.Cached {
		b = append(b, `,"cached":true`...)
	}
	if r.Resubmission != nil {
		rs, err := json.Marshal(r.Resubmission)
		if err != nil {
			return b[:start], fmt.Errorf("audit record resubmission: %w", err)
		}
		b = append(append(b, `,"resubmission":`...), rs...)
	}
	return append(b, '}'), nil
}

// flush publishes every batch that holds records and forgets the runs that had none.
func (a *auditor) flush() {
	type out struct {
		run   string
		batch []byte
	}
	var outs []out
	a.mu.Lock()
	for run, b := range a.batches {
		if b.records == 0 {
			delete(a.batches, run)
			continue
		}
		outs = append(outs, out{run, b.take()})
	}
	a.mu.Unlock()
	for _, o := range outs {
		a.publish(o.run, o.batch)
	}
}

// run flushes the batches every auditFlushEvery until stop is closed, then flushes once
// more and waits up to wait for the batches' acks.
func (a *auditor) run(stop <-chan struct{}, wait time.Duration) {
	tick := time.NewTicker(auditFlushEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			a.flush()
		case <-stop:
			a.flush()
			select {
			case <-a.js.PublishAsyncComplete():
			case <-time.After(wait):
			}
			return
		}
	}
}

// publish sends one batch without waiting for its ack.
func (a *auditor) publish(run string, batch []byte) {
	if a.js.PublishAsyncPending() >= maxAuditPending {
		a.dropped(bytes.Count(batch, []byte{'\n'})) // never block a call on the audit stream
		return
	}
	// A full window (a race past the check above) fails at once rather than stalling.
	if _, err := a.js.PublishMsgAsync(&nats.Msg{Subject: a.names.AuditSubject(run), Data: batch},
		jetstream.WithStallWait(time.Millisecond)); err != nil {
		a.dropped(bytes.Count(batch, []byte{'\n'}))
	}
}

// DecodeAudit reads the records of one audit message (JSON lines, one record each).
func DecodeAudit(data []byte) ([]AuditRecord, error) {
	var recs []AuditRecord
	for line := range bytes.Lines(data) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r AuditRecord
		if err := json.Unmarshal(line, &r); err != nil {
			return recs, fmt.Errorf("audit record %d: %w", len(recs)+1, err)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

func classifyForAudit(err error, status *int) *AuditError {
	var (
		c *llm.CapacityError
		t *llm.TransientError
		d *llm.DeploymentError
		p *llm.PermanentError
	)
	switch {
	case errors.As(err, &c):
		*status = c.StatusCode
		return &AuditError{Type: "capacity", Message: llm.Redact(c.Message), Retryable: true}
	case errors.As(err, &t):
		*status = t.StatusCode
		return &AuditError{Type: "transient", Message: llm.Redact(t.Message), Retryable: true}
	case errors.As(err, &d):
		*status = d.StatusCode
		return &AuditError{Type: "deployment", Code: d.Code, Message: llm.Redact(d.Message), Retryable: true}
	case errors.As(err, &p):
		if p.StatusCode != 0 {
			*status = p.StatusCode
		}
		return &AuditError{Type: "permanent", Message: llm.Redact(p.Error()), Retryable: false}
	}
	*status = 0
	return &AuditError{Type: "unknown", Message: llm.Redact(err.Error()), Retryable: true}
}
