package status

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

const run = "run-a"

type env struct {
	t    *testing.T
	srv  *natstest.Server
	ctx  context.Context
	nc   *nats.Conn
	js   jetstream.JetStream
	runs jetstream.KeyValue
}

// start runs a server with the whole topology (queue.Ensure, as every process does at
// start-up); its context ends a hang after 10 s.
func start(t *testing.T) *env {
	t.Helper()
	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	runs, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, ctx: ctx, nc: nc, js: js, runs: runs}
}

func (e *env) put(kv jetstream.KeyValue, key string, v any) {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := kv.Put(e.ctx, key, b); err != nil {
		e.t.Fatalf("put %s: %v", key, err)
	}
}

// status writes the collector's status of a run: wire.RunStatus under the run id in
// mq_runs (collector.publishStatus).
func (e *env) status(st wire.RunStatus) {
	e.t.Helper()
	e.put(e.runs, st.Run, st)
}

// checkpoint writes the producer's checkpoint under "<run>.producer" in mq_runs, with
// the JSON fields of wire.ProducerCheckpoint spelled out (docs/WIRE.md).
func (e *env) checkpoint(r string, through int, updated time.Time) {
	e.t.Helper()
	e.put(e.runs, r+".producer", map[string]any{"published_through": through, "rows_sha256": "abc", "config_hash": "def", "updated": updated.UTC()})
}

// breaker opens a deployment's breaker as a worker does (worker.openBreaker).
func (e *env) breaker(dep string, b wire.Breaker) {
	e.t.Helper()
	e.put(e.runs, wire.BreakerKey(dep), b)
}

func (e *env) get(r string, listen time.Duration) Report {
	e.t.Helper()
	rep, err := Get(e.ctx, e.nc, e.js, wire.Names{}, r, listen)
	if err != nil {
		e.t.Fatalf("status of %s: %v", r, err)
	}
	return rep
}

func (e *env) control(r string) (wire.Control, bool) {
	e.t.Helper()
	en, err := e.runs.Get(e.ctx, wire.ControlKey(r))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return wire.Control{}, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var c wire.Control
	if err := json.Unmarshal(en.Value(), &c); err != nil {
		e.t.Fatalf("control record %s: %v", en.Value(), err)
	}
	return c, true
}

func within(t *testing.T, what string, got, lo, hi float64) {
	t.Helper()
	if got < lo || got > hi {
		t.Fatalf("%s = %v, want within [%v, %v]", what, got, lo, hi)
	}
}

// Get reports what the collector stored (state, counters, watermark, output, deployments),
// the producer's checkpoint (rows published), the run's queued jobs on MQ_JOBS and its
// queries in retry (mq_retry), none of another run's; the rate and ETA follow from the
// rows emitted since the run started.
func TestGetReportsTheCollectorsProgressAndTheProducersCheckpoint(t *testing.T) {
	e := start(t)
	started := time.Now().Add(-1000 * time.Second)
	seen := time.Now().Add(-time.Second).UTC()
	e.status(wire.RunStatus{Run: run, State: "open", Emitted: 100, OK: 90, Failed: 10, Next: 95, OutDir: "/out/run-a",
		Deployments: []string{"dep-a", "dep-b"}, Started: started, Updated: time.Now().UTC()})
	e.checkpoint(run, 250, seen)
	e.status(wire.RunStatus{Run: "run-b", State: "sealed", Total: 7, Emitted: 7, OK: 7, Next: 7})
	for _, subj := range []string{
		wire.JobSubject("dep-a", run, 100, "q1"), wire.JobSubject("dep-b", run, 100, "q2"), wire.JobSubject("dep-a", run, 101, "q1"),
		wire.JobSubject("dep-a", "run-b", 3, "q1"), wire.JobSubject("dep-a", "run-ab", 3, "q1"),
	} {
		if _, err := e.js.Publish(e.ctx, subj, []byte(`{"v":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	retry, err := e.js.KeyValue(e.ctx, wire.BucketRetry)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{wire.JobKey(run, 100, "q1"), wire.JobKey(run, 7, "q2"), wire.JobKey("run-b", 3, "q1")} {
		e.put(retry, key, map[string]any{"attempts": 1})
	}

	r := e.get(run, 0)
	if r.Run != run || r.State != "open" || r.Reason != "" || r.RowsTotal != 0 || r.Published != 250 || r.Emitted != 100 ||
		r.OK != 90 || r.Failed != 10 || r.OldestOpen != 95 || r.OutDir != "/out/run-a" || !r.ProducerSeen.Equal(seen) {
		t.Fatalf("report = %+v, want state open, 250 published, 100 emitted (90 ok, 10 failed), oldest 95, out /out/run-a, producer seen %s", r, seen)
	}
	if r.JobsQueued != 3 || r.JobsInRetry != 2 {
		t.Fatalf("queries queued/in retry = %d/%d, want 3/2 (the run's only)", r.JobsQueued, r.JobsInRetry)
	}
	if len(r.Deployments) != 2 || len(r.Throttle) != 2 {
		t.Fatalf("deployments %v, throttle %v: want dep-a and dep-b", r.Deployments, r.Throttle)
	}
	for _, dep := range []string{"dep-a", "dep-b"} {
		if tr, ok := r.Throttle[dep]; !ok || tr != (Throttle{}) {
			t.Fatalf("throttle of %s = %+v (%v), want present and empty (no heartbeat, breaker or memory)", dep, tr, ok)
		}
	}
	within(t, "rows per second", r.RowsPerSec, 100.0/1010, 100.0/1000)
	eta, err := time.ParseDuration(r.ETA)
	if err != nil {
		t.Fatalf("ETA %q: %v", r.ETA, err)
	}
	// 150 rows left (250 published, 100 emitted) at 0.1 rows/s.
	within(t, "ETA seconds", eta.Seconds(), 1500, 1515)

	// Once sealed, the total counts as published and is what is left to emit.
	e.status(wire.RunStatus{Run: run, State: "sealed", Total: 400, Emitted: 100, Next: 100, Deployments: []string{"dep-a"}, Started: started})
	r = e.get(run, 0)
	if r.State != "sealed" || r.RowsTotal != 400 || r.Published != 400 {
		t.Fatalf("sealed report = %+v, want sealed, 400 total and published", r)
	}
	if eta, err := time.ParseDuration(r.ETA); err != nil || eta < 3000*time.Second || eta > 3030*time.Second {
		t.Fatalf("sealed ETA = %q (%v), want about 300 rows / 0.1 rows/s", r.ETA, err)
	}

	// A completed run has no ETA.
	e.status(wire.RunStatus{Run: run, State: "completed", Total: 400, Emitted: 400, OK: 400, Next: 400, Started: started, Finished: true})
	r = e.get(run, 0)
	if r.State != "completed" || r.ETA != "" || r.Emitted != 400 {
		t.Fatalf("completed report = %+v, want completed without ETA", r)
	}
}

// A run the producer has begun but the collector has not written yet is known from the
// producer's checkpoint alone: open, its published rows, nothing emitted, no ETA.
func TestGetKnowsARunFromItsProducerCheckpointAlone(t *testing.T) {
	e := start(t)
	seen := time.Now().UTC()
	e.checkpoint(run, 40, seen)
	r := e.get(run, 0)
	if r.State != "open" || r.Published != 40 || r.Emitted != 0 || r.RowsTotal != 0 || r.RowsPerSec != 0 || r.ETA != "" || !r.ProducerSeen.Equal(seen) {
		t.Fatalf("report = %+v, want open with 40 published and nothing else", r)
	}
}

// A run with neither a collector status nor a producer checkpoint is unknown: Get fails
// naming it, even when a control record was written for it in advance.
func TestGetOfAnUnknownRunFailsNamingIt(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: "run-b", State: "open", Emitted: 1})
	e.checkpoint("run-b", 1, time.Now())
	if err := SetControl(e.ctx, e.js, wire.Names{}, run, wire.ControlPaused); err != nil {
		t.Fatal(err)
	}
	r, err := Get(e.ctx, e.nc, e.js, wire.Names{}, run, 0)
	if err == nil || !strings.Contains(err.Error(), "run "+run+": no status") {
		t.Fatalf("Get of an unknown run: report %+v, err %v; want an error naming %s", r, err, run)
	}
	if r.Run != run || r.Emitted != 0 || r.Published != 0 {
		t.Fatalf("report of an unknown run = %+v, want only its id", r)
	}
}

// Without the runs bucket (nothing was ever started), Get and SetControl fail naming it.
func TestGetAndSetControlWithoutTheRunsBucketFailNamingIt(t *testing.T) {
	nc, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Get(ctx, nc, js, wire.Names{}, run, 0); err == nil || !strings.Contains(err.Error(), wire.BucketRuns) {
		t.Fatalf("Get without %s: err = %v, want an error naming it", wire.BucketRuns, err)
	}
	if err := SetControl(ctx, js, wire.Names{}, run, wire.ControlPaused); err == nil || !strings.Contains(err.Error(), wire.BucketRuns) {
		t.Fatalf("SetControl without %s: err = %v, want an error naming it", wire.BucketRuns, err)
	}
}

// An unsealed run whose producer has published nothing for StalledAfter is stalled, the
// reason naming the time of its last progress, and has no ETA; a sealed run is never
// stalled.
func TestGetReportsAStalledRunWhoseProducerIsSilent(t *testing.T) {
	e := start(t)
	old := time.Now().Add(-StalledAfter - time.Minute).UTC()
	e.status(wire.RunStatus{Run: run, State: "open", Emitted: 5, Next: 5})
	e.checkpoint(run, 10, old)
	r := e.get(run, 0)
	if r.State != "stalled" || !strings.Contains(r.Reason, "unsealed") || !strings.Contains(r.Reason, old.Format(time.RFC3339)) {
		t.Fatalf("report = %+v, want stalled with a reason naming %s", r, old.Format(time.RFC3339))
	}
	if r.ETA != "" { // no pace to tell one from: nothing moves
		t.Errorf("a stalled run's ETA = %q, want none", r.ETA)
	}

	e.status(wire.RunStatus{Run: "run-sealed", State: "sealed", Total: 10, Emitted: 5, Next: 5})
	e.checkpoint("run-sealed", 10, old)
	if r := e.get("run-sealed", 0); r.State != "sealed" || r.Reason != "" {
		t.Fatalf("sealed run with an old checkpoint = %+v, want sealed", r)
	}

	e.status(wire.RunStatus{Run: "run-fresh", State: "open", Emitted: 5, Next: 5})
	e.checkpoint("run-fresh", 10, time.Now().Add(-StalledAfter/2))
	if r := e.get("run-fresh", 0); r.State != "open" || r.Reason != "" {
		t.Fatalf("open run with a recent checkpoint = %+v, want open", r)
	}
}

// A producer killed before its first checkpoint (every 2048/(M+1) rows) leaves none: the
// run is stalled once the collector has emitted nothing of it for StalledAfter, the
// reason naming the last time it did, and its emitted rows count as published. A run
// whose rows are still being emitted stays open.
func TestARunWhoseProducerDiedBeforeItsFirstCheckpointIsStalled(t *testing.T) {
	e := start(t)
	started := time.Now().Add(-StalledAfter - time.Minute).UTC()
	last := started.Add(4 * time.Second)
	e.status(wire.RunStatus{Run: run, State: "open", Emitted: 66, OK: 66, Next: 66, Started: started, Updated: last})
	r := e.get(run, 0)
	if r.State != "stalled" || !strings.Contains(r.Reason, "unsealed") || !strings.Contains(r.Reason, last.Format(time.RFC3339)) {
		t.Fatalf("report = %+v, want stalled with a reason naming %s", r, last.Format(time.RFC3339))
	}
	if r.Published != 66 || r.Emitted != 66 {
		t.Fatalf("published/emitted = %d/%d, want 66/66 (an emitted row was published)", r.Published, r.Emitted)
	}
	if eta, err := time.ParseDuration(r.ETA); r.ETA != "" && (err != nil || eta < 0) {
		t.Fatalf("ETA = %q (%v), want none or not negative", r.ETA, err)
	}

	e.status(wire.RunStatus{Run: "run-fresh", State: "open", Emitted: 66, Next: 66, Started: started, Updated: time.Now().UTC()})
	if r := e.get("run-fresh", 0); r.State != "open" || r.Reason != "" {
		t.Fatalf("open run without a checkpoint whose rows are still emitted = %+v, want open", r)
	}
}

// The producer's checkpoint lags the rows it published: a run never shows fewer rows
// published than emitted, nor a negative ETA.
func TestARunNeverShowsFewerRowsPublishedThanEmittedNorANegativeETA(t *testing.T) {
	e := start(t)
	started := time.Now().Add(-100 * time.Second).UTC()
	e.status(wire.RunStatus{Run: run, State: "open", Emitted: 600, OK: 600, Next: 600, Started: started, Updated: time.Now().UTC()})
	e.checkpoint(run, 512, time.Now())
	r := e.get(run, 0)
	if r.State != "open" || r.Published != 600 || r.Emitted != 600 {
		t.Fatalf("report = %+v, want open, 600 published and emitted", r)
	}
	if eta, err := time.ParseDuration(r.ETA); r.ETA != "" && (err != nil || eta < 0) {
		t.Fatalf("ETA = %q (%v), want none or not negative", r.ETA, err)
	}
}

// An open breaker of one of the run's deployments makes it blocked, the reason naming
// the deployment and the provider's answer; that deployment's throttle shows it.
func TestGetReportsAnOpenBreakerAsBlocked(t *testing.T) {
	e := start(t)
	since := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	e.status(wire.RunStatus{Run: run, State: "sealed", Total: 20, Emitted: 3, Next: 3, Deployments: []string{"dep-a", "dep-b"}})
	e.breaker("dep-b", wire.Breaker{State: "open", Status: 401, Code: "invalid_api_key", Message: "Incorrect API key provided: [redacted]", Since: since, Worker: "w1"})
	e.breaker("dep-c", wire.Breaker{State: "open", Status: 403, Code: "forbidden", Message: "not this run's", Since: since})
	r := e.get(run, 0)
	if want := "deployment dep-b: status 401 invalid_api_key: Incorrect API key provided: [redacted]"; r.State != "blocked" || r.Reason != want {
		t.Fatalf("report = %q (%q), want blocked (%q)", r.State, r.Reason, want)
	}
	if want := "open since 2025-06-01T12:00:00Z: status 401 invalid_api_key: Incorrect API key provided: [redacted]"; r.Throttle["dep-b"].Breaker != want {
		t.Fatalf("dep-b breaker = %q, want %q", r.Throttle["dep-b"].Breaker, want)
	}
	if b := r.Throttle["dep-a"].Breaker; b != "" {
		t.Fatalf("dep-a breaker = %q, want none", b)
	}
	if _, ok := r.Throttle["dep-c"]; ok {
		t.Fatalf("throttle %v shows dep-c, a deployment the run does not use", r.Throttle)
	}
}

// The run's control record overrides open, sealed and blocked with paused or cancelled,
// never completed; resumed (running), the run shows its own state again.
func TestGetReportsTheControlStateButNeverOverCompletion(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: "open", Emitted: 1, Deployments: []string{"dep-a"}})
	e.breaker("dep-a", wire.Breaker{State: "open", Status: 401, Code: "invalid_api_key", Message: "bad key", Since: time.Now()})
	if err := SetControl(e.ctx, e.js, wire.Names{}, run, wire.ControlPaused); err != nil {
		t.Fatal(err)
	}
	if r := e.get(run, 0); r.State != wire.ControlPaused || r.Reason != "" || r.Throttle["dep-a"].Breaker == "" {
		t.Fatalf("paused run with an open breaker = %+v, want paused (its breaker shown)", r)
	}
	if err := SetControl(e.ctx, e.js, wire.Names{}, run, wire.ControlRunning); err != nil {
		t.Fatal(err)
	}
	if r := e.get(run, 0); r.State != "blocked" {
		t.Fatalf("resumed run with an open breaker = %q, want blocked", r.State)
	}

	e.status(wire.RunStatus{Run: "run-c", State: "sealed", Total: 9, Emitted: 1})
	if err := SetControl(e.ctx, e.js, wire.Names{}, "run-c", wire.ControlCancelled); err != nil {
		t.Fatal(err)
	}
	if r := e.get("run-c", 0); r.State != wire.ControlCancelled {
		t.Fatalf("cancelled run = %q, want cancelled", r.State)
	}

	// Paused before the collector finished it: completed wins.
	e.status(wire.RunStatus{Run: "run-d", State: "sealed", Total: 2, Emitted: 1})
	if err := SetControl(e.ctx, e.js, wire.Names{}, "run-d", wire.ControlPaused); err != nil {
		t.Fatal(err)
	}
	e.status(wire.RunStatus{Run: "run-d", State: "completed", Total: 2, Emitted: 2, OK: 2, Next: 2, Finished: true})
	if r := e.get("run-d", 0); r.State != "completed" {
		t.Fatalf("completed run with a pause record = %q, want completed", r.State)
	}
}

// The remembered rate of each of the run's deployments (mq_throttle) is reported with
// its age; a deployment without one, or with a rate of 0, shows none.
func TestGetReportsTheRememberedRateOfEachDeployment(t *testing.T) {
	e := start(t)
	mem, err := e.js.KeyValue(e.ctx, wire.BucketThrottle)
	if err != nil {
		t.Fatal(err)
	}
	e.put(mem, "dep-a", wire.LearnedRate{Rate: 7.5, Ceiling: 12, Source: "headers", Learned: time.Now().Add(-90 * time.Second).UTC()})
	e.put(mem, "dep-c", wire.LearnedRate{Rate: 0, Source: "probing", Learned: time.Now().UTC()})
	e.put(mem, "dep-z", wire.LearnedRate{Rate: 3, Source: "learned", Learned: time.Now().UTC()})
	e.status(wire.RunStatus{Run: run, State: "open", Deployments: []string{"dep-a", "dep-b", "dep-c"}})
	r := e.get(run, 0)
	a := r.Throttle["dep-a"]
	if a.Learned != 7.5 {
		t.Fatalf("dep-a remembered rate = %v, want 7.5", a.Learned)
	}
	age, err := time.ParseDuration(a.LearnedAge)
	if err != nil {
		t.Fatalf("dep-a learned age %q: %v", a.LearnedAge, err)
	}
	within(t, "dep-a learned age seconds", age.Seconds(), 90, 100)
	for _, dep := range []string{"dep-b", "dep-c"} {
		if tr := r.Throttle[dep]; tr.Learned != 0 || tr.LearnedAge != "" {
			t.Fatalf("%s = %+v, want no remembered rate", dep, tr)
		}
	}
	if len(r.Throttle) != 3 {
		t.Fatalf("throttle = %v, want the run's 3 deployments only", r.Throttle)
	}
}

// The fleet throttle of a deployment is read from its heartbeats during the listen
// window: the members, the highest rate, its source and the highest ceiling. A member
// that leaves (its last heartbeat says leaving) is not counted, as the fleet drops it.
func TestGetReportsTheFleetFromHeartbeats(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: "open", Deployments: []string{"dep-a"}})
	// Get listens on a connection of its own: once that connection holds a subscription
	// (Get's), heartbeats published on it follow the subscription on the wire, so each
	// reaches it whatever the scheduling. They are sent until Get returns.
	hb, _ := e.srv.Connect(t)
	if n := hb.NumSubscriptions(); n != 0 {
		t.Fatalf("a fresh connection holds %d subscriptions", n)
	}
	w1 := []byte(`{"member":"w1","rate":4,"slow_start":false,"demanding":true,"served":3.9,"source":"headers","ceiling":10,"every_ms":250}`)
	w2 := []byte(`{"member":"w2","rate":6,"slow_start":false,"demanding":true,"served":5.8,"source":"headers","ceiling":12,"every_ms":250}`)
	w3 := []byte(`{"member":"w3","rate":9,"slow_start":false,"demanding":true,"served":8,"source":"probing","ceiling":0,"every_ms":250}`)
	w3Leaves := []byte(`{"member":"w3","rate":0,"leaving":true}`)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for hb.NumSubscriptions() == 0 {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
		// w3 beats, then leaves; w2 before w1, so the last ceiling heard is not the highest.
		for _, b := range [][]byte{w3, w2, w1, w3Leaves, []byte(`not json`)} {
			_ = hb.Publish(wire.ThrottleHeartbeatSubject("dep-a"), b)
		}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = hb.Publish(wire.ThrottleHeartbeatSubject("dep-other"), []byte(`{"member":"x","rate":99,"source":"probing","ceiling":99}`))
			_ = hb.Publish(wire.ThrottleHeartbeatSubject("dep-a"), w2)
			_ = hb.Publish(wire.ThrottleHeartbeatSubject("dep-a"), w1)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	r, err := Get(e.ctx, hb, e.js, wire.Names{}, run, 500*time.Millisecond)
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	want := Throttle{FleetRate: 6, Members: 2, Source: "headers", Ceiling: 12}
	if got := r.Throttle["dep-a"]; got != want {
		t.Fatalf("dep-a throttle = %+v, want %+v", got, want)
	}
}

// heartbeats stops listening when its context ends, long before its window.
func TestHeartbeatsStopListeningWhenTheContextEnds(t *testing.T) {
	e := start(t)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	got := make(chan Throttle, 1)
	go func() { got <- heartbeats(ctx, e.nc, wire.Names{}, "dep-a", time.Hour) }()
	select {
	case tr := <-got:
		if tr.Members != 0 || tr.FleetRate != 0 {
			t.Fatalf("heartbeats = %+v, want none", tr)
		}
	case <-e.ctx.Done():
		t.Fatal("heartbeats kept listening after its context ended")
	}
}

// learned leaves the throttle as it is when the deployment has no memory or the value
// is unreadable.
func TestLearnedIgnoresAMissingOrUnreadableMemory(t *testing.T) {
	e := start(t)
	mem, err := e.js.KeyValue(e.ctx, wire.BucketThrottle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mem.Put(e.ctx, "dep-bad", []byte(`{"rate":`)); err != nil {
		t.Fatal(err)
	}
	for _, dep := range []string{"dep-none", "dep-bad"} {
		tr := Throttle{FleetRate: 2, Members: 1}
		learned(e.ctx, e.js, wire.Names{}, dep, &tr)
		if tr != (Throttle{FleetRate: 2, Members: 1}) {
			t.Fatalf("%s: throttle = %+v, want unchanged", dep, tr)
		}
	}
	e.put(mem, "dep-ok", wire.LearnedRate{Rate: 2.5, Source: "learned", Learned: time.Now().UTC()})
	tr := Throttle{}
	learned(e.ctx, e.js, wire.Names{}, "dep-ok", &tr)
	if tr.Learned != 2.5 || tr.LearnedAge == "" {
		t.Fatalf("dep-ok: throttle = %+v, want the remembered 2.5 and its age", tr)
	}
}

// SetControl writes the control record workers and the producer read (key
// "<run>.control" in mq_runs, wire.Control): pause, then resume (running).
func TestSetControlWritesTheRecordWorkersRead(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: "open"})
	for _, state := range []string{wire.ControlPaused, wire.ControlRunning, wire.ControlPaused} {
		before := time.Now().Add(-time.Second)
		if err := SetControl(e.ctx, e.js, wire.Names{}, run, state); err != nil {
			t.Fatalf("set %s: %v", state, err)
		}
		c, ok := e.control(run)
		if !ok || c.State != state || c.Updated.Before(before) || c.Updated.After(time.Now().Add(time.Second)) {
			t.Fatalf("control record after %s = %+v (present %v), want state %s updated now", state, c, ok, state)
		}
	}
	// The key is the one the workers watch ("*.control") and the producer reads.
	if en, err := e.runs.Get(e.ctx, run+".control"); err != nil || !strings.Contains(string(en.Value()), `"state":"paused"`) {
		t.Fatalf("%s.control = %v (%v), want a paused record", run, en, err)
	}
}

// SetControl accepts paused, cancelled and running only, and names the state it refuses;
// nothing is written then.
func TestSetControlRejectsAnInvalidStateNamingIt(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: "open"})
	for _, state := range []string{"stopped", "", "Paused", "resume", "cancel"} {
		err := SetControl(e.ctx, e.js, wire.Names{}, run, state)
		if err == nil || !strings.Contains(err.Error(), `"`+state+`"`) {
			t.Fatalf("SetControl(%q): err = %v, want an error naming it", state, err)
		}
	}
	if c, ok := e.control(run); ok {
		t.Fatalf("control record %+v written for invalid states", c)
	}
}

// A cancelled run is final: neither resume nor pause is accepted, the record stays
// cancelled; cancelling again is harmless.
func TestACancelledRunCannotBeResumedOrPaused(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: "sealed", Total: 3})
	if err := SetControl(e.ctx, e.js, wire.Names{}, run, wire.ControlCancelled); err != nil {
		t.Fatal(err)
	}
	for _, state := range []string{wire.ControlRunning, wire.ControlPaused} {
		if err := SetControl(e.ctx, e.js, wire.Names{}, run, state); err == nil || !strings.Contains(err.Error(), "cancelled") {
			t.Fatalf("SetControl(%s) of a cancelled run: err = %v, want a refusal", state, err)
		}
		if c, _ := e.control(run); c.State != wire.ControlCancelled {
			t.Fatalf("control after a refused %s = %+v, want cancelled", state, c)
		}
	}
	if err := SetControl(e.ctx, e.js, wire.Names{}, run, wire.ControlCancelled); err != nil {
		t.Fatalf("cancel again: %v", err)
	}
}

// A finished run's keys are purged: SetControl refuses it, naming the run, and writes
// no control key that would be left behind.
func TestSetControlRefusesAFinishedRun(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: "completed", Total: 3, Emitted: 3, OK: 3, Next: 3, Finished: true})
	for _, state := range []string{wire.ControlPaused, wire.ControlCancelled, wire.ControlRunning} {
		err := SetControl(e.ctx, e.js, wire.Names{}, run, state)
		if err == nil || !strings.Contains(err.Error(), "run "+run+" has finished") {
			t.Fatalf("SetControl(%s) of a finished run: err = %v, want a refusal naming it", state, err)
		}
	}
	if c, ok := e.control(run); ok {
		t.Fatalf("control record %+v written for a finished run", c)
	}
}

// Text shows the state and reason, every row and query figure, each deployment's
// throttle (source, ceiling, remembered rate, breaker), the rate and ETA, and the output.
func TestReportTextShowsTheKeyFigures(t *testing.T) {
	r := Report{Run: run, State: "blocked", Reason: "deployment dep-a: status 401 invalid_api_key: bad key",
		RowsTotal: 400, Published: 380, Emitted: 120, OK: 110, Failed: 10, OldestOpen: 117, JobsQueued: 42, JobsInRetry: 3,
		Throttle: map[string]Throttle{"dep-a": {FleetRate: 6, Members: 2, Source: "headers", Ceiling: 12, Learned: 7.5, LearnedAge: "1m30s",
			Breaker: "open since 2025-06-01T12:00:00Z: status 401 invalid_api_key: bad key"}},
		RowsPerSec: 0.3, ETA: "18m40s", OutDir: "/out/run-a"}
	want := "run run-a: blocked (deployment dep-a: status 401 invalid_api_key: bad key)\n" +
		"  rows: 400 total, 380 published, 120 emitted (110 ok, 10 failed); oldest incomplete row 117\n" +
		"  queries: 42 queued, 3 in retry\n" +
		"  deployment dep-a: fleet rate 6.0 req/s over 2 workers (headers, ceiling 12.0 req/s); remembered rate 7.5 req/s, 1m30s old; breaker open since 2025-06-01T12:00:00Z: status 401 invalid_api_key: bad key\n" +
		"  0.3 rows/s, ETA 18m40s\n" +
		"  output: /out/run-a\n"
	if got := r.Text(); got != want {
		t.Fatalf("Text() =\n%s\nwant\n%s", got, want)
	}

	// An open run: total unknown, no source, ETA or output.
	r = Report{Run: "run-b", State: "open", Published: 5, Throttle: map[string]Throttle{"dep-b": {FleetRate: 1.5, Members: 1}}}
	want = "run run-b: open\n" +
		"  rows: ? total, 5 published, 0 emitted (0 ok, 0 failed); oldest incomplete row 0\n" +
		"  queries: 0 queued, 0 in retry\n" +
		"  deployment dep-b: fleet rate 1.5 req/s over 1 workers\n"
	if got := r.Text(); got != want {
		t.Fatalf("Text() =\n%s\nwant\n%s", got, want)
	}

	// A completed run whose files are stored says how to fetch them.
	r = Report{Run: "run-c", State: "completed", RowsTotal: 2, Published: 2, Emitted: 2, OK: 2, OldestOpen: 2, OutDir: "/out/run-c", Stored: true, ResultsBucket: wire.BucketResults}
	want = "run run-c: completed\n" +
		"  rows: 2 total, 2 published, 2 emitted (2 ok, 0 failed)\n" +
		"  queries: 0 queued, 0 in retry\n" +
		"  output: /out/run-c\n" +
		"  stored in mq_results: mqctl get run-c\n"
	if got := r.Text(); got != want {
		t.Fatalf("Text() =\n%s\nwant\n%s", got, want)
	}

	// A run whose error rows were resubmitted says how many times.
	r.Attempt = 2
	want = "run run-c: completed\n" +
		"  rows: 2 total, 2 published, 2 emitted (2 ok, 0 failed)\n" +
		"  queries: 0 queued, 0 in retry\n" +
		"  output: /out/run-c\n" +
		"  resubmissions merged: 2 (the last: run-c-r2)\n" +
		"  stored in mq_results: mqctl get run-c\n"
	if got := r.Text(); got != want {
		t.Fatalf("Text() =\n%s\nwant\n%s", got, want)
	}
}

// WaitRun reports each status the collector writes and returns the first finished one;
// it gives up with the context.
func TestWaitRunReturnsTheFinishedStatus(t *testing.T) {
	e := start(t)
	e.status(wire.RunStatus{Run: run, State: wire.RunSealed, Total: 3, Emitted: 1, Next: 1})
	seen := make(chan wire.RunStatus, 8)
	type result struct {
		st  wire.RunStatus
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := WaitRun(e.ctx, e.js, wire.Names{}, run, func(s wire.RunStatus) { seen <- s })
		done <- result{st, err}
	}()
	if s := <-seen; s.Emitted != 1 || s.Finished {
		t.Fatalf("first progress = %+v, want the unfinished status", s)
	}
	e.status(wire.RunStatus{Run: run, State: wire.RunCompleted, Total: 3, Emitted: 3, OK: 3, Next: 3, Finished: true})
	r := <-done
	if r.err != nil || !r.st.Finished || r.st.State != wire.RunCompleted || r.st.OK != 3 {
		t.Fatalf("WaitRun = %+v, %v; want the completed status", r.st, r.err)
	}

	ctx, cancel := context.WithTimeout(e.ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := WaitRun(ctx, e.js, wire.Names{}, "run-never", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRun of a run that never finishes = %v, want the context's error", err)
	}
}
