package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/wire"
)

// The worker's outcome table (docs/OPERATIONS.md, "Outcomes of a query job") as one
// pure function: decide maps what is known about a delivery to the single queue action
// that ends it. handle gathers the facts (decoding, run control, retry state, the call)
// and carries the action out; nothing here reads the bus or the clock.

// jobCheck is what a delivery's payload came to.
type jobCheck int

const (
	jobValid         jobCheck = iota // decoded, valid, and matching its subject
	jobNewer                         // a schema version above this worker's
	jobPoison                        // undecodable, invalid, or not matching its subject
	jobUnservedAlias                 // a job of an alias no worker has ever served (rejectAlias)
)

// callClass is what a model call came to.
type callClass int

const (
	classOK           callClass = iota // the answer parsed into every output field
	classDrained                       // the worker's context ended (drain timeout)
	classCapacity                      // 429 (not insufficient_quota), 503, 529
	classTransient                     // 408, 409, other 5xx, timeouts, connection errors, a 200 that is not a completion
	classDeployment                    // 401, 403, 404, 429 insufficient_quota
	classAnswer                        // a 200 whose answer is not usable: invalid_json, missing_output_field, type_mismatch
	classPermanent                     // any reason that retrying will not change
	classUnclassified                  // an error of no known type
)

// callResult is a call's outcome as plain values (classify reads it off the error).
type callResult struct {
	class      callClass
	reason     string // classPermanent: the wire reason
	status     int    // the HTTP status (0: none received)
	field      string // classPermanent: the output field concerned, if any
	message    string
	retryAfter time.Duration // classCapacity: the provider's Retry-After (0: none)
}

// policy is the part of the worker's Config that decisions read.
type policy struct {
	naive            bool
	hardDeliverCap   uint64
	maxNakDelay      time.Duration
	transientBackoff time.Duration
	deploymentPause  time.Duration
	pausedRunDelay   time.Duration
}

func (c *Config) policy() policy {
	return policy{naive: c.Naive, hardDeliverCap: c.HardDeliverCap, maxNakDelay: c.MaxNakDelay,
		transientBackoff: c.TransientBackoff, deploymentPause: c.DeploymentPause, pausedRunDelay: c.PausedRunDelay}
}

// outcomeInput is what the worker knows about one delivery when it decides: plain
// values only. Before the call call is nil; decide may then ask for the one fact that
// costs a round trip (actProbe) or for the call itself (actCall).
type outcomeInput struct {
	job   jobCheck
	cause string // jobPoison: why
	alias string // jobUnservedAlias: the alias

	run        string        // the run's control state ("" or wire.ControlRunning: running)
	deliveries uint64        // NumDelivered: this delivery's attempt
	naks       uint64        // deliveries that ended in a NAK the worker chose (read only past hardDeliverCap)
	pausedFor  time.Duration // the deployment's pause left (read again after a capacity signal)
	probed     bool          // a redelivery: the results stream was read for its result...
	stored     bool          // ...and it is there (an ack was lost)

	call *callResult
	// The retry state once this call's error is counted in it (capacity, transient).
	stateErr        bool          // it could not be written
	capacityErrors  int           // capacity errors so far, this one included
	capacityElapsed time.Duration // since the job's first capacity error (KV server time)
	transientErrors int           // transient errors so far, this one included
	answerErrors    int           // unusable answers so far, this one included

	maxAttempts    int           // the job's max_attempts
	maxAnswer      int           // the job's max_answer_retries
	capacityBudget time.Duration // the job's max_capacity_retry_seconds
	policy
	rand float64 // U[0, 1), drawn by the caller: the jitter of whichever delay applies
}

// action is what a delivery ends in (or, actCall and actProbe, what it needs next).
type action int

const (
	actCall     action = iota // nothing stops the call: make it, then decide again
	actProbe                  // a redelivery: read whether its result is stored, then decide again
	actDone                   // the result is already stored: ack, no call
	actFinal                  // publish the final result (err nil: the success), ack, forget the retry state
	actNak                    // NAK after delay (mq_worker_naks_total)
	actGiveBack               // drain: store what the call cost, NAK at once
	actNewer                  // NAK after delay for a newer worker: nothing counted or recorded
	actPoison                 // dead-letter the payload, publish err when the subject parses, Term
)

// outcome is a decision.
type outcome struct {
	act    action
	delay  time.Duration // actNak, actNewer
	err    *wire.Error   // actFinal (nil: success), actPoison
	record bool          // actNak: count the NAK (and what this delivery spent) in the retry state first
	reask  bool          // actNak: the answer was not usable, the query is asked again (mq_worker_reasks_total)
}

// Fixed delays of the outcome table.
const (
	newerVersionDelay = 30 * time.Second // a job of a newer schema, left for a newer worker
	stateErrDelay     = time.Second      // the retry state could not be written
	unclassifiedDelay = 5 * time.Second  // an error of no known type
	minCapacityDelay  = 100 * time.Millisecond
	transientCap      = 30 * time.Second
	budgetSlack       = 50 * time.Millisecond // a capacity NAK lands just past the budget, to fail it
)

// decide is the outcome table.
func decide(in outcomeInput) outcome {
	if in.call != nil {
		return decideCall(in)
	}
	switch {
	case in.job == jobNewer:
		return outcome{act: actNewer, delay: newerVersionDelay}
	case in.job == jobPoison:
		return outcome{act: actPoison, err: &wire.Error{Reason: wire.ReasonPoison, Message: in.cause}}
	case in.job == jobUnservedAlias:
		return outcome{act: actFinal, err: &wire.Error{Reason: wire.ReasonUnknownDeployment,
			Message: "no worker serves deployment alias " + in.alias, Details: map[string]any{"deployment": in.alias}}}
	case in.run == wire.ControlCancelled:
		return outcome{act: actFinal, err: &wire.Error{Reason: wire.ReasonCancelled, Message: "the run was cancelled"}}
	case in.run == wire.ControlPaused:
		// Fetched just before the pause was known (paused runs are not fetched): wait.
		return outcome{act: actNak, delay: jitterBy(in.pausedRunDelay, in.rand), record: true}
	case in.deliveries > in.hardDeliverCap && in.deliveries > in.naks && in.deliveries-in.naks > in.hardDeliverCap:
		// Crash-loop backstop: only deliveries that ended without an outcome count (a
		// duplicate job republished later shares the retry state: its NAKs may outnumber
		// this message's deliveries).
		return outcome{act: actFinal, err: &wire.Error{Reason: wire.ReasonMaxDeliveries,
			Message: fmt.Sprintf("delivered %d times", in.deliveries), Details: map[string]any{"deliveries": in.deliveries}}}
	case in.pausedFor > 0:
		// Paused (fleet-wide Retry-After, a deployment-wide error) since the permit was
		// taken: do not dispatch into the pause.
		p := in.pausedFor
		return outcome{act: actNak, delay: p + time.Duration(float64(p)*0.2*in.rand), record: true}
	case in.deliveries > 1 && !in.probed:
		return outcome{act: actProbe}
	case in.stored:
		return outcome{act: actDone}
	}
	return outcome{act: actCall}
}

// decideCall maps a call's outcome to its queue action.
func decideCall(in outcomeInput) outcome {
	c := in.call
	switch c.class {
	case classOK:
		return outcome{act: actFinal}
	case classDrained:
		return outcome{act: actGiveBack}
	case classCapacity:
		return decideCapacity(in)
	case classTransient:
		if in.stateErr {
			return outcome{act: actNak, delay: stateErrDelay}
		}
		if in.transientErrors >= in.maxAttempts {
			return outcome{act: actFinal, err: &wire.Error{Reason: wire.ReasonRetryExhausted, Message: c.message,
				Details: map[string]any{"status_code": c.status, "attempts": in.transientErrors}}}
		}
		backoff := in.transientBackoff << min(in.transientErrors-1, 5)
		return outcome{act: actNak, delay: jitterBy(min(backoff, transientCap), in.rand)}
	case classDeployment:
		// Not a row's fault: the deployment is paused and the job waits.
		return outcome{act: actNak, delay: in.deploymentPause, record: true}
	case classAnswer:
		// Asked again, through the queue, while re-asks are left: the count is in the
		// retry state (durable across a crash), the next delivery makes the call.
		if in.stateErr {
			return outcome{act: actNak, delay: stateErrDelay}
		}
		if in.answerErrors <= in.maxAnswer {
			return outcome{act: actNak, reask: true}
		}
		return permanent(c)
	case classPermanent:
		return permanent(c)
	}
	return outcome{act: actNak, delay: unclassifiedDelay, record: true}
}

// permanent fails the query with the call's reason and its details.
func permanent(c *callResult) outcome {
	details := map[string]any{}
	if c.field != "" {
		details["field"] = c.field
	}
	if c.status != 0 {
		details["status_code"] = c.status
	}
	return outcome{act: actFinal, err: &wire.Error{Reason: c.reason, Message: c.message, Details: details}}
}

// decideCapacity: within the budget, NAK no sooner than Retry-After (and the pause
// left), capped at maxNakDelay and the budget left; past it, capacity_retry_timeout.
func decideCapacity(in outcomeInput) outcome {
	c := in.call
	if in.stateErr {
		return outcome{act: actNak, delay: stateErrDelay}
	}
	budget, elapsed := in.capacityBudget, in.capacityElapsed
	if elapsed >= budget {
		return outcome{act: actFinal, err: &wire.Error{Reason: wire.ReasonCapacityTimeout, Message: c.message, Details: map[string]any{
			"status_code": c.status, "elapsed": elapsed.Seconds(), "max": budget.Seconds(), "capacity_errors": in.capacityErrors,
		}}}
	}
	if in.naive {
		return outcome{act: actNak, delay: min(NaiveNakDelay, budget-elapsed+budgetSlack)}
	}
	// Never before Retry-After: jitter only lengthens the delay.
	delay := max(c.retryAfter, minCapacityDelay, in.pausedFor)
	delay = time.Duration(float64(delay) * (1 + 0.2*in.rand))
	return outcome{act: actNak, delay: min(delay, in.maxNakDelay, budget-elapsed+budgetSlack)}
}

// classify reads a call's outcome off its error (nil: the answer parsed). drained: the
// worker's context ended meanwhile, whatever the call came to.
func classify(drained bool, err error) callResult {
	switch {
	case drained:
		return callResult{class: classDrained}
	case err == nil:
		return callResult{class: classOK}
	}
	return classifyError(err)
}

// classifyError is classify of a call that failed; apart, so that a success does not
// allocate the four targets of errors.As.
func classifyError(err error) callResult {
	var (
		capErr  *llm.CapacityError
		tranErr *llm.TransientError
		depErr  *llm.DeploymentError
		permErr *llm.PermanentError
	)
	switch {
	case errors.As(err, &capErr):
		return callResult{class: classCapacity, status: capErr.StatusCode, message: capErr.Message, retryAfter: capErr.RetryAfter}
	case errors.As(err, &tranErr):
		return callResult{class: classTransient, status: tranErr.StatusCode, message: tranErr.Message}
	case errors.As(err, &depErr):
		return callResult{class: classDeployment, status: depErr.StatusCode, message: depErr.Message}
	case errors.As(err, &permErr) && isAnswerReason(permErr.Reason):
		return callResult{class: classAnswer, reason: permErr.Reason, status: permErr.StatusCode, field: permErr.Field, message: permErr.Message}
	case errors.As(err, &permErr):
		return callResult{class: classPermanent, reason: permErr.Reason, status: permErr.StatusCode, field: permErr.Field, message: permErr.Message}
	}
	return callResult{class: classUnclassified, message: err.Error()}
}

// isAnswerReason reports whether a reason says the answer came back but is not usable:
// the reasons llm.ParseAnswer gives, which asking again may mend.
func isAnswerReason(reason string) bool {
	switch reason {
	case wire.ReasonInvalidJSON, wire.ReasonMissingField, wire.ReasonTypeMismatch:
		return true
	}
	return false
}

// jitterBy multiplies d by 0.8 + 0.4r: U(0.8, 1.2) for r drawn from U(0, 1).
func jitterBy(d time.Duration, r float64) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*r))
}
