package wire

import (
	"strings"
	"time"
)

// What the producer service tells a submitter about a submitted run (docs/WIRE.md,
// "Submitting a run to the producer service"): every outcome is published as a
// SubmitEvent on StatusSubject(run), and the run's submission state is kept in the runs
// bucket under SubmissionKey(run) until the run finishes.

// Submission states (Submission.State, SubmitEvent.State). A run goes accepted, then
// sealed, then completed; or it is rejected. RowRejected is an event only: one row of
// an accepted run became an error row (its reason and field say why).
const (
	SubmitAccepted    = "accepted"     // the open record is on the bus
	SubmitRejected    = "rejected"     // nothing of the record was published (Reason)
	SubmitRowRejected = "row_rejected" // a row became an error row; the run goes on
	SubmitSealed      = "sealed"       // the seal is on the bus: the run has Rows rows
	SubmitCompleted   = "completed"    // the collector has written every row (event only)
)

// SubmitEvent is one outcome of a submitted run, published on StatusSubject(run) as a
// core NATS message: by the producer service (accepted, rejected, row_rejected,
// sealed) and by the collector (completed, for every run). A submitter subscribes
// before it submits; events are not stored (the runs bucket keeps the state).
type SubmitEvent struct {
	V        int    `json:"v"`
	Run      string `json:"run"`
	Pipeline string `json:"pipeline,omitempty"`
	State    string `json:"state"`
	// Reason and Message say why a record or a row was rejected; Subject is the
	// submitted record's subject, Row and Field the row and column at fault (when known).
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	Subject string `json:"subject,omitempty"`
	Row     *int   `json:"row,omitempty"`
	Field   string `json:"field,omitempty"`
	// Rows is the run's row count (sealed, completed); RowsOK and RowsFailed what the
	// collector wrote (completed).
	Rows       int       `json:"rows,omitempty"`
	RowsOK     int       `json:"rows_ok,omitempty"`
	RowsFailed int       `json:"rows_failed,omitempty"`
	Time       time.Time `json:"time"`
}

// Submission is a submitted run's state in the runs bucket under SubmissionKey(run).
// Written by the producer service only (created at the run's open record, updated by
// compare-and-set); read by the service (a reused run id is refused) and by status
// (mqctl status). Purged with the run's other keys when the run finishes, after which
// the run's status says completed. A rejected run's record stays until the run id is
// submitted again.
type Submission struct {
	State    string `json:"state"` // SubmitAccepted | SubmitRejected | SubmitSealed
	Pipeline string `json:"pipeline"`
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message,omitempty"`
	// OpenSeq is the MQ_SUBMIT sequence of the open record that was accepted: a
	// redelivery of it is the same submission, any other open record of the run a reuse.
	OpenSeq uint64 `json:"open_seq,omitempty"`
	// Rows is the sealed row count (sealed); RowErrors the first few rows that became
	// error rows at the service (row_rejected events), one per row.
	Rows      int           `json:"rows,omitempty"`
	RowErrors []SubmitEvent `json:"row_errors,omitempty"`
	Updated   time.Time     `json:"updated"`
}

// MaxRowErrors is how many row errors a Submission keeps.
const MaxRowErrors = 10

const submissionSuffix = ".submission"

// SubmissionKey is the runs-bucket key of a submitted run's state.
func SubmissionKey(run string) string { return run + submissionSuffix }

// ParseSubmissionKey returns the run of a submission key; ok is false for any other key.
func ParseSubmissionKey(key string) (run string, ok bool) {
	return strings.CutSuffix(key, submissionSuffix)
}

// StatusSubject is where a run's SubmitEvents are published (core NATS, no stream).
func StatusSubject(run string) string { return "status." + run }

// StatusFilter matches the events of every run.
const StatusFilter = "status.>"

// HeaderReplyTo, on a submitted open or seal record, names an inbox (a subject under
// "_INBOX.") where the service also publishes that record's outcome (accepted or
// rejected, sealed or rejected). A request to a stream subject gets the stream's
// ack, not the outcome: this is how a submitter gets a reply.
const HeaderReplyTo = "Mq-Reply-To"
