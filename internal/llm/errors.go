package llm

import (
	"fmt"
	"time"
)

// CapacityError is a provider over capacity (429 quota-per-minute, 503, 529): retry later,
// no sooner than RetryAfter when the provider said so.
type CapacityError struct {
	StatusCode int
	RetryAfter time.Duration // 0 when the provider gave no hint
	// BudgetSpent: the answer's x-ratelimit-remaining-requests or -tokens header reads 0,
	// so this is the rate limit speaking (OpenAI, Azure and llmsim's limiter send them),
	// not a busy backend. The throttle takes such a 429 as pressure on its own.
	BudgetSpent bool
	Message     string
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("capacity: status %d (retry after %s): %s", e.StatusCode, e.RetryAfter, e.Message)
}

// TransientError is a failure worth a bounded number of retries with backoff: other 5xx,
// timeouts, connection errors, a 200 whose body is not a chat completion.
type TransientError struct {
	StatusCode int // 0 when no HTTP status was received
	Message    string
}

func (e *TransientError) Error() string {
	return fmt.Sprintf("transient: status %d: %s", e.StatusCode, e.Message)
}

// DeploymentError concerns the whole deployment, not one row (401, 403, 404,
// insufficient_quota): the deployment is paused, no row is failed for it.
type DeploymentError struct {
	StatusCode int
	Code       string
	Type       string
	Message    string // redacted: safe to store and log
}

func (e *DeploymentError) Error() string {
	return fmt.Sprintf("deployment: status %d %s: %s", e.StatusCode, e.Code, e.Message)
}

// PermanentError will not get better by retrying: Reason is one of the wire.Reason* values.
type PermanentError struct {
	Reason     string
	StatusCode int
	Field      string // the output field concerned, if any
	Message    string
}

func (e *PermanentError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: field %q: %s", e.Reason, e.Field, e.Message)
	}
	return e.Reason + ": " + e.Message
}
