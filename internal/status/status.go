// Package status owns the reading of a run's records: the operator's view of a run,
// assembled from what the processes publish (the collector's progress, the producer's
// checkpoint, the run's control record, the deployments' breakers, the queue and the
// fleet throttle), waiting for a run to finish (WaitRun), and the control record mqctl
// writes (SetControl). The records themselves are the wire contract (package wire).
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/wire"
)

// StalledAfter is how long an unsealed run may go without producer progress before it
// is reported stalled.
const StalledAfter = 2 * time.Minute

// Report is a run's status.
type Report struct {
	Run         string              `json:"run"`
	State       string              `json:"state"` // open | sealed | completed | paused | cancelled | blocked | stalled | rejected
	Reason      string              `json:"reason,omitempty"`
	RowsTotal   int                 `json:"rows_total,omitempty"` // known once sealed
	Published   int                 `json:"rows_published"`
	Emitted     int                 `json:"rows_emitted"`
	OK          int                 `json:"rows_ok"`
	Failed      int                 `json:"rows_failed"`
	OldestOpen  int                 `json:"oldest_incomplete_row"`
	JobsQueued  int                 `json:"queries_queued"`
	JobsInRetry int                 `json:"queries_in_retry"`
	Throttle    map[string]Throttle `json:"throttle,omitempty"`
	RowsPerSec  float64             `json:"rows_per_second"`
	ETA         string              `json:"eta,omitempty"`
	OutDir      string              `json:"out_dir,omitempty"`
	Stored      bool                `json:"stored,omitempty"`  // its files are in the results bucket (mqctl get)
	Attempt     int                 `json:"attempt,omitempty"` // resubmissions merged into its files (mqctl resubmit)
	// ResultsBucket names that bucket when Stored (the deployment's BucketResults).
	ResultsBucket string    `json:"results_bucket,omitempty"`
	Deployments   []string  `json:"deployments,omitempty"`
	ProducerSeen  time.Time `json:"producer_checkpoint,omitzero"`
	// Submission is the producer service's record of a submitted run (accepted,
	// sealed or rejected, and its first rejected rows); absent for other runs and
	// once the run has finished.
	Submission *wire.Submission `json:"submission,omitempty"`
}

// Throttle is the fleet throttle of one deployment as its heartbeats show it.
type Throttle struct {
	FleetRate float64 `json:"fleet_rate"`
	Members   int     `json:"workers"`
	Breaker   string  `json:"breaker,omitempty"`
	// Source is what the fleet rate rests on (headers | learned | probing), Ceiling the
	// rate the provider's rate-limit headers allow (0: not stated).
	Source  string  `json:"source,omitempty"`
	Ceiling float64 `json:"ceiling,omitempty"`
	// Learned is the deployment's remembered rate (KV mq_throttle), LearnedAge its age.
	Learned    float64 `json:"learned_rate,omitempty"`
	LearnedAge string  `json:"learned_age,omitempty"`
}

// Get assembles a run's status from the deployment's streams and buckets (names).
// listen is how long to collect throttle heartbeats.
func Get(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, names wire.Names, run string, listen time.Duration) (Report, error) {
	r := Report{Run: run, State: wire.RunOpen, Throttle: map[string]Throttle{}}
	runs, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil {
		return r, fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	found := false
	var emittedAt time.Time // the collector's last progress of the run
	if e, err := runs.Get(ctx, run); err == nil {
		found = true
		var st wire.RunStatus
		if err := json.Unmarshal(e.Value(), &st); err == nil {
			emittedAt = latest(st.Started, st.Updated)
			r.State, r.RowsTotal, r.Emitted, r.OK, r.Failed, r.OldestOpen, r.OutDir, r.Deployments, r.Stored =
				st.State, st.Total, st.Emitted, st.OK, st.Failed, st.Next, st.OutDir, st.Deployments, st.Stored
			r.Attempt = st.Attempt
			if st.Stored {
				r.ResultsBucket = names.BucketResults()
			}
			if el := time.Since(st.Started).Seconds(); el > 0 && st.Emitted > 0 {
				r.RowsPerSec = float64(st.Emitted) / el
			}
		}
	}
	if e, err := runs.Get(ctx, wire.ProducerCheckpointKey(run)); err == nil {
		found = true
		var cp wire.ProducerCheckpoint
		if json.Unmarshal(e.Value(), &cp) == nil {
			r.Published, r.ProducerSeen = cp.Through, cp.Updated
		}
	}
	if e, err := runs.Get(ctx, wire.SubmissionKey(run)); err == nil {
		var sub wire.Submission
		if json.Unmarshal(e.Value(), &sub) == nil {
			r.Submission = &sub
			if !found && sub.State == wire.SubmitRejected {
				r.State, r.Reason = wire.SubmitRejected, sub.Reason+": "+sub.Message
			}
			found = true
		}
	}
	if !found {
		return r, fmt.Errorf("run %s: no status (unknown run, or nothing written yet)", run)
	}
	// The checkpoint lags the rows published, and a row is emitted only once published.
	r.Published = max(r.Published, r.RowsTotal, r.Emitted)
	if s, err := js.Stream(ctx, names.StreamJobs()); err == nil {
		if info, err := s.Info(ctx, jetstream.WithSubjectFilter(names.JobRunFilter(run))); err == nil {
			for _, n := range info.State.Subjects {
				r.JobsQueued += int(n)
			}
		}
	}
	if kv, err := js.KeyValue(ctx, names.BucketRetry()); err == nil {
		if keys, err := kv.ListKeysFiltered(ctx, run+".>"); err == nil {
			for range keys.Keys() {
				r.JobsInRetry++
			}
		}
	}
	blocked := ""
	for _, dep := range r.Deployments {
		t := heartbeats(ctx, nc, names, dep, listen)
		if b, ok := OpenBreaker(ctx, runs, dep); ok {
			t.Breaker = fmt.Sprintf("open since %s: status %d %s: %s", b.Since.Format(time.RFC3339), b.Status, b.Code, b.Message)
			blocked = BlockedReason(dep, b)
		}
		learned(ctx, js, names, dep, &t)
		r.Throttle[dep] = t
	}
	var ctl wire.Control
	if e, err := runs.Get(ctx, wire.ControlKey(run)); err == nil && json.Unmarshal(e.Value(), &ctl) == nil {
		switch ctl.State {
		case wire.ControlPaused, wire.ControlCancelled:
			if r.State != wire.RunCompleted {
				r.State = ctl.State
			}
		}
	}
	switch {
	case r.State == wire.RunCompleted || r.State == wire.ControlCancelled || r.State == wire.ControlPaused || r.State == wire.SubmitRejected:
	case blocked != "":
		r.State, r.Reason = "blocked", blocked
	case r.State == wire.RunOpen:
		if reason := stalled(r, emittedAt); reason != "" {
			r.State, r.Reason = "stalled", reason
		}
	}
	r.ETA = eta(r)
	return r, nil
}

// stalled says why an open run is stalled, or "" when it is not: its producer's
// checkpoint is older than StalledAfter or, before its first checkpoint (the file
// producer writes one every 2048/(M+1) rows), so is the collector's last progress of
// the run (emittedAt: its rows are emitted only once published).
func stalled(r Report, emittedAt time.Time) string {
	switch {
	case !r.ProducerSeen.IsZero() && time.Since(r.ProducerSeen) > StalledAfter:
		return fmt.Sprintf("unsealed, and its producer has published nothing since %s", r.ProducerSeen.Format(time.RFC3339))
	case r.ProducerSeen.IsZero() && !emittedAt.IsZero() && time.Since(emittedAt) > StalledAfter:
		return fmt.Sprintf("unsealed, its producer has written no checkpoint, and no row has been emitted since %s", emittedAt.Format(time.RFC3339))
	}
	return ""
}

// eta is the time the run takes, at its pace so far, to emit the rows published (all
// of them once sealed) and not emitted yet; "" when it cannot be told: no pace yet, a
// run that is not going (completed, paused, cancelled, blocked, stalled), or counts that
// do not add up (never a negative ETA).
func eta(r Report) string {
	left := max(r.RowsTotal, r.Published) - r.Emitted
	if r.RowsPerSec <= 0 || (r.State != wire.RunOpen && r.State != wire.RunSealed) || left < 0 {
		return ""
	}
	return (time.Duration(float64(left)/r.RowsPerSec) * time.Second).Round(time.Second).String()
}

// latest is the later of two times.
func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// OpenBreaker reads deployment dep's breaker record from the runs bucket; ok is false
// while the breaker is closed (no record) or the record cannot be read.
func OpenBreaker(ctx context.Context, runs jetstream.KeyValue, dep string) (b wire.Breaker, ok bool) {
	e, err := runs.Get(ctx, wire.BreakerKey(dep))
	if err != nil {
		return b, false
	}
	return b, json.Unmarshal(e.Value(), &b) == nil
}

// BlockedReason says why a run on deployment dep waits while its breaker b is open.
func BlockedReason(dep string, b wire.Breaker) string {
	return fmt.Sprintf("deployment %s: status %d %s: %s", dep, b.Status, b.Code, b.Message)
}

// learned adds the deployment's remembered rate, if any.
func learned(ctx context.Context, js jetstream.JetStream, names wire.Names, dep string, t *Throttle) {
	kv, err := js.KeyValue(ctx, names.BucketThrottle())
	if err != nil {
		return
	}
	e, err := kv.Get(ctx, dep)
	if err != nil {
		return
	}
	var l wire.LearnedRate
	if json.Unmarshal(e.Value(), &l) == nil && l.Rate > 0 {
		t.Learned = l.Rate
		t.LearnedAge = time.Since(l.Learned).Round(time.Second).String()
	}
}

// heartbeats listens to a deployment's throttle heartbeats for d.
func heartbeats(ctx context.Context, nc *nats.Conn, names wire.Names, dep string, d time.Duration) Throttle {
	var (
		mu      sync.Mutex
		source  string
		ceiling float64
	)
	members := map[string]float64{}
	sub, err := nc.Subscribe(names.ThrottleHeartbeatSubject(dep), func(m *nats.Msg) {
		var hb struct {
			Member  string  `json:"member"`
			Rate    float64 `json:"rate"`
			Source  string  `json:"source"`
			Ceiling float64 `json:"ceiling"`
			Leaving bool    `json:"leaving"`
		}
		if json.Unmarshal(m.Data, &hb) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if hb.Leaving { // it stops: the fleet drops it at once (throttle.Fleet), so do we
			delete(members, hb.Member)
			return
		}
		members[hb.Member] = hb.Rate
		source, ceiling = hb.Source, max(ceiling, hb.Ceiling)
	})
	if err != nil {
		return Throttle{}
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	_ = sub.Unsubscribe()
	mu.Lock()
	defer mu.Unlock()
	t := Throttle{Members: len(members), Source: source, Ceiling: ceiling}
	for _, r := range members {
		t.FleetRate = max(t.FleetRate, r)
	}
	return t
}

// SetControl writes a run's control record in the deployment's runs bucket (names):
// paused, cancelled or running (resume).
func SetControl(ctx context.Context, js jetstream.JetStream, names wire.Names, run, state string) error {
	switch state {
	case wire.ControlPaused, wire.ControlCancelled, wire.ControlRunning:
	default:
		return fmt.Errorf("control: %q is not paused, cancelled or running", state)
	}
	runs, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil {
		return fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	// A finished run is final: its per-run keys are purged, and a control key written
	// now would be left behind for ever.
	if e, err := runs.Get(ctx, run); err == nil {
		var st wire.RunStatus
		if json.Unmarshal(e.Value(), &st) == nil && st.Finished {
			return fmt.Errorf("control: run %s has finished (%s); nothing left to pause, resume or cancel", run, st.State)
		}
	}
	if e, err := runs.Get(ctx, wire.ControlKey(run)); err == nil {
		var c wire.Control
		if json.Unmarshal(e.Value(), &c) == nil && c.State == wire.ControlCancelled && state != wire.ControlCancelled {
			return errors.New("control: a cancelled run cannot be resumed or paused")
		}
	}
	b, _ := json.Marshal(wire.Control{State: state, Updated: time.Now().UTC()})
	if _, err := runs.Put(ctx, wire.ControlKey(run), b); err != nil {
		return fmt.Errorf("control of run %s: %w", run, err)
	}
	return nil
}

// Text renders a report for a terminal.
func (r Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s: %s", r.Run, r.State)
	if r.Reason != "" {
		fmt.Fprintf(&b, " (%s)", r.Reason)
	}
	total := "?"
	if r.RowsTotal > 0 {
		total = fmt.Sprint(r.RowsTotal)
	}
	oldest := fmt.Sprintf("; oldest incomplete row %d", r.OldestOpen)
	if r.State == wire.RunCompleted || (r.RowsTotal > 0 && r.OldestOpen >= r.RowsTotal) {
		oldest = "" // every row written: none is incomplete
	}
	fmt.Fprintf(&b, "\n  rows: %s total, %d published, %d emitted (%d ok, %d failed)%s\n", total, r.Published, r.Emitted, r.OK, r.Failed, oldest)
	fmt.Fprintf(&b, "  queries: %d queued, %d in retry\n", r.JobsQueued, r.JobsInRetry)
	if sub := r.Submission; sub != nil {
		fmt.Fprintf(&b, "  submission: %s (pipeline %s", sub.State, sub.Pipeline)
		if sub.State == wire.SubmitSealed {
			fmt.Fprintf(&b, ", %d rows", sub.Rows)
		}
		if sub.Reason != "" {
			fmt.Fprintf(&b, "; %s: %s", sub.Reason, sub.Message)
		}
		b.WriteString(")\n")
		for _, e := range sub.RowErrors {
			row := -1
			if e.Row != nil {
				row = *e.Row
			}
			fmt.Fprintf(&b, "  row %d rejected: %s", row, e.Reason)
			if e.Field != "" {
				fmt.Fprintf(&b, " (field %s)", e.Field)
			}
			fmt.Fprintf(&b, ": %s\n", e.Message)
		}
	}
	for dep, t := range r.Throttle {
		fmt.Fprintf(&b, "  deployment %s: fleet rate %.1f req/s over %d workers", dep, t.FleetRate, t.Members)
		if t.Source != "" {
			fmt.Fprintf(&b, " (%s", t.Source)
			if t.Ceiling > 0 {
				fmt.Fprintf(&b, ", ceiling %.1f req/s", t.Ceiling)
			}
			b.WriteString(")")
		}
		if t.Learned > 0 {
			fmt.Fprintf(&b, "; remembered rate %.1f req/s, %s old", t.Learned, t.LearnedAge)
		}
		if t.Breaker != "" {
			fmt.Fprintf(&b, "; breaker %s", t.Breaker)
		}
		b.WriteString("\n")
	}
	if r.ETA != "" {
		fmt.Fprintf(&b, "  %.1f rows/s, ETA %s\n", r.RowsPerSec, r.ETA)
	}
	if r.OutDir != "" {
		fmt.Fprintf(&b, "  output: %s\n", r.OutDir)
	}
	if r.Attempt > 0 {
		fmt.Fprintf(&b, "  resubmissions merged: %d (the last: %s)\n", r.Attempt, wire.ResubmitRunID(r.Run, r.Attempt))
	}
	if r.Stored {
		fmt.Fprintf(&b, "  stored in %s: mqctl get %s\n", r.ResultsBucket, r.Run)
	}
	return b.String()
}
