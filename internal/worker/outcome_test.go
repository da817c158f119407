package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/wire"
)

// The worker's outcome table (docs/OPERATIONS.md, "Outcomes of a query job"), one row
// per case, with the worker's default Config and jitter drawn at its middle (rand 0.5:
// U(0.8, 1.2) gives x1, the capacity and pause jitter U(1, 1.2) gives x1.1).
//
// Every query-level reason of docs/WIRE.md's "Error reasons" that the worker produces
// has a row (TestOutcomeTable checks). The others are produced elsewhere:
//   - query_failed, template_rendering_failed, malformed_record, row_too_large: row-level,
//     written by the producer (rendering, size) and the collector (rows, query_failed);
//   - invalid_result: the collector (an ok result lacking an output column);
//   - cancelled at row level: the producer service (a row not yet published);
//   - poison_job for a stored result the collector cannot decode: the collector;
//   - max_deliveries_exceeded past the consumer's MaxDeliver: deadletter.go, from the
//     server's advisory (no delivery, so no decision; "delivered N times (MaxDeliver)").
var outcomeTable = []struct {
	name string
	in   outcomeInput
	want outcome
}{
	// The job as received.
	{"newer schema version: NAK 30 s for a newer worker", at(func(in *outcomeInput) { in.job = jobNewer }), outcome{act: actNewer, delay: 30 * time.Second}},
	{"poison job: dead-letter, poison_job, Term", at(func(in *outcomeInput) { in.job, in.cause = jobPoison, "max_attempts: 0 must be > 0" }),
		outcome{act: actPoison, err: &wire.Error{Reason: wire.ReasonPoison, Message: "max_attempts: 0 must be > 0"}}},
	{"alias no worker serves: unknown_deployment", at(func(in *outcomeInput) { in.job, in.alias = jobUnservedAlias, "gpt9" }),
		final(wire.ReasonUnknownDeployment, "no worker serves deployment alias gpt9", map[string]any{"deployment": "gpt9"})},

	// Before the call.
	{"first delivery: call", at(func(*outcomeInput) {}), outcome{act: actCall}},
	{"running run (explicit state): call", at(func(in *outcomeInput) { in.run = wire.ControlRunning }), outcome{act: actCall}},
	{"cancelled run: cancelled, no call", at(func(in *outcomeInput) { in.run, in.deliveries = wire.ControlCancelled, 3 }),
		final(wire.ReasonCancelled, "the run was cancelled", nil)},
	{"cancelled run beats a paused deployment", at(func(in *outcomeInput) { in.run, in.pausedFor = wire.ControlCancelled, time.Second }),
		final(wire.ReasonCancelled, "the run was cancelled", nil)},
	{"paused run: wait 30 s (a counted NAK)", at(func(in *outcomeInput) { in.run = wire.ControlPaused }), wait(30 * time.Second)},
	{"901 deliveries, none NAKed: max_deliveries_exceeded", at(func(in *outcomeInput) { in.deliveries = 901 }),
		final(wire.ReasonMaxDeliveries, "delivered 901 times", map[string]any{"deliveries": uint64(901)})},
	{"901 deliveries, 1 NAKed: at the cap, not past it", at(func(in *outcomeInput) { in.deliveries, in.naks = 901, 1 }), outcome{act: actProbe}},
	{"5000 deliveries, 4500 NAKed waits and retries: no backstop", at(func(in *outcomeInput) { in.deliveries, in.naks = 5000, 4500 }), outcome{act: actProbe}},
	{"more NAKs than deliveries (a duplicate job shares the retry state): no backstop", at(func(in *outcomeInput) { in.deliveries, in.naks = 950, 1200 }), outcome{act: actProbe}},
	{"deployment paused 10 s: wait x1.1", at(func(in *outcomeInput) { in.pausedFor = 10 * time.Second }), wait(11 * time.Second)},
	{"redelivery: read whether its result is stored", at(func(in *outcomeInput) { in.deliveries = 2 }), outcome{act: actProbe}},
	{"redelivery, result stored (ack lost): ack, no call", at(func(in *outcomeInput) { in.deliveries, in.probed, in.stored = 2, true, true }), outcome{act: actDone}},
	{"redelivery, no result stored: call", at(func(in *outcomeInput) { in.deliveries, in.probed = 2, true }), outcome{act: actCall}},

	// After the call: success and drain.
	{"answer with every field: ok result", called(nil, nil), outcome{act: actFinal}},
	{"drain timeout during the call: give back at once", drainedAfter(context.Canceled), outcome{act: actGiveBack}},
	{"drain timeout after a good answer: give back", drainedAfter(nil), outcome{act: actGiveBack}},

	// Capacity.
	{"429 Retry-After 2 s, within budget: NAK 2.2 s", called(&llm.CapacityError{StatusCode: 429, RetryAfter: 2 * time.Second}, capacity(1, 0)), nak(2200 * time.Millisecond)},
	{"503 without Retry-After: NAK 100 ms x1.1", called(&llm.CapacityError{StatusCode: 503}, capacity(2, time.Minute)), nak(110 * time.Millisecond)},
	{"529 Retry-After 1 s, deployment paused 5 s more: NAK 5.5 s", called(&llm.CapacityError{StatusCode: 529, RetryAfter: time.Second},
		func(in *outcomeInput) { capacity(3, time.Minute)(in); in.pausedFor = 5 * time.Second }), nak(5500 * time.Millisecond)},
	{"429 Retry-After 120 s: capped at max NAK delay 60 s", called(&llm.CapacityError{StatusCode: 429, RetryAfter: 2 * time.Minute}, capacity(1, 0)), nak(time.Minute)},
	{"429 with 100 ms of budget left: NAK to just past it", called(&llm.CapacityError{StatusCode: 429, RetryAfter: 2 * time.Second},
		capacity(40, time.Hour-100*time.Millisecond)), nak(150 * time.Millisecond)},
	{"429 with the budget spent: capacity_retry_timeout", called(&llm.CapacityError{StatusCode: 429, RetryAfter: time.Second, Message: "Too Many Requests"}, capacity(412, time.Hour)),
		final(wire.ReasonCapacityTimeout, "Too Many Requests", map[string]any{"status_code": 429, "elapsed": 3600.0, "max": 3600.0, "capacity_errors": 412})},
	{"503 past the budget: capacity_retry_timeout", called(&llm.CapacityError{StatusCode: 503, Message: "busy"}, capacity(7, time.Hour+time.Second)),
		final(wire.ReasonCapacityTimeout, "busy", map[string]any{"status_code": 503, "elapsed": 3601.0, "max": 3600.0, "capacity_errors": 7})},
	{"naive: 429 Retry-After 5 s, NAK a fixed 1 s", called(&llm.CapacityError{StatusCode: 429, RetryAfter: 5 * time.Second},
		func(in *outcomeInput) { capacity(1, 0)(in); in.naive = true }), nak(time.Second)},
	{"naive: 500 ms of budget left, NAK 550 ms", called(&llm.CapacityError{StatusCode: 429},
		func(in *outcomeInput) { capacity(9, time.Hour-500*time.Millisecond)(in); in.naive = true }), nak(550 * time.Millisecond)},
	{"naive: budget spent, capacity_retry_timeout", called(&llm.CapacityError{StatusCode: 429},
		func(in *outcomeInput) { capacity(9, time.Hour)(in); in.naive = true }),
		final(wire.ReasonCapacityTimeout, "", map[string]any{"status_code": 429, "elapsed": 3600.0, "max": 3600.0, "capacity_errors": 9})},
	{"429, retry state not written: NAK 1 s", called(&llm.CapacityError{StatusCode: 429, RetryAfter: 30 * time.Second},
		func(in *outcomeInput) { in.stateErr = true }), nak(time.Second)},

	// Transient.
	{"500, 1st of 5: NAK 1 s", called(&llm.TransientError{StatusCode: 500}, transient(1)), nak(time.Second)},
	{"502, 3rd of 5: NAK 4 s", called(&llm.TransientError{StatusCode: 502}, transient(3)), nak(4 * time.Second)},
	{"per-call timeout (deadline), 2nd of 5: NAK 2 s", called(&llm.TransientError{Message: "timeout: context deadline exceeded"}, transient(2)), nak(2 * time.Second)},
	{"408, 7th of 10: backoff capped at 30 s", called(&llm.TransientError{StatusCode: 408},
		func(in *outcomeInput) { in.transientErrors, in.maxAttempts = 7, 10 }), nak(30 * time.Second)},
	{"500, 5th of 5: retry_exhausted", called(&llm.TransientError{StatusCode: 500, Message: "server error"}, transient(5)),
		final(wire.ReasonRetryExhausted, "server error", map[string]any{"status_code": 500, "attempts": 5})},
	{"connection refused, max_attempts 1: retry_exhausted, status 0", called(&llm.TransientError{Message: "connection refused"},
		func(in *outcomeInput) { in.transientErrors, in.maxAttempts = 1, 1 }),
		final(wire.ReasonRetryExhausted, "connection refused", map[string]any{"status_code": 0, "attempts": 1})},
	{"200 that is not a completion, 5th of 5: retry_exhausted", called(&llm.TransientError{StatusCode: 200, Message: "completion has no choices"}, transient(5)),
		final(wire.ReasonRetryExhausted, "completion has no choices", map[string]any{"status_code": 200, "attempts": 5})},
	{"500, retry state not written: NAK 1 s", called(&llm.TransientError{StatusCode: 500}, func(in *outcomeInput) { in.stateErr = true }), nak(time.Second)},

	// Deployment-wide: the job waits, no reason of its own.
	{"401: wait 15 s (deployment pause)", called(&llm.DeploymentError{StatusCode: 401}, nil), wait(15 * time.Second)},
	{"404: wait 15 s", called(&llm.DeploymentError{StatusCode: 404}, nil), wait(15 * time.Second)},
	{"429 insufficient_quota: wait 15 s", called(&llm.DeploymentError{StatusCode: 429, Code: "insufficient_quota"}, nil), wait(15 * time.Second)},

	// An answer that is not usable: asked again while max_answer_retries allows (the
	// count is in the retry state), then the query fails with the reason.
	{"answer not JSON, 1st bad answer of max_answer_retries 1: asked again at once", called(perm(wire.ReasonInvalidJSON, 0, ""), answers(1, 1)), reask()},
	{"field absent, 1st bad answer of 1: asked again", called(perm(wire.ReasonMissingField, 0, "score"), answers(1, 1)), reask()},
	{"field of the wrong type, 3rd bad answer of 3: asked again", called(perm(wire.ReasonTypeMismatch, 0, "label"), answers(3, 3)), reask()},
	{"answer not JSON, re-asks spent (2nd bad answer of 1): invalid_json", called(perm(wire.ReasonInvalidJSON, 0, ""), answers(2, 1)),
		final(wire.ReasonInvalidJSON, "m", map[string]any{})},
	{"field absent, re-asks spent: missing_output_field naming the field", called(perm(wire.ReasonMissingField, 0, "score"), answers(2, 1)),
		final(wire.ReasonMissingField, "m", map[string]any{"field": "score"})},
	{"field of the wrong type, re-asks spent: type_mismatch naming the field", called(perm(wire.ReasonTypeMismatch, 0, "label"), answers(4, 3)),
		final(wire.ReasonTypeMismatch, "m", map[string]any{"field": "label"})},
	{"answer not JSON, max_answer_retries 0: invalid_json at once", called(perm(wire.ReasonInvalidJSON, 0, ""), answers(1, 0)),
		final(wire.ReasonInvalidJSON, "m", map[string]any{})},
	{"answer not JSON, retry state not written: NAK 1 s", called(perm(wire.ReasonInvalidJSON, 0, ""), func(in *outcomeInput) { in.maxAnswer, in.stateErr = 1, true }),
		nak(time.Second)},

	// Permanent.
	{"finish_reason=length: response_truncated", called(perm(wire.ReasonTruncated, 200, ""), nil), final(wire.ReasonTruncated, "m", map[string]any{"status_code": 200})},
	{"finish_reason=content_filter: content_filtered", called(perm(wire.ReasonContentFiltered, 200, ""), nil), final(wire.ReasonContentFiltered, "m", map[string]any{"status_code": 200})},
	{"400 code content_filter: content_filtered", called(perm(wire.ReasonContentFiltered, 400, ""), nil), final(wire.ReasonContentFiltered, "m", map[string]any{"status_code": 400})},
	{"400 context_length_exceeded", called(perm(wire.ReasonContextLengthExceeded, 400, ""), nil), final(wire.ReasonContextLengthExceeded, "m", map[string]any{"status_code": 400})},
	{"200 with empty content: empty_response", called(perm(wire.ReasonEmptyResponse, 200, ""), nil), final(wire.ReasonEmptyResponse, "m", map[string]any{"status_code": 200})},
	{"422: llm_call_failed", called(perm(wire.ReasonLLMCallFailed, 422, ""), nil), final(wire.ReasonLLMCallFailed, "m", map[string]any{"status_code": 422})},
	{"request not encodable: llm_call_failed, no status", called(perm(wire.ReasonLLMCallFailed, 0, ""), nil), final(wire.ReasonLLMCallFailed, "m", map[string]any{})},
	{"permanent error wrapped: still its reason", called(wrapped{perm(wire.ReasonTruncated, 200, "")}, nil), final(wire.ReasonTruncated, "m", map[string]any{"status_code": 200})},

	// Anything else.
	{"unclassified error: NAK 5 s, counted", called(errors.New("boom"), nil), wait(5 * time.Second)},
}

// TestOutcomeTable runs outcomeTable, and checks that every query-level reason the
// worker writes has a row.
func TestOutcomeTable(t *testing.T) {
	rows := map[string]bool{}
	for _, tc := range outcomeTable {
		if tc.want.err != nil {
			rows[tc.want.err.Reason] = true
		}
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, decide(tc.in), cmp.AllowUnexported(outcome{})); d != "" {
				t.Fatalf("decide (-want +got):\n%s", d)
			}
		})
	}
	for _, r := range []string{wire.ReasonCapacityTimeout, wire.ReasonRetryExhausted, wire.ReasonInvalidJSON, wire.ReasonMissingField,
		wire.ReasonTypeMismatch, wire.ReasonTruncated, wire.ReasonContentFiltered, wire.ReasonContextLengthExceeded,
		wire.ReasonEmptyResponse, wire.ReasonLLMCallFailed, wire.ReasonUnknownDeployment, wire.ReasonPoison,
		wire.ReasonMaxDeliveries, wire.ReasonCancelled} {
		if !rows[r] {
			t.Errorf("no row for the worker's reason %s", r)
		}
	}
}

// The rows' inputs: the worker's default Config, a first delivery of a job with
// max_attempts 5 and a capacity budget of 1 h, jitter drawn at its middle; f sets the rest.
func at(f func(*outcomeInput)) outcomeInput {
	cfg := Config{Name: "w"}
	cfg.defaults()
	in := outcomeInput{deliveries: 1, maxAttempts: 5, capacityBudget: time.Hour, policy: cfg.policy(), rand: 0.5}
	f(&in)
	return in
}

// called: the call came back with err (nil: a parsed answer); f, if any, sets the retry
// state as tally leaves it.
func called(err error, f func(*outcomeInput)) outcomeInput {
	return at(func(in *outcomeInput) {
		c := classify(false, err)
		in.call = &c
		if f != nil {
			f(in)
		}
	})
}

// drainedAfter: the drain timeout ended the worker's context while the call returned err.
func drainedAfter(err error) outcomeInput {
	return at(func(in *outcomeInput) {
		c := classify(true, err)
		in.call = &c
	})
}

func capacity(n int, elapsed time.Duration) func(*outcomeInput) {
	return func(in *outcomeInput) { in.capacityErrors, in.capacityElapsed = n, elapsed }
}

func transient(n int) func(*outcomeInput) {
	return func(in *outcomeInput) { in.transientErrors = n }
}

// answers: n unusable answers so far (this one included), of a job with max_answer_retries max.
func answers(n, max int) func(*outcomeInput) {
	return func(in *outcomeInput) { in.answerErrors, in.maxAnswer = n, max }
}

func perm(reason string, status int, field string) error {
	return &llm.PermanentError{Reason: reason, StatusCode: status, Field: field, Message: "m"}
}

// The rows' outcomes.
func final(reason, msg string, details map[string]any) outcome {
	return outcome{act: actFinal, err: &wire.Error{Reason: reason, Message: msg, Details: details}}
}

func nak(d time.Duration) outcome { return outcome{act: actNak, delay: d} }

// reask is the NAK that asks the query again at once (counted in mq_worker_reasks_total).
func reask() outcome { return outcome{act: actNak, reask: true} }

// wait is a NAK counted in the retry state first (with what the delivery spent).
func wait(d time.Duration) outcome { return outcome{act: actNak, delay: d, record: true} }

// wrapped is an error wrapping another, as a caller adding context would.
type wrapped struct{ err error }

func (w wrapped) Error() string { return "wrapped: " + w.err.Error() }
func (w wrapped) Unwrap() error { return w.err }
