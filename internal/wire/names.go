package wire

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// BucketLease is the KV bucket of the collectors' single-active lease (package lease).
const BucketLease = "mq_lease"

// MaxPrefixLen bounds a prefix, so that every name derived from it stays short.
const MaxPrefixLen = 32

// reservedPrefixes are the first tokens of the default subjects: a deployment with one
// of them as its prefix would publish into the default deployment's streams
// ("jobs.input.>" lies under "jobs.>").
var reservedPrefixes = []string{"input", "jobs", "results", "rows", "audit", "dead", "submit", "status", "mq"}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

// ValidatePrefix checks a deployment prefix: empty (the default names), or 1 to
// MaxPrefixLen letters, digits, '_' and '-' starting with a letter or a digit (one
// subject token, never a wildcard, '$' or '_INBOX'), and none of the default subjects'
// first tokens (input, jobs, results, rows, audit, dead, submit, status, mq).
func ValidatePrefix(prefix string) error {
	switch {
	case prefix == "":
		return nil
	case len(prefix) > MaxPrefixLen:
		return fmt.Errorf("prefix %q: longer than %d characters", prefix, MaxPrefixLen)
	case !prefixRE.MatchString(prefix):
		return fmt.Errorf("prefix %q: use letters, digits, '_' and '-', starting with a letter or a digit (no '.', '*', '>' or spaces)", prefix)
	case slices.Contains(reservedPrefixes, prefix):
		return fmt.Errorf("prefix %q: reserved (the default names' subjects start with %s)", prefix, strings.Join(reservedPrefixes, ", "))
	}
	return nil
}

// Names derives the name of every stream, subject, KV bucket and object store of one
// multiquery deployment from its prefix, so that several deployments (and other
// applications) share one NATS account. The zero value, the empty prefix, gives the
// names this package's constants and subject builders spell out (docs/WIRE.md); a
// prefix p gives the streams and buckets "p_<name>" (p_MQ_JOBS, p_mq_runs) and the
// subjects "p.<subject>" (p.jobs.<deployment>.<run>.<row>.<query>). Consumer names,
// KV keys and message ids do not change: they live inside the prefixed streams and
// buckets. Every process of a deployment must use the same Names.
type Names struct{ prefix string }

// NewNames returns the names of the deployment with this prefix (ValidatePrefix).
func NewNames(prefix string) (Names, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return Names{}, err
	}
	return Names{prefix: prefix}, nil
}

// MustNames is NewNames for a prefix known to be valid (tests, constants); it panics
// on an invalid one.
func MustNames(prefix string) Names {
	n, err := NewNames(prefix)
	if err != nil {
		panic(err)
	}
	return n
}

// Prefix returns the prefix ("" for the default names).
func (n Names) Prefix() string { return n.prefix }

// String returns the prefix, or "(none)".
func (n Names) String() string {
	if n.prefix == "" {
		return "(none)"
	}
	return n.prefix
}

// name prefixes a stream or bucket name: "<prefix>_<base>".
func (n Names) name(base string) string {
	if n.prefix == "" {
		return base
	}
	return n.prefix + "_" + base
}

// subject prefixes a subject (or a filter): "<prefix>.<subject>".
func (n Names) subject(s string) string {
	if n.prefix == "" {
		return s
	}
	return n.prefix + "." + s
}

// trim removes the prefix token from a subject; ok is false when it lacks it.
func (n Names) trim(s string) (string, bool) {
	if n.prefix == "" {
		return s, true
	}
	return strings.CutPrefix(s, n.prefix+".")
}

// Streams.

// StreamInput is the stream of run records and input rows (StreamInput).
func (n Names) StreamInput() string { return n.name(StreamInput) }

// StreamJobs is the work queue of query jobs (StreamJobs).
func (n Names) StreamJobs() string { return n.name(StreamJobs) }

// StreamResults is the stream of final results (StreamResults).
func (n Names) StreamResults() string { return n.name(StreamResults) }

// StreamRows is the stream of emitted rows (StreamRows).
func (n Names) StreamRows() string { return n.name(StreamRows) }

// StreamAudit is the stream of audit records (StreamAudit).
func (n Names) StreamAudit() string { return n.name(StreamAudit) }

// StreamDead is the stream of dead letters (StreamDead).
func (n Names) StreamDead() string { return n.name(StreamDead) }

// StreamSubmit is the work queue of submitted runs (StreamSubmit).
func (n Names) StreamSubmit() string { return n.name(StreamSubmit) }

// StreamAdvisories is the stream of the jobs stream's MaxDeliver advisories
// (StreamAdvisories).
func (n Names) StreamAdvisories() string { return n.name(StreamAdvisories) }

// Streams lists every stream name, in the order of the constants above.
func (n Names) Streams() []string {
	return []string{n.StreamInput(), n.StreamJobs(), n.StreamResults(), n.StreamRows(),
		n.StreamAudit(), n.StreamDead(), n.StreamSubmit(), n.StreamAdvisories()}
}

// Buckets.

// BucketRetry is the KV bucket of per-job retry state (BucketRetry).
func (n Names) BucketRetry() string { return n.name(BucketRetry) }

// BucketRuns is the KV bucket of run records (BucketRuns).
func (n Names) BucketRuns() string { return n.name(BucketRuns) }

// BucketFleet is the KV bucket of served deployment aliases (BucketFleet).
func (n Names) BucketFleet() string { return n.name(BucketFleet) }

// BucketThrottle is the KV bucket of learned rates (BucketThrottle).
func (n Names) BucketThrottle() string { return n.name(BucketThrottle) }

// BucketCache is the KV bucket of the prompt cache (BucketCache).
func (n Names) BucketCache() string { return n.name(BucketCache) }

// BucketLease is the KV bucket of the collector lease (BucketLease).
func (n Names) BucketLease() string { return n.name(BucketLease) }

// BucketResults is the object store of completed runs' files (BucketResults).
func (n Names) BucketResults() string { return n.name(BucketResults) }

// Buckets lists every KV bucket and object store name.
func (n Names) Buckets() []string {
	return []string{n.BucketRetry(), n.BucketRuns(), n.BucketFleet(), n.BucketThrottle(),
		n.BucketLease(), n.BucketCache(), n.BucketResults()}
}

// Subjects captured by the streams.

// InputSubjects are the input stream's subjects: "input.>".
func (n Names) InputSubjects() string { return n.subject("input.>") }

// JobSubjects are the jobs stream's subjects: "jobs.>".
func (n Names) JobSubjects() string { return n.subject("jobs.>") }

// ResultSubjects are the results stream's subjects: "results.>".
func (n Names) ResultSubjects() string { return n.subject("results.>") }

// RowSubjects are the rows stream's subjects: "rows.>".
func (n Names) RowSubjects() string { return n.subject("rows.>") }

// AuditSubjects are the audit stream's subjects: "audit.>".
func (n Names) AuditSubjects() string { return n.subject("audit.>") }

// DeadSubjects are the dead-letter stream's subjects: "dead.>".
func (n Names) DeadSubjects() string { return n.subject("dead.>") }

// SubmitSubjects are the submit stream's subjects: "submit.>".
func (n Names) SubmitSubjects() string { return n.subject("submit.>") }

// MaxDeliveriesAdvisories is the server's subject of MaxDeliver advisories of the jobs
// stream (MaxDeliveriesAdvisories): the server names the stream in it.
func (n Names) MaxDeliveriesAdvisories() string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + n.StreamJobs() + ".>"
}

// ThrottleSubjects are the fleet throttle's core NATS subjects: "mq.throttle.>".
func (n Names) ThrottleSubjects() string { return n.subject(throttleRoot + ">") }

// Subject builders (the package functions of the same names, prefixed).

// InputOpenSubject is InputOpenSubject with the prefix.
func (n Names) InputOpenSubject(run string) string { return n.subject(InputOpenSubject(run)) }

// InputSealSubject is InputSealSubject with the prefix.
func (n Names) InputSealSubject(run string) string { return n.subject(InputSealSubject(run)) }

// InputRowSubject is InputRowSubject with the prefix.
func (n Names) InputRowSubject(run string, row int) string {
	return n.subject(InputRowSubject(run, row))
}

// JobSubject is JobSubject with the prefix.
func (n Names) JobSubject(deployment, run string, row int, query string) string {
	return n.subject(JobSubject(deployment, run, row, query))
}

// JobFilter is JobFilter with the prefix.
func (n Names) JobFilter(deployment string) string { return n.subject(JobFilter(deployment)) }

// ResultSubject is ResultSubject with the prefix.
func (n Names) ResultSubject(run string, row int, query string) string {
	return n.subject(ResultSubject(run, row, query))
}

// RowSubject is RowSubject with the prefix.
func (n Names) RowSubject(run string, row int) string { return n.subject(RowSubject(run, row)) }

// StatusSubject is StatusSubject with the prefix: where a run's submission events go.
func (n Names) StatusSubject(run string) string { return n.subject(StatusSubject(run)) }

// StatusFilter is StatusFilter with the prefix.
func (n Names) StatusFilter() string { return n.subject(StatusFilter) }

// AuditSubject is AuditSubject with the prefix.
func (n Names) AuditSubject(run string) string { return n.subject(AuditSubject(run)) }

// DeadSubject is DeadSubject with the prefix.
func (n Names) DeadSubject(deployment, run string) string {
	return n.subject(DeadSubject(deployment, run))
}

// SubmitOpenSubject is SubmitOpenSubject with the prefix.
func (n Names) SubmitOpenSubject(pipeline, run string) string {
	return n.subject(SubmitOpenSubject(pipeline, run))
}

// SubmitRowSubject is SubmitRowSubject with the prefix.
func (n Names) SubmitRowSubject(pipeline, run string, row int) string {
	return n.subject(SubmitRowSubject(pipeline, run, row))
}

// SubmitSealSubject is SubmitSealSubject with the prefix.
func (n Names) SubmitSealSubject(pipeline, run string) string {
	return n.subject(SubmitSealSubject(pipeline, run))
}

// ThrottleSignalSubject is ThrottleSignalSubject with the prefix.
func (n Names) ThrottleSignalSubject(alias string) string {
	return n.subject(ThrottleSignalSubject(alias))
}

// ThrottleHeartbeatSubject is ThrottleHeartbeatSubject with the prefix.
func (n Names) ThrottleHeartbeatSubject(alias string) string {
	return n.subject(ThrottleHeartbeatSubject(alias))
}

// Filters over one run.

// InputOpenFilter matches every run's open record: "input.*.open".
func (n Names) InputOpenFilter() string { return n.subject("input.*.open") }

// InputRunFilter matches a run's records and rows: "input.<run>.>".
func (n Names) InputRunFilter(run string) string { return n.subject("input." + run + ".>") }

// ResultRunFilter matches a run's results: "results.<run>.>".
func (n Names) ResultRunFilter(run string) string { return n.subject("results." + run + ".>") }

// JobRunFilter matches a run's jobs for every deployment: "jobs.*.<run>.>".
func (n Names) JobRunFilter(run string) string { return n.subject("jobs.*." + run + ".>") }

// JobDeploymentRunFilter matches a run's jobs for one deployment:
// "jobs.<deployment>.<run>.>".
func (n Names) JobDeploymentRunFilter(deployment, run string) string {
	return n.subject("jobs." + deployment + "." + run + ".>")
}

// SubmitRunFilter matches a submitted run's records: "submit.*.<run>.>".
func (n Names) SubmitRunFilter(run string) string { return n.subject("submit.*." + run + ".>") }

// Parsers (the package functions of the same names, for prefixed subjects).

// errNoPrefix is the error of a subject outside the deployment's prefix.
func (n Names) errNoPrefix(subject string) error {
	return fmt.Errorf("subject %q: %w %q", subject, ErrOtherPrefix, n.prefix)
}

// ErrOtherPrefix marks a subject that does not start with the deployment's prefix.
var ErrOtherPrefix = errors.New("does not start with the prefix")

// ParseInputSubject is ParseInputSubject for a subject with the prefix.
func (n Names) ParseInputSubject(subject string) (run string, kind InputKind, row int, err error) {
	s, ok := n.trim(subject)
	if !ok {
		return "", InputUnknown, 0, n.errNoPrefix(subject)
	}
	return ParseInputSubject(s)
}

// ParseJobSubject is ParseJobSubject for a subject with the prefix.
func (n Names) ParseJobSubject(subject string) (deployment string, a Addr, err error) {
	s, ok := n.trim(subject)
	if !ok {
		return "", Addr{}, n.errNoPrefix(subject)
	}
	return ParseJobSubject(s)
}

// ParseResultSubject is ParseResultSubject for a subject with the prefix.
func (n Names) ParseResultSubject(subject string) (Addr, error) {
	s, ok := n.trim(subject)
	if !ok {
		return Addr{}, n.errNoPrefix(subject)
	}
	return ParseResultSubject(s)
}

// ParseSubmitSubject is ParseSubmitSubject for a subject with the prefix.
func (n Names) ParseSubmitSubject(subject string) (pipeline, run string, kind InputKind, row int, err error) {
	s, ok := n.trim(subject)
	if !ok {
		return "", "", InputUnknown, 0, n.errNoPrefix(subject)
	}
	return ParseSubmitSubject(s)
}

// Kind is a subject's kind, its first token after the prefix: "jobs", "input",
// "results"... (a metrics label that is the same in every deployment).
func (n Names) Kind(subject string) string {
	s, _ := n.trim(subject)
	kind, _, _ := strings.Cut(s, ".")
	return kind
}
