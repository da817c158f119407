// Package wire owns the v1 wire format shared by every process and by upstream publishers:
// subject names, headers, and the JSON of run records, input rows, query jobs and results.
// docs/WIRE.md is the public description of the same contract; change both together.
package wire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	json "github.com/goccy/go-json"
)

// Version is the schema version this build writes, but for a job that carries its
// row's data and the results of such a job (VersionCarried).
const Version = 1

// VersionCarried is the schema version of a job that carries its row's data
// (Job.Data) and of every result of such a job (Result.Data): a reader of version 1
// would drop the data and its row would never complete, so it leaves them alone (a
// worker NAKs the job for a newer one, a collector fails the result).
const VersionCarried = 2

// MaxVersion is the highest schema version this build understands.
const MaxVersion = VersionCarried

// Stream names of the default deployment (the empty prefix). A process takes its
// names from a Names, which prefixes them ("<prefix>_MQ_JOBS"); so are the bucket names
// and subjects below.
const (
	StreamInput   = "MQ_INPUT"
	StreamJobs    = "MQ_JOBS"
	StreamResults = "MQ_RESULTS"
	StreamRows    = "MQ_ROWS"
	StreamAudit   = "MQ_AUDIT"
	StreamDead    = "MQ_DEAD"
	// StreamSubmit carries runs that upstream systems submit to the producer service.
	StreamSubmit = "MQ_SUBMIT"
	// StreamAdvisories keeps the server's MaxDeliver advisories of MQ_JOBS until a
	// worker has dead-lettered the job (a core subscription would lose them whenever no
	// worker listens).
	StreamAdvisories = "MQ_ADVISORIES"
)

// MaxDeliveriesAdvisories is where the server announces MQ_JOBS messages that reached
// a consumer's MaxDeliver (any job consumer), captured by StreamAdvisories.
const MaxDeliveriesAdvisories = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamJobs + ".>"

// AdvisoryConsumer is the durable consumer workers share on StreamAdvisories.
const AdvisoryConsumer = "mq-advisories"

// KV bucket names.
const (
	BucketRetry = "mq_retry"
	BucketRuns  = "mq_runs"
	// BucketFleet holds one key per served deployment alias, refreshed by workers.
	BucketFleet = "mq_fleet"
	// BucketThrottle holds each deployment's last good rate (key: the alias, value a
	// LearnedRate), saved by the fleet throttle and read by a worker starting up.
	BucketThrottle = "mq_throttle"
	// BucketCache is the prompt cache: key CacheKey's hex hash of a request, value a
	// CacheEntry (docs/WIRE.md, "Prompt cache").
	BucketCache = "mq_cache"
)

// BucketResults is the object store bucket of completed runs' output files: the
// collector stores each file of a run's output set as ResultObject(run, file) before
// the run's status says finished; mqctl get reads them back (docs/WIRE.md, "Stored
// results").
const BucketResults = "mq_results"

// ResultObject is the name of a run's output file in BucketResults: "<run>/<file>",
// e.g. "run-42/results.jsonl".
func ResultObject(run, file string) string { return run + "/" + file }

// LearnedRate is what the fleet throttle remembers of a deployment: the rate served
// without pressure, fleet-wide, while some worker was rate-bound, and the ceiling the
// provider's rate-limit headers stated. A worker starting up begins from it (halved per
// hour of age, ignored after a day) instead of slow start, and joins a running fleet's
// rate from its heartbeats.
type LearnedRate struct {
	Rate    float64   `json:"rate"`              // req/s
	Ceiling float64   `json:"ceiling,omitempty"` // req/s the headers allow (0: not stated)
	Source  string    `json:"source"`            // headers | learned | probing
	Learned time.Time `json:"learned"`
}

// Header names.
const (
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderSchema ("1") was sent by earlier builds on records and jobs; none reads it (the
	// body's "v" counts) and none sends it now: a header less to parse per message.
	HeaderSchema  = "Mq-Schema"
	HeaderReason  = "Mq-Reason"
	HeaderSubject = "Mq-Subject"
	// HeaderRowOutcome says whether a message of the rows stream is a success row or an
	// error row: RowOK or RowError.
	HeaderRowOutcome = "Mq-Row-Outcome"
)

// The outcomes of an emitted row (HeaderRowOutcome).
const (
	RowOK    = "ok"
	RowError = "error"
)

// ValidToken reports whether s can be used as one subject token (run id, query name,
// deployment alias): one or more ASCII letters, digits, '_' and '-'. (A loop, not a
// regular expression: a worker checks three tokens a job.)
func ValidToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return s != ""
}

// Subject builders. Rows are 0-based indices in input order.

// InputOpenSubject is where a run's open record is published.
func InputOpenSubject(run string) string { return "input." + run + ".open" }

// InputSealSubject is where a run's seal record is published.
func InputSealSubject(run string) string { return "input." + run + ".seal" }

// InputRowSubject is where a run's input row is published (once).
func InputRowSubject(run string, row int) string { return "input." + run + "." + strconv.Itoa(row) }

// JobSubject is where one query job is published; workers filter on JobFilter(deployment).
func JobSubject(deployment, run string, row int, query string) string {
	return "jobs." + deployment + "." + run + "." + strconv.Itoa(row) + "." + query
}

// JobFilter is the filter subject of the consumer serving one deployment.
func JobFilter(deployment string) string { return "jobs." + deployment + ".>" }

// ResultSubject is where the (first) result of one query is kept.
func ResultSubject(run string, row int, query string) string {
	return "results." + run + "." + strconv.Itoa(row) + "." + query
}

// RowSubject is where an emitted row is published by the MQ_ROWS sink.
func RowSubject(run string, row int) string { return "rows." + run + "." + strconv.Itoa(row) }

// AuditSubject is where a run's audit records go, in batches (JSON lines).
func AuditSubject(run string) string { return "audit." + run + ".batch" }

// DeadSubject is where dead-lettered job payloads go.
func DeadSubject(deployment, run string) string { return "dead." + deployment + "." + run }

// throttleRoot is the root of the fleet throttle's core NATS subjects.
const throttleRoot = "mq.throttle."

// ThrottleSignalSubject is where workers announce a deployment's capacity signals (core
// NATS, not stored).
func ThrottleSignalSubject(alias string) string { return throttleRoot + alias + ".signal" }

// ThrottleHeartbeatSubject is where workers pacing a deployment send their heartbeats
// (core NATS, not stored).
func ThrottleHeartbeatSubject(alias string) string { return throttleRoot + alias + ".hb" }

// JobKey is the KV key of a job's retry state: "<run>.<row>.<query>".
func JobKey(run string, row int, query string) string {
	return run + "." + strconv.Itoa(row) + "." + query
}

// JobMsgID is the Nats-Msg-Id of a job.
func JobMsgID(run string, row int, query string) string { return "job." + JobKey(run, row, query) }

// ResultMsgID is the Nats-Msg-Id of a result.
func ResultMsgID(run string, row int, query string) string {
	return "result." + JobKey(run, row, query)
}

// RowMsgID is the Nats-Msg-Id of an emitted row on the rows stream.
func RowMsgID(run string, row int) string { return "row." + run + "." + strconv.Itoa(row) }

// Submit subjects: an upstream system submits a run of a named pipeline row by row; the
// producer service renders it into the input records and jobs above.

// SubmitOpenSubject opens a submitted run.
func SubmitOpenSubject(pipeline, run string) string {
	return "submit." + pipeline + "." + run + ".open"
}

// SubmitRowSubject carries one submitted row.
func SubmitRowSubject(pipeline, run string, row int) string {
	return "submit." + pipeline + "." + run + "." + strconv.Itoa(row)
}

// SubmitSealSubject seals a submitted run with its row count.
func SubmitSealSubject(pipeline, run string) string {
	return "submit." + pipeline + "." + run + ".seal"
}

// ParseSubmitSubject splits "submit.<pipeline>.<run>.<open|seal|row>".
func ParseSubmitSubject(subject string) (pipeline, run string, kind InputKind, row int, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != "submit" {
		return "", "", InputUnknown, 0, fmt.Errorf("submit subject %q: want submit.<pipeline>.<run>.<open|seal|row>", subject)
	}
	run, kind, row, err = ParseInputSubject("input." + parts[2] + "." + parts[3])
	if err != nil {
		return "", "", InputUnknown, 0, fmt.Errorf("submit subject %q: %w", subject, err)
	}
	return parts[1], run, kind, row, nil
}

// SubmitRow is a submitted row: the row as a JSON object.
type SubmitRow struct {
	V    int             `json:"v"`
	Data json.RawMessage `json:"data"`
}

// InputKind tells what an input-stream subject carries.
type InputKind int

// Input subject kinds.
const (
	InputUnknown InputKind = iota
	InputOpen
	InputSeal
	InputRow
)

// ParseInputSubject splits "input.<run>.<open|seal|row>".
func ParseInputSubject(subject string) (run string, kind InputKind, row int, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] != "input" {
		return "", InputUnknown, 0, fmt.Errorf("input subject %q: want input.<run>.<open|seal|row>", subject)
	}
	run = parts[1]
	switch parts[2] {
	case "open":
		return run, InputOpen, 0, nil
	case "seal":
		return run, InputSeal, 0, nil
	}
	row, err = strconv.Atoi(parts[2])
	if err != nil || row < 0 {
		return "", InputUnknown, 0, fmt.Errorf("input subject %q: row %q is not a non-negative integer", subject, parts[2])
	}
	return run, InputRow, row, nil
}

// Addr names one query of one row of one run.
type Addr struct {
	Run   string
	Row   int
	Query string
}

// String renders the address as "<run>.<row>.<query>".
func (a Addr) String() string { return JobKey(a.Run, a.Row, a.Query) }

// ParseJobSubject splits "jobs.<deployment>.<run>.<row>.<query>"; it works on the subject
// alone so that an undecodable job can still be answered with a synthetic result.
func ParseJobSubject(subject string) (deployment string, a Addr, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 5 || parts[0] != "jobs" {
		return "", Addr{}, fmt.Errorf("job subject %q: want jobs.<deployment>.<run>.<row>.<query>", subject)
	}
	row, err := strconv.Atoi(parts[3])
	if err != nil || row < 0 {
		return "", Addr{}, fmt.Errorf("job subject %q: row %q is not a non-negative integer", subject, parts[3])
	}
	return parts[1], Addr{Run: parts[2], Row: row, Query: parts[4]}, nil
}

// ParseResultSubject splits "results.<run>.<row>.<query>".
func ParseResultSubject(subject string) (Addr, error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != "results" {
		return Addr{}, fmt.Errorf("result subject %q: want results.<run>.<row>.<query>", subject)
	}
	row, err := strconv.Atoi(parts[2])
	if err != nil || row < 0 {
		return Addr{}, fmt.Errorf("result subject %q: row %q is not a non-negative integer", subject, parts[2])
	}
	return Addr{Run: parts[1], Row: row, Query: parts[3]}, nil
}

// Order values of a run.
const (
	OrderInput      = "input"
	OrderCompletion = "completion"
)

// QueryInfo describes one of a run's M queries for the collector.
type QueryInfo struct {
	Name    string   `json:"name"`
	Columns []string `json:"columns"` // output columns excluding <q>_usage and <q>_model
}

// Open is the run's open record, published once before any row.
type Open struct {
	V            int         `json:"v"`
	Run          string      `json:"run"`
	Queries      []QueryInfo `json:"queries"`
	Order        string      `json:"order"`
	InputColumns []string    `json:"input_columns,omitempty"`
	Deployments  []string    `json:"deployments"` // aliases (and pool names) the run's jobs name
	// Pools are the deployment pools among Deployments: their jobs are published on the
	// pool's subject and served by any of its members. A run with pools has a
	// <query>_deployment output column per query (the member that answered).
	Pools      []Pool    `json:"pools,omitempty"`
	ConfigHash string    `json:"config_hash,omitempty"`
	InputHash  string    `json:"input_hash,omitempty"`
	Created    time.Time `json:"created"`
	// Cost per 1k tokens, for the run summary.
	PromptPer1K     float64 `json:"prompt_per_1k,omitempty"`
	CompletionPer1K float64 `json:"completion_per_1k,omitempty"`
	// Cache says the run's jobs may be answered from the prompt cache: every query of a
	// success row then has a <query>_cached column (true: answered from the cache).
	Cache bool `json:"cache,omitempty"`
	// Resubmit is set on the open record of a resubmission (mqctl resubmit): this run
	// asks again the error rows of run Resubmit.Run, as its attempt Resubmit.Attempt.
	// Its rows carry SourceRow; when it completes, the collector merges its rows into
	// that run's files.
	Resubmit *Resubmission `json:"resubmit,omitempty"`
}

// Resubmission names what a resubmission asks again: run Run (the original run id),
// attempt Attempt (1 for the first resubmission), and in a job, the original row Row.
type Resubmission struct {
	Run     string `json:"run"`
	Row     int    `json:"row,omitempty"`
	Attempt int    `json:"attempt"`
}

// ResubmitRunID is the run id on the bus of attempt n of run: "<run>-r<n>".
func ResubmitRunID(run string, attempt int) string { return run + "-r" + strconv.Itoa(attempt) }

// Validate checks what the collector relies on.
func (o *Open) Validate() error {
	var errs []error
	if err := ValidateRunID(o.Run); err != nil {
		errs = append(errs, fmt.Errorf("run: %w", err))
	}
	if len(o.Queries) == 0 {
		errs = append(errs, errors.New("queries: empty"))
	}
	if len(o.Queries) > MaxQueries {
		errs = append(errs, fmt.Errorf("queries: %d exceeds the maximum of %d", len(o.Queries), MaxQueries))
	}
	seen := map[string]bool{}
	for i, q := range o.Queries {
		if !ValidToken(q.Name) {
			errs = append(errs, fmt.Errorf("queries[%d].name: %q is not a valid name", i, q.Name))
		}
		if seen[q.Name] {
			errs = append(errs, fmt.Errorf("queries[%d].name: duplicate %q", i, q.Name))
		}
		seen[q.Name] = true
	}
	switch o.Order {
	case "", OrderInput, OrderCompletion:
	default:
		errs = append(errs, fmt.Errorf("order: %q is not input or completion", o.Order))
	}
	for i := range o.Pools {
		if err := o.Pools[i].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("pools[%d].%w", i, err))
		}
	}
	if rs := o.Resubmit; rs != nil {
		if err := ValidateRunID(rs.Run); err != nil || rs.Run == o.Run {
			errs = append(errs, fmt.Errorf("resubmit.run: %q is not another run's id", rs.Run))
		}
		if rs.Attempt < 1 {
			errs = append(errs, fmt.Errorf("resubmit.attempt: %d must be >= 1", rs.Attempt))
		}
	}
	return errors.Join(errs...)
}

// QueryIndex returns the position of a query name, or -1.
func (o *Open) QueryIndex(name string) int {
	for i, q := range o.Queries {
		if q.Name == name {
			return i
		}
	}
	return -1
}

// MaxQueries bounds M so a row's completion fits a fixed bitset.
const MaxQueries = 1024

// Seal is the run's seal record: the input is complete with Rows rows (0..Rows-1).
type Seal struct {
	V    int    `json:"v"`
	Run  string `json:"run"`
	Rows int    `json:"rows"`
}

// Row is one input row as published on InputRowSubject. Data is the original row as a JSON
// object (keys in input order). Error is set when the producer already knows the row failed
// (malformed record, template rendering failed): then no job is published for it.
type Row struct {
	V     int             `json:"v"`
	Run   string          `json:"run"`
	Row   int             `json:"row"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error *Error          `json:"error,omitempty"`
	// SourceRow is, in a resubmission, the row's index in the original run.
	SourceRow *int `json:"source_row,omitempty"`
}

// Message is one chat message of a rendered prompt.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Output types.
const (
	TypeString  = "string"
	TypeInteger = "integer"
	TypeNumber  = "number"
	TypeBoolean = "boolean"
	TypeEnum    = "enum"
)

// OutputField maps one JSON field of the answer to an output column.
type OutputField struct {
	Field  string   `json:"field"`
	Column string   `json:"column"`
	Type   string   `json:"type"`
	Values []string `json:"values,omitempty"`
}

// Response formats.
const (
	FormatStandard   = "standard"
	FormatStructured = "structured"
)

// Request is the model call a job asks for. It names a deployment alias, never an endpoint
// or a key: the worker resolves the alias in its own configuration.
type Request struct {
	Model               string         `json:"model"`
	Messages            []Message      `json:"messages"`
	Temperature         *float64       `json:"temperature,omitempty"`
	MaxCompletionTokens int            `json:"max_completion_tokens,omitempty"`
	ResponseFormat      string         `json:"response_format"`
	Schema              map[string]any `json:"schema,omitempty"`
}

// Job is one query of one row.
type Job struct {
	V          int           `json:"v"`
	Run        string        `json:"run"`
	Row        int           `json:"row"`
	Query      string        `json:"query"`
	Deployment string        `json:"deployment"`
	Request    Request       `json:"request"`
	Outputs    []OutputField `json:"outputs"`
	// MaxCapacityRetrySeconds bounds capacity retries, counted from the first capacity error.
	MaxCapacityRetrySeconds int `json:"max_capacity_retry_seconds"`
	// MaxAttempts bounds transient-error attempts.
	MaxAttempts int `json:"max_attempts"`
	// MaxAnswerRetries is how many times the query is asked again when its answer is
	// not usable (invalid_json, missing_output_field, type_mismatch) before it fails
	// with that reason; 0 (absent, as from a publisher of an earlier build) never.
	MaxAnswerRetries int `json:"max_answer_retries,omitempty"`
	// ReaskWithError: a query asked again gets one more user message saying why the
	// previous answer was not usable.
	ReaskWithError bool      `json:"reask_with_error,omitempty"`
	Enqueued       time.Time `json:"enqueued"`
	// Cache, when set, lets a worker answer the job from the prompt cache and store its
	// answer there; nil: neither (older workers ignore it and call).
	Cache *JobCache `json:"cache,omitempty"`
	// Pool, when set, makes Deployment the name of a pool of these members: a worker
	// calls whichever member it serves has spare capacity (see Pool).
	Pool []PoolMember `json:"pool,omitempty"`
	// Resubmission is set on the jobs of a resubmission: the original run, row and the
	// attempt (copied into the audit records).
	Resubmission *Resubmission `json:"resubmission,omitempty"`
	// Data, set only on the job of a row's first query (the open record's order), is
	// the row's input data, carried in the job instead of an input row message
	// (InputRowSubject): every result of the job carries it back (Result.Data) and the
	// collector takes it as the row's input. Absent: the row has its input row message.
	Data json.RawMessage `json:"data,omitempty"`
}

// JobCache is a job's use of the prompt cache (BucketCache).
type JobCache struct {
	// TTLSeconds is the oldest cached answer the job accepts, in seconds (> 0).
	TTLSeconds int64 `json:"ttl_seconds"`
}

// TTL returns the oldest cached answer accepted.
func (c *JobCache) TTL() time.Duration { return time.Duration(c.TTLSeconds) * time.Second }

// Addr returns the job's address.
func (j *Job) Addr() Addr { return Addr{Run: j.Run, Row: j.Row, Query: j.Query} }

// Validate checks a decoded job; a job that fails it is poison.
func (j *Job) Validate() error {
	var errs []error
	if !ValidToken(j.Run) {
		errs = append(errs, fmt.Errorf("run: %q is not a valid id", j.Run))
	}
	if j.Row < 0 {
		errs = append(errs, fmt.Errorf("row: %d is negative", j.Row))
	}
	if !ValidToken(j.Query) {
		errs = append(errs, fmt.Errorf("query: %q is not a valid name", j.Query))
	}
	if !ValidToken(j.Deployment) {
		errs = append(errs, fmt.Errorf("deployment: %q is not a valid alias", j.Deployment))
	}
	if j.Pool != nil {
		if err := ValidatePoolMembers(j.Pool); err != nil {
			errs = append(errs, fmt.Errorf("pool.%w", err))
		}
	}
	if len(j.Request.Messages) == 0 {
		errs = append(errs, errors.New("request.messages: empty"))
	}
	switch j.Request.ResponseFormat {
	case FormatStandard, FormatStructured:
	default:
		errs = append(errs, fmt.Errorf("request.response_format: %q is not standard or structured", j.Request.ResponseFormat))
	}
	if len(j.Outputs) == 0 {
		errs = append(errs, errors.New("outputs: empty"))
	}
	for i, o := range j.Outputs {
		switch o.Type {
		case TypeString, TypeInteger, TypeNumber, TypeBoolean:
		case TypeEnum:
			if len(o.Values) == 0 {
				errs = append(errs, fmt.Errorf("outputs[%d].values: enum without values", i))
			}
		default:
			errs = append(errs, fmt.Errorf("outputs[%d].type: unknown type %q", i, o.Type))
		}
		if o.Field == "" || o.Column == "" {
			errs = append(errs, fmt.Errorf("outputs[%d]: field and column are required", i))
		}
	}
	if j.MaxCapacityRetrySeconds <= 0 {
		errs = append(errs, fmt.Errorf("max_capacity_retry_seconds: %d must be > 0", j.MaxCapacityRetrySeconds))
	}
	if j.MaxAttempts <= 0 {
		errs = append(errs, fmt.Errorf("max_attempts: %d must be > 0", j.MaxAttempts))
	}
	if j.Cache != nil && j.Cache.TTLSeconds <= 0 {
		errs = append(errs, fmt.Errorf("cache.ttl_seconds: %d must be > 0", j.Cache.TTLSeconds))
	}
	if j.MaxAnswerRetries < 0 {
		errs = append(errs, fmt.Errorf("max_answer_retries: %d must be >= 0", j.MaxAnswerRetries))
	}
	return errors.Join(errs...)
}

// Usage is the token usage of a call (or, in Result.Billed, of all of a query's calls).
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// Error reasons. Row-level reasons appear in "_error.reason", query-level ones in
// "_error.failed_queries[].error.reason".
const (
	ReasonQueryFailed       = "query_failed"
	ReasonTemplateRendering = "template_rendering_failed"
	ReasonMalformedRecord   = "malformed_record"
	// ReasonRowTooLarge: the row, or one of its rendered prompts, does not fit in one
	// message (the server's max_payload); no job is published for it.
	ReasonRowTooLarge           = "row_too_large"
	ReasonCancelled             = "cancelled"
	ReasonCapacityTimeout       = "capacity_retry_timeout"
	ReasonRetryExhausted        = "retry_exhausted"
	ReasonInvalidJSON           = "invalid_json"
	ReasonMissingField          = "missing_output_field"
	ReasonTypeMismatch          = "type_mismatch"
	ReasonTruncated             = "response_truncated"
	ReasonContentFiltered       = "content_filtered"
	ReasonLLMCallFailed         = "llm_call_failed"
	ReasonUnknownDeployment     = "unknown_deployment"
	ReasonPoison                = "poison_job"
	ReasonMaxDeliveries         = "max_deliveries_exceeded"
	ReasonEmptyResponse         = "empty_response"
	ReasonContextLengthExceeded = "context_length_exceeded"
	// ReasonModelNotFound: the provider does not know the job's model (a 404 whose
	// code is model_not_found): the pipeline's fault, not the deployment's.
	ReasonModelNotFound = "model_not_found"
	// ReasonInvalidResult: a result record the collector cannot trust (a success result
	// without one of its query's output columns); details name the field.
	ReasonInvalidResult = "invalid_result"
)

// Error is a structured error: a reason plus details. It marshals flat:
// {"reason": "...", "message": "...", ...details}.
type Error struct {
	Reason  string
	Message string
	Details map[string]any
}

// Error implements error.
func (e *Error) Error() string {
	if e.Message == "" {
		return e.Reason
	}
	return e.Reason + ": " + e.Message
}

// MarshalJSON writes reason, message and details as one flat object.
func (e *Error) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(e.Details)+2)
	for k, v := range e.Details {
		m[k] = v
	}
	m["reason"] = e.Reason
	if e.Message != "" {
		m["message"] = e.Message
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads the flat form written by MarshalJSON.
func (e *Error) UnmarshalJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	e.Reason, _ = m["reason"].(string)
	e.Message, _ = m["message"].(string)
	delete(m, "reason")
	delete(m, "message")
	if len(m) > 0 {
		e.Details = m
	}
	return nil
}

// Result is the final outcome of one job. The first result for an address wins.
type Result struct {
	V      int                        `json:"v"`
	Run    string                     `json:"run"`
	Row    int                        `json:"row"`
	Query  string                     `json:"query"`
	OK     bool                       `json:"ok"`
	Fields map[string]json.RawMessage `json:"fields,omitempty"` // column -> value
	Usage  *Usage                     `json:"usage,omitempty"`
	Model  string                     `json:"model,omitempty"`
	// Deployment is the alias that answered (success only): the pool member, for a
	// job of a pool.
	Deployment string `json:"deployment,omitempty"`
	Error      *Error `json:"error,omitempty"`
	Attempt    int    `json:"attempt,omitempty"`
	// Calls, Retries and Billed are what the provider billed for this query over every
	// delivery of its job: HTTP calls made (429s and failed answers included), calls
	// beyond the first, and the tokens of every answer (not only the winning one).
	Calls   int     `json:"calls,omitempty"`
	Retries int     `json:"retries,omitempty"`
	Billed  *Usage  `json:"billed,omitempty"`
	Worker  string  `json:"worker,omitempty"`
	Elapsed float64 `json:"elapsed_seconds,omitempty"`
	// Cached says the answer came from the prompt cache: no call was made (Calls 0),
	// Usage and Model are those of the call that stored it.
	Cached bool `json:"cached,omitempty"`
	// Job is, on a failed result only, the job it answers as the worker received it:
	// what mqctl resubmit publishes again. A success result never carries it (the
	// success path pays nothing for resubmission); it is also absent from synthetic
	// results (poison, MaxDeliver) and when the result would not fit in a message with it.
	Job json.RawMessage `json:"job,omitempty"`
	// Data is the job's Data, on every result of a job that carries its row's data
	// (the row's first query): the row's input for the collector.
	Data json.RawMessage `json:"data,omitempty"`
}

// ResubmitEntry is one line of a run's resubmit.jsonl, written by the collector for a
// row that ends in error, and only then (docs/WIRE.md, "Resubmitting error rows"): the
// k-th entry goes with the k-th line of errors.jsonl. It keeps what a resubmission of
// the row needs: the row's data and its M results as stored, in the open record's query
// order, a failed one with its job (Results is absent for a row with a pre-known error).
// A resubmission's own file also has an entry with OK for each row that succeeded, so
// that the merge knows the original row of every line.
type ResubmitEntry struct {
	Row     int               `json:"row"` // the row in the original run
	OK      bool              `json:"ok,omitempty"`
	Data    json.RawMessage   `json:"data,omitempty"`
	Results []json.RawMessage `json:"results,omitempty"`
}

// Addr returns the result's address.
func (r *Result) Addr() Addr { return Addr{Run: r.Run, Row: r.Row, Query: r.Query} }

// RowData is the row's input data a job or a result carries ("data": Job.Data,
// Result.Data), read without decoding the rest; nil when it carries none or the body is
// not JSON.
func RowData(body []byte) json.RawMessage {
	var probe struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(body, &probe) != nil || len(probe.Data) == 0 || string(probe.Data) == "null" {
		return nil
	}
	return probe.Data
}

// Decode unmarshals a payload and checks the schema version: a version above MaxVersion
// returns ErrNewerVersion so the caller can leave the message for a newer build. The
// version is read without a second decode when the payload starts with it, as every
// record this package's types encode does ("v" is their first field).
func Decode(data []byte, v any) error {
	ver, ok := leadingVersion(data)
	if !ok {
		var probe struct {
			V int `json:"v"`
		}
		if err := json.Unmarshal(data, &probe); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		ver = probe.V
	}
	if ver > MaxVersion {
		return fmt.Errorf("decode: schema version %d: %w", ver, ErrNewerVersion)
	}
	if ver < 1 {
		return fmt.Errorf("decode: schema version %d: missing or invalid \"v\"", ver)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// leadingVersion reads `{"v":<digits>` followed by ',' or '}' at the start of data
// (JSON whitespace allowed between tokens); ok is false for anything else.
func leadingVersion(data []byte) (ver int, ok bool) {
	i := 0
	skip := func() {
		for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
			i++
		}
	}
	expect := func(lit string) bool {
		skip()
		if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
			return false
		}
		i += len(lit)
		return true
	}
	if !expect("{") || !expect(`"v"`) || !expect(":") {
		return 0, false
	}
	skip()
	start := i
	for i < len(data) && data[i] >= '0' && data[i] <= '9' && i-start < 9 {
		ver = ver*10 + int(data[i]-'0')
		i++
	}
	if i == start || (data[start] == '0' && i-start > 1) {
		return 0, false
	}
	skip()
	if i >= len(data) || (data[i] != ',' && data[i] != '}') {
		return 0, false
	}
	return ver, true
}

// ErrNewerVersion marks a payload written by a newer schema version.
var ErrNewerVersion = errors.New("newer schema version")
