package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

func (e *env) consumerExists(alias, run string) bool {
	_, err := e.js.Consumer(context.Background(), wire.StreamJobs, queue.JobConsumerName(alias, run))
	return err == nil
}

// withoutResultsStream produces rows, starts a worker with `concurrency` slots and lets
// it call them with the results stream gone (the worker ensures it at start, so the
// run is held until the stream is deleted); it returns the run.
func (e *env) withoutResultsStream(rows, concurrency int) string {
	e.t.Helper()
	ctx := context.Background()
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, rep.Run, wire.ControlPaused); err != nil {
		e.t.Fatal(err)
	}
	e.startWorker(workerOpts{concurrency: concurrency})
	waitFor(e.t, 20*time.Second, "the worker's job consumer", func() bool { return e.consumerExists("default", rep.Run) })
	if err := e.js.DeleteStream(ctx, wire.StreamResults); err != nil {
		e.t.Fatal(err)
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, rep.Run, wire.ControlRunning); err != nil {
		e.t.Fatal(err)
	}
	return rep.Run
}

// resultsStreamBack restores the results stream, collects the run and checks that
// every row completed with one call a job.
func (e *env) resultsStreamBack(run string, rows int) collector.Summary {
	e.t.Helper()
	if err := queue.Ensure(context.Background(), e.js, e.topo); err != nil {
		e.t.Fatal(err)
	}
	e.startCollector("")
	sum := e.waitSummary(run, 60*time.Second)
	if sum.Stats.RowsOK != rows {
		e.t.Fatalf("rows ok = %d, want %d", sum.Stats.RowsOK, rows)
	}
	if n := e.sim.Stats().Requests; n != int64(rows) {
		e.t.Fatalf("llmsim answered %d calls for %d jobs, want exactly one each", n, rows)
	}
	return sum
}

// Issue 8 item 5: a worker that cannot store a paid answer keeps the job (InProgress)
// and retries the publish, never the call: a results stream gone for four AckWaits
// costs no second call, and every row completes once it is back.
func TestAPaidCallIsNotRepeatedWhileItsResultCannotBeStored(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.AckWait = time.Second
	const rows = 8
	run := e.withoutResultsStream(rows, rows)
	waitFor(t, 20*time.Second, "one call per job", func() bool { return e.sim.Stats().Requests >= rows })
	time.Sleep(4 * e.topo.AckWait) // the outage under test: four times AckWait
	sum := e.resultsStreamBack(run, rows)
	if sum.Stats.Calls != rows {
		t.Fatalf("summary calls = %d, want %d", sum.Stats.Calls, rows)
	}
}

// A slot is a model call: once a job's call has answered, the next job's call starts
// while the first one's result is still being stored. With one slot and the results
// stream gone, a second job is called; the calls stop once every handler is storing a
// result (a worker with one slot has three: its call slot, its reserve, and one for a
// result being stored), so not every job is called; never two calls at once. Every row
// completes, one call each, once the stream is back.
func TestTheNextCallDoesNotWaitForTheLastResultToBeStored(t *testing.T) {
	e := setup(t, llmsim.Config{})
	const rows, handlers = 6, 3
	run := e.withoutResultsStream(rows, 1)
	waitFor(t, 20*time.Second, "a second call while the first result waits to be stored", func() bool { return e.sim.Stats().Requests >= 2 })
	time.Sleep(2 * time.Second) // room for more calls, were they allowed
	if st := e.sim.Stats(); st.Requests+st.InFlight > handlers {
		t.Fatalf("llmsim had %d calls while no result could be stored, want at most %d (one a handler)", st.Requests+st.InFlight, handlers)
	}
	e.resultsStreamBack(run, rows)
	if peak := e.sim.Stats().PeakInFlight; peak != 1 {
		t.Fatalf("llmsim saw %d calls at once from a worker with one slot, want 1", peak)
	}
}

// A worker fetches a job ahead of a free call slot (its reserve), so that the next
// call starts when one ends, without a fetch's round trip: with one slot and calls
// longer than AckWait, the second job is delivered while the first call runs, waits
// for the slot kept in progress (no redelivery, no second call of it), and its call
// starts only when the first has answered.
func TestAJobFetchedAheadWaitsForACallSlotKeptInProgress(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 2500 * time.Millisecond})
	e.topo.AckWait = time.Second
	ctx := context.Background()
	const rows = 2
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	cons := e.jobConsumer(rep.Run)
	e.startWorker(workerOpts{concurrency: 1})
	e.startCollector("")
	waitFor(t, 20*time.Second, "the first call", func() bool { return e.sim.Stats().InFlight == 1 })
	waitFor(t, 2*time.Second, "the second job delivered while the first call runs", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == rows && e.sim.Stats().Requests == 0
	})
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != rows {
		t.Fatalf("rows ok = %d, want %d", sum.Stats.RowsOK, rows)
	}
	st := e.sim.Stats()
	if n := st.Requests + st.InFlight; n != rows {
		t.Fatalf("llmsim had %d calls for %d jobs, want one each (the job waiting for its slot was redelivered?)", n, rows)
	}
	if st.PeakInFlight != 1 {
		t.Fatalf("llmsim saw %d calls at once from a worker with one slot, want 1", st.PeakInFlight)
	}
}

// A busy worker holds one job ahead per 4 call slots, and no more: with its 8 slots
// calling, 10 jobs are delivered to it while 12 wait in the queue for other workers.
func TestABusyWorkerHoldsOneJobAheadPerFourSlots(t *testing.T) {
	// Calls long enough that none ends before the check: the reserve is fetched within
	// milliseconds of the first call (checked below).
	const latency = 3 * time.Second
	e := setup(t, llmsim.Config{Latency: latency})
	e.topo.AckWait = time.Second
	ctx := context.Background()
	const rows, slots, ahead = 20, 8, 2
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	cons := e.jobConsumer(rep.Run)
	e.startWorker(workerOpts{concurrency: slots})
	e.startCollector("")
	held := func() int {
		held, _ := jobsHeld(ctx, cons)
		return held
	}
	waitFor(t, 20*time.Second, "the first call", func() bool { return e.sim.Stats().InFlight > 0 })
	first := time.Now()
	waitFor(t, 20*time.Second, "every slot calling and the reserve fetched", func() bool {
		return e.sim.Stats().InFlight == slots && held() == slots+ahead
	})
	t.Logf("every slot calling and the reserve fetched %s after the first call", time.Since(first).Round(time.Millisecond))
	// No call ends meanwhile: nothing more may be fetched. (The first call began up to
	// a poll, 20 ms, before first.)
	time.Sleep(500 * time.Millisecond)
	if took := time.Since(first); took >= latency-500*time.Millisecond {
		t.Fatalf("the reserve took %s to fill: the first call may have ended, the check proves nothing", took)
	}
	if st, n := e.sim.Stats(), held(); st.InFlight != slots || n != slots+ahead {
		t.Fatalf("with %d calls in flight the worker holds %d jobs, want %d", st.InFlight, n, slots+ahead)
	}
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != rows {
		t.Fatalf("rows ok = %d, want %d", sum.Stats.RowsOK, rows)
	}
	if st := e.sim.Stats(); st.Requests != rows || st.PeakInFlight != slots {
		t.Fatalf("llmsim answered %d calls, %d at most at once; want %d and %d", st.Requests, st.PeakInFlight, rows, slots)
	}
}

// Near a run's end a worker holds no job ahead of its calls while another worker has
// slots to call it: the last jobs go to whichever call slot frees first. Two workers of
// 4 call slots and one job ahead each, 16 jobs, calls of 3 s; B starts a second after A,
// so A's calls end first, with 6 jobs queued. A refills its 3 free call slots and fetches
// none ahead (3 left, B's 4 slots about to free), so when B's calls end it calls the last
// 3 and all 8 slots are calling, with nothing held uncalled. (Holding one ahead, A left
// B 2: the run then ends a call's length later, on A's job.)
func TestNearARunsEndTheLastJobsGoToFreeCallSlots(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 3 * time.Second})
	e.topo.AckWait = time.Second
	ctx := context.Background()
	const rows, slots = 16, 4
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	cons := e.jobConsumer(rep.Run)
	state := func() (held, queued int) { return jobsHeld(ctx, cons) }
	e.startCollector("")
	e.startWorker(workerOpts{concurrency: slots})
	waitFor(t, 20*time.Second, "A calling with a job ahead", func() bool {
		held, _ := state()
		return e.sim.Stats().InFlight == slots && held == slots+1
	})
	time.Sleep(time.Second)
	e.startWorker(workerOpts{concurrency: slots})
	waitFor(t, 20*time.Second, "B calling with a job ahead", func() bool {
		held, queued := state()
		return e.sim.Stats().InFlight == 2*slots && held == 2*(slots+1) && queued == rows-2*(slots+1)
	})
	waitFor(t, 20*time.Second, "the last jobs all calling, none held uncalled", func() bool {
		held, queued := state()
		st := e.sim.Stats()
		return st.Requests == 2*slots && st.InFlight == 2*slots && held == 2*slots && queued == 0
	})
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != rows {
		t.Fatalf("rows ok = %d, want %d", sum.Stats.RowsOK, rows)
	}
	if st := e.sim.Stats(); st.Requests != rows {
		t.Fatalf("llmsim answered %d calls, want %d (one a job)", st.Requests, rows)
	}
}

// jobsHeld is a job consumer's jobs delivered and not yet acked (held by workers) and
// those queued; -1, -1 when its info cannot be read.
func jobsHeld(ctx context.Context, cons jetstream.Consumer) (held, queued int) {
	info, err := cons.Info(ctx)
	if err != nil {
		return -1, -1
	}
	return info.NumAckPending, int(info.NumPending)
}

// Issue 8 item 7: summary.json counts what the provider billed, to the call and the
// token: 429s, invalid JSON and truncated answers included, NAKs without a call not.
func TestTheSummaryCountsWhatTheProviderBilled(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 8, InjectedRetryAfter: 20 * time.Millisecond, Faults: llmsim.Faults{
		llmsim.Fault429: 5, llmsim.FaultInvalidJSON: 30, llmsim.FaultTruncated: 20}})
	e.startWorker(workerOpts{})
	e.startCollector("")
	const rows, queries = 40, 2
	rep, err := e.produce(e.pipeline(matrixPipeline(1, queries, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	sum := e.waitSummary(rep.Run, 90*time.Second)
	st := e.sim.Stats()
	t.Logf("summary %+v; llmsim requests %d, tokens %d/%d, by fault %v", sum.Stats, st.Requests, st.PromptTokens, st.CompletionTokens, st.ByFault)
	if st.ByFault[llmsim.FaultInvalidJSON] == 0 || st.ByFault[llmsim.FaultTruncated] == 0 {
		t.Fatalf("no faults injected (%v): the test proves nothing", st.ByFault)
	}
	if sum.Stats.Calls != st.Requests {
		t.Errorf("summary calls = %d, llmsim answered %d", sum.Stats.Calls, st.Requests)
	}
	if sum.Stats.PromptTokens != st.PromptTokens || sum.Stats.CompletionTokens != st.CompletionTokens {
		t.Errorf("summary tokens = %d/%d, llmsim billed %d/%d", sum.Stats.PromptTokens, sum.Stats.CompletionTokens, st.PromptTokens, st.CompletionTokens)
	}
	// Every job made at least one call; each further call is a retry.
	if want := st.Requests - rows*queries; sum.Stats.Retries != want {
		t.Errorf("summary retries = %d, want calls - jobs = %d", sum.Stats.Retries, want)
	}
}

// Issue 8 item 8: a paused run is not fetched while paused, so its jobs take no pacing
// permit and no delivery counts toward the crash-loop cap: a pause a hundred times
// longer than cap x PausedRunDelay fails no job.
func TestAPausedRunSurvivesALongPauseAndTakesNoPermits(t *testing.T) {
	e := setup(t, llmsim.Config{})
	ctx := context.Background()
	p := e.pipeline(matrixPipeline(1, 1, ""))
	paused, err := e.produce(p, csvRows(10, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, paused.Run, wire.ControlPaused); err != nil {
		t.Fatal(err)
	}
	e.startWorker(workerOpts{concurrency: 4, tweak: func(c *worker.Config) {
		c.HardDeliverCap = 3
		c.PausedRunDelay = 20 * time.Millisecond
	}})
	e.startCollector("")
	live, err := e.produce(p, csvRows(10, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(live.Run, 60*time.Second) // the worker is fetching
	time.Sleep(2 * time.Second)             // the pause under test: 100 x PausedRunDelay
	cons, err := e.js.Consumer(ctx, wire.StreamJobs, queue.JobConsumerName("default", paused.Run))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 0 {
		t.Errorf("the paused run's jobs were delivered %d times while paused (a pacing permit each), want 0", info.Delivered.Consumer)
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, paused.Run, wire.ControlRunning); err != nil {
		t.Fatal(err)
	}
	sum := e.waitSummary(paused.Run, 60*time.Second)
	if sum.Stats.RowsOK != 10 || sum.Stats.RowsFailed != 0 {
		t.Fatalf("after the pause: rows ok/failed = %d/%d, want 10/0 (errors: %v)", sum.Stats.RowsOK, sum.Stats.RowsFailed, e.lines(paused.Run, sink.ErrorsJSONL))
	}
}

// Issue 8 item 14: the server's MaxDeliver advisory is kept in a stream, so a job that
// exhausted its deliveries while no worker was connected is still dead-lettered, and
// its row completes, once a worker starts.
func TestAJobPastMaxDeliverIsDeadLetteredByAWorkerStartedLater(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.MaxDeliver = 2
	ctx := context.Background()
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(1, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	// A worker that died twice with the job: two deliveries given back, then one more
	// fetch, on which the server gives up on the job and announces it. No worker runs.
	cons := e.jobConsumer(rep.Run)
	delivered := 0
	for range 10 {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			_ = m.Nak()
		}
		delivered += n
		if n == 0 && delivered >= e.topo.MaxDeliver {
			break
		}
	}
	if delivered != e.topo.MaxDeliver {
		t.Fatalf("delivered %d times, want MaxDeliver %d", delivered, e.topo.MaxDeliver)
	}
	e.startWorker(workerOpts{})
	e.startCollector("")
	e.waitSummary(rep.Run, 30*time.Second)
	bad := e.lines(rep.Run, sink.ErrorsJSONL)
	if len(bad) != 1 {
		t.Fatalf("error rows = %v, want 1", bad)
	}
	if qe := failedQuery(t, bad[0], "cs1_k1"); qe["reason"] != wire.ReasonMaxDeliveries {
		t.Fatalf("reason = %v, want %s", qe["reason"], wire.ReasonMaxDeliveries)
	}
	jobs, _ := e.js.Stream(ctx, wire.StreamJobs)
	if st, _ := jobs.Info(ctx); st.State.Msgs != 0 {
		t.Fatalf("MQ_JOBS still holds %d messages", st.State.Msgs)
	}
}

// Issue 8 item 14: workers stop polling a run with nothing left to fetch, so its job
// consumer expires (InactiveThreshold); new jobs of the run bring it back; a finished
// run leaves no job consumer.
func TestAnIdleRunsConsumerExpiresAndComesBackForNewJobs(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.JobConsumerInactive = 2 * time.Second
	ctx := context.Background()
	e.startWorker(workerOpts{tweak: func(c *worker.Config) {
		c.IdleRunAfter = 200 * time.Millisecond
		c.DormantCheck = 200 * time.Millisecond
	}})
	const rows = 5
	// No collector yet: the run cannot finish, only go idle.
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	results, _ := e.js.Stream(ctx, wire.StreamResults)
	waitFor(t, 30*time.Second, "every result stored", func() bool {
		st, err := results.Info(ctx)
		return err == nil && st.State.Msgs == rows
	})
	waitFor(t, 30*time.Second, "the idle run's job consumer expired", func() bool { return !e.consumerExists("default", rep.Run) })

	// A job published again (a replay) is picked up: the worker watches dormant runs.
	j := job(rep.Run, 0)
	j.Query = "cs1_k1"
	data, _ := json.Marshal(j)
	if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: wire.JobSubject("default", rep.Run, 0, "cs1_k1"), Data: data}); err != nil {
		t.Fatal(err)
	}
	jobs, _ := e.js.Stream(ctx, wire.StreamJobs)
	waitFor(t, 30*time.Second, "the republished job done", func() bool {
		st, err := jobs.Info(ctx)
		return err == nil && st.State.Msgs == 0
	})

	e.startCollector("")
	if sum := e.waitSummary(rep.Run, 30*time.Second); sum.Stats.RowsOK != rows {
		t.Fatalf("rows ok = %d, want %d", sum.Stats.RowsOK, rows)
	}
	waitFor(t, 30*time.Second, "no job consumer left", func() bool {
		names := jobs.ConsumerNames(ctx)
		n := 0
		for range names.Name() {
			n++
		}
		return names.Err() == nil && n == 0
	})
}

// Issue 8 item 15: a provider error is stored sanitized: the breaker record and the
// audit records carry status, code and type, and nothing of the offered key.
func TestAProviderErrorIsStoredWithoutKeyMaterial(t *testing.T) {
	const key = "sk-proj-WRONGabcdef0123456789xyzw"
	e := setup(t, llmsim.Config{Keys: []string{"right-key"}})
	ctx := context.Background()
	e.startWorker(workerOpts{key: key})
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(2, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	runs, err := e.js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	var breaker []byte
	waitFor(t, 20*time.Second, "a breaker record", func() bool {
		en, err := runs.Get(ctx, wire.BreakerKey("default"))
		if err != nil {
			return false
		}
		breaker = en.Value()
		return true
	})
	audit, err := e.js.Stream(ctx, wire.StreamAudit)
	if err != nil {
		t.Fatal(err)
	}
	var rec []byte
	waitFor(t, 20*time.Second, "an audit record", func() bool {
		m, err := audit.GetLastMsgForSubject(ctx, "audit."+rep.Run+".>")
		if err != nil {
			return false
		}
		rec = m.Data
		return true
	})
	for name, b := range map[string][]byte{"breaker": breaker, "audit": rec} {
		s := string(b)
		for _, leak := range []string{key[:6], key[len(key)-4:], "***"} {
			if strings.Contains(s, leak) {
				t.Errorf("%s record holds key material %q: %s", name, leak, s)
			}
		}
		if !strings.Contains(s, "401") || !strings.Contains(s, "invalid_api_key") {
			t.Errorf("%s record lacks status and code: %s", name, s)
		}
	}
	var b wire.Breaker
	if err := json.Unmarshal(breaker, &b); err != nil || b.Status != 401 || b.Code != "invalid_api_key" {
		t.Errorf("breaker = %+v (%v), want status 401 code invalid_api_key", b, err)
	}
}

// A results stream at its limit (or a NATS server down, a publish timing out) is waited
// out inside the publish: the worker keeps the job (InProgress) through that wait as
// well, not only once the publish gives up, so a wait longer than AckWait costs no
// second call (docs/OPERATIONS.md, "Outcomes of a query job": result not stored).
func TestAPaidCallIsNotRepeatedWhileTheResultsStreamIsFull(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.AckWait = time.Second
	const rows = 5
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	lift := e.startWorkerWithResultsFull(rep.Run, 2)
	waitFor(t, 20*time.Second, "one call per job", func() bool { return e.sim.Stats().Requests >= rows })
	time.Sleep(4 * e.topo.AckWait) // the stream stays full for four AckWaits
	lift()
	e.startCollector("")
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != rows {
		t.Fatalf("rows ok = %d, want %d", sum.Stats.RowsOK, rows)
	}
	if n := e.sim.Stats().Requests; n != rows {
		t.Fatalf("llmsim answered %d calls for %d jobs while their results waited for room, want one each", n, rows)
	}
}
