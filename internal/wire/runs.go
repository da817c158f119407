package wire

import (
	"strings"
	"time"
)

// The records of a run kept in the runs bucket (BucketRuns), beside the streams:
// the collector's run status, the producer's checkpoint, the run's control record and
// the deployments' breakers (docs/WIRE.md, "Key-value buckets" and "Run status"). Each
// has one writer; every process that reads one decodes it with the type below.

// Run status states (RunStatus.State).
const (
	RunOpen      = "open"      // no seal seen yet
	RunSealed    = "sealed"    // the seal is seen, rows are still out
	RunCompleted = "completed" // every row is written; the run is finished
)

// RunStatus is the run progress the collector publishes in the runs bucket under the
// run id itself (docs/WIRE.md, "Run status"); the only key of a run kept after it
// finished. Written by the collector only, by compare-and-set on its revision, after
// each checkpoint. Read by the producer (flow control on Emitted, refusing a finished
// run id), the producer service (flow control on Next), deadletter (a replay of a row
// already written is refused), status (mqctl status, and WaitRun for producer --wait).
type RunStatus struct {
	Run     string `json:"run"`
	State   string `json:"state"` // RunOpen | RunSealed | RunCompleted
	Total   int    `json:"rows_total"`
	Emitted int    `json:"rows_emitted"`
	OK      int    `json:"rows_ok"`
	Failed  int    `json:"rows_failed"`
	Next    int    `json:"watermark"` // every row below has been emitted
	OutDir  string `json:"out_dir"`
	// Deployments and Started come from the open record (for status and ETA).
	Deployments []string  `json:"deployments"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	Finished    bool      `json:"finished"`
	// Stored says the run's output files are in BucketResults. The collector stores
	// them before it writes Finished, and writes both together; a collector with
	// storing off (collector --store-results=false) leaves it false.
	Stored bool `json:"stored,omitempty"`
	// LeaseEpoch is the epoch of the collector lease it was written under.
	LeaseEpoch uint64 `json:"lease_epoch,omitempty"`
	// Attempt is the number of resubmissions merged into the run's files (mqctl
	// resubmit); the counts above are then those of the merged files.
	Attempt int `json:"attempt,omitempty"`
}

// ProducerCheckpoint is the producer's resume point in the runs bucket under
// ProducerCheckpointKey(run): rows 0..Through-1 are on the bus, all acknowledged.
// Written by the producer (the file producer every 2048/(M+1) rows by default and at
// the end, the producer service after each batch of submitted records, with Through
// only). Read by the
// producer resuming a run (Through, RowsSHA256, ConfigHash) and by status (Through and
// Updated: published rows, and a stalled run's last progress).
type ProducerCheckpoint struct {
	Through    int       `json:"published_through"`
	RowsSHA256 string    `json:"rows_sha256"` // rolling hash of rows 0..Through-1
	ConfigHash string    `json:"config_hash"`
	Updated    time.Time `json:"updated"`
}

// ProducerCheckpointKey is the runs-bucket key of a run's producer checkpoint.
func ProducerCheckpointKey(run string) string { return run + ".producer" }

// Run control states (Control.State).
const (
	ControlRunning   = "running"
	ControlPaused    = "paused"
	ControlCancelled = "cancelled"
)

// Control is a run's control record in the runs bucket under ControlKey(run).
// Written by mqctl pause/resume/cancel (status.SetControl; a cancelled run stays
// cancelled). Read by the workers (watched under ControlKeyFilter: a paused run's jobs
// wait, a cancelled run's fail with ReasonCancelled), the producer and the producer
// service (paused holds publishing, cancelled stops it) and status.
type Control struct {
	State   string    `json:"state"` // ControlRunning | ControlPaused | ControlCancelled
	Updated time.Time `json:"updated"`
}

const controlSuffix = ".control"

// ControlKey is the runs-bucket key of a run's control record.
func ControlKey(run string) string { return run + controlSuffix }

// ControlKeyFilter matches the control keys of every run (a KV watch filter).
const ControlKeyFilter = "*" + controlSuffix

// ParseControlKey returns the run of a control key; ok is false for any other key.
func ParseControlKey(key string) (run string, ok bool) {
	return strings.CutSuffix(key, controlSuffix)
}

// BreakerOpen is the state of a breaker record (present only while open).
const BreakerOpen = "open"

// Breaker is a deployment's circuit breaker record in the runs bucket under
// BreakerKey(alias): present while the deployment answers with deployment-wide errors
// (the runs naming it show blocked). Written, and deleted after a successful call, by
// the workers. Read by the workers (watched under BreakerKeyFilter) and by status.
// Its reason is sanitized: status, the provider's code and type, and a message with
// anything key-like redacted (providers echo the offered key, masked).
type Breaker struct {
	State   string    `json:"state"` // BreakerOpen
	Status  int       `json:"status"`
	Code    string    `json:"code,omitempty"`
	Type    string    `json:"type,omitempty"`
	Message string    `json:"message"`
	Since   time.Time `json:"since"`
	Worker  string    `json:"worker"`
}

const breakerPrefix = "breaker."

// BreakerKey is the runs-bucket key of a deployment's breaker.
func BreakerKey(alias string) string { return breakerPrefix + alias }

// BreakerKeyFilter matches the breaker keys of every deployment (a KV watch filter).
const BreakerKeyFilter = breakerPrefix + "*"

// ParseBreakerKey returns the deployment alias of a breaker key; ok is false for any
// other key.
func ParseBreakerKey(key string) (alias string, ok bool) {
	return strings.CutPrefix(key, breakerPrefix)
}
