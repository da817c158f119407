package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/deadletter"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// streamMsgs returns how many messages a stream holds (matching subject, if not "").
func streamMsgs(t *testing.T, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("open %s: %v", stream, err)
	}
	var opts []jetstream.StreamInfoOpt
	if subject != "" {
		opts = append(opts, jetstream.WithSubjectFilter(subject))
	}
	info, err := s.Info(ctx, opts...)
	if err != nil {
		t.Fatalf("info %s: %v", stream, err)
	}
	if subject == "" {
		return info.State.Msgs
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// counterValue reads a counter's value through a registry, as /metrics would.
func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v += m.GetCounter().GetValue()
		}
	}
	return v
}

type produced struct {
	rep producer.Report
	err error
}

// produceAsync runs the file producer in the background; the test's cleanup stops it.
func (e *env) produceAsync(p *config.Pipeline, data string, f input.Format) <-chan produced {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan produced, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		rep, err := producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: f, Topology: e.topo}, e.log)
		done <- produced{rep, err}
	}()
	e.t.Cleanup(func() { cancel(); <-finished })
	return done
}

// Issue 8, item 1: a jobs stream at its MaxMsgs limit rejects publishes with err_code
// 10077 ("maximum messages exceeded"), the same code as a first-writer duplicate. The
// producer must wait for room and publish every job, never count a rejected job done.
func TestAFullJobsStreamMakesTheProducerWaitNotDrop(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.MaxJobs = 5
	p := e.pipeline(matrixPipeline(1, 1, ""))
	done := e.produceAsync(p, csvRows(20, nil), input.CSV)

	// With no worker, 5 jobs fill the stream. Either the producer reports the stream full
	// and waits (right), or it returns as if all 20 were published (wrong).
	var early *produced
	waitFor(t, 60*time.Second, "the producer to report a full stream or to return", func() bool {
		select {
		case o := <-done:
			early = &o
			return true
		default:
		}
		return strings.Contains(e.logBuf.String(), "stream full")
	})
	if early != nil {
		t.Fatalf("producer returned (report %+v, err %v) while MQ_JOBS holds %d of the 20 jobs: the rest were dropped",
			early.rep, early.err, streamMsgs(t, e.js, wire.StreamJobs, ""))
	}
	if n := streamMsgs(t, e.js, wire.StreamJobs, ""); n != 5 {
		t.Fatalf("MQ_JOBS holds %d jobs, want 5 (its limit)", n)
	}
	if n := counterValue(t, queue.StreamFullWaits("jobs")); n == 0 {
		t.Fatal("mq_publish_stream_full_total{kind=jobs} = 0 while the producer waits for room")
	}

	// Once workers drain the stream, every job arrives and the run completes whole.
	e.startWorker(workerOpts{})
	e.startCollector("")
	var o produced
	select {
	case o = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("producer did not finish within 60s of the stream draining")
	}
	if o.err != nil || o.rep.Jobs != 20 {
		t.Fatalf("producer: report %+v, err %v; want 20 jobs, no error", o.rep, o.err)
	}
	e.waitSummary(o.rep.Run, 60*time.Second)
	if ok := e.lines(o.rep.Run, sink.ResultsJSONL); len(ok) != 20 {
		t.Fatalf("%d success rows, want 20", len(ok))
	}
}

// Issue 8, item 1 (worker side): a results stream at its limit rejects a result with the
// same err_code as a first-result-wins duplicate. The worker must keep the result and
// publish it once there is room, never ack the job as if the result were stored.
func TestAFullResultsStreamMakesTheWorkerWaitNotAck(t *testing.T) {
	e := setup(t, llmsim.Config{})
	p := e.pipeline(matrixPipeline(1, 1, ""))
	rep, err := e.produce(p, csvRows(5, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	lift := e.startWorkerWithResultsFull(rep.Run, 2)
	var dropped bool
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("MQ_JOBS %d, MQ_RESULTS %d; logs:\n%s", streamMsgs(t, e.js, wire.StreamJobs, ""), streamMsgs(t, e.js, wire.StreamResults, ""), e.logBuf.String())
		}
	})
	waitFor(t, 60*time.Second, "the worker to report a full stream, or to ack every job", func() bool {
		if streamMsgs(t, e.js, wire.StreamJobs, "") == 0 && streamMsgs(t, e.js, wire.StreamResults, "") == 2 {
			dropped = true
			return true
		}
		return strings.Contains(e.logBuf.String(), "stream full")
	})
	if dropped {
		t.Fatal("every job was acked while MQ_RESULTS holds 2 of the 5 results: 3 paid results were dropped")
	}
	lift()
	e.startCollector("")
	e.waitSummary(rep.Run, 60*time.Second)
	if ok := e.lines(rep.Run, sink.ResultsJSONL); len(ok) != 5 {
		t.Fatalf("%d success rows, want 5", len(ok))
	}
}

// bigPipeline renders the text column twice into one prompt, so a row of half the
// server's max_payload fits in a message while its prompt does not.
const bigPipeline = `llm: {deployment: default, model: sim-model}
output_fields:
  echo: {type: string}
case_studies:
  - {name: cs1, input_fields: [text, text]}
criteria:
  - {name: k1}
template: |
  {{ row.input_1 }} {{ row.input_2 }} [[mark:{{ row.source_row.id }}.cs1_k1]]
`

// Issue 8, item 6: a row, or a rendered prompt, too large for one message becomes an
// error row with its own reason (row_too_large, naming the row, its input line, its size
// and the limit); the run goes on and completes.
func TestARowTooLargeForAMessageBecomesAnErrorRow(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(bigPipeline)
	var b strings.Builder
	b.WriteString("id,text\n")
	for i := range 5 {
		text := "short text"
		switch i {
		case 1:
			text = strings.Repeat("p", 600<<10) // the row fits, its prompt (twice the text) does not
		case 3:
			text = strings.Repeat("r", 1200<<10) // the row itself does not fit
		}
		fmt.Fprintf(&b, "r%d,%s\n", i, text)
	}
	rep, err := e.produce(p, b.String(), input.CSV)
	if err != nil {
		t.Fatalf("producer: %v; a row too large for a message must become an error row, not stop the run", err)
	}
	if rep.Rows != 5 || rep.RowErrors != 2 {
		t.Fatalf("report %+v, want 5 rows with 2 row errors", rep)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	if ok := e.lines(rep.Run, sink.ResultsJSONL); len(ok) != 3 {
		t.Fatalf("%d success rows, want 3", len(ok))
	}
	bad := e.lines(rep.Run, sink.ErrorsJSONL)
	if len(bad) != 2 {
		t.Fatalf("%d error rows, want 2", len(bad))
	}
	for i, want := range []struct {
		row int
		id  any
	}{{1, "r1"}, {3, nil}} {
		er, _ := bad[i]["_error"].(map[string]any)
		msg, _ := er["message"].(string)
		line := want.row + 2 // the header is line 1
		if er["reason"] != "row_too_large" || er["row"] != float64(want.row) || er["line"] != float64(line) || er["limit_bytes"] == nil || er["size_bytes"] == nil ||
			!strings.Contains(msg, fmt.Sprintf("line %d (row %d)", line, want.row)) || bad[i]["id"] != want.id {
			t.Fatalf("error row %d = id %v, _error %v; want reason %s naming line %d, row %d, its size and the limit", i, bad[i]["id"], er, wire.ReasonRowTooLarge, line, want.row)
		}
	}
}

// serve starts the producer service for one pipeline, "assess", and returns a plain
// NATS publisher for submissions (what an upstream system sends, docs/WIRE.md).
func (e *env) serve(p *config.Pipeline, cfg producer.ServiceConfig) func(subject, body string) {
	e.t.Helper()
	cfg.Pipelines = map[string]*config.Pipeline{"assess": p}
	cfg.Topology = e.topo
	e.run("producer-service", func(ctx context.Context) error { return producer.Serve(ctx, e.js, cfg, e.log) })
	waitFor(e.t, 60*time.Second, "the service's consumer", func() bool {
		_, err := e.js.Consumer(context.Background(), wire.StreamSubmit, producer.ServiceConsumer)
		return err == nil
	})
	nc, _ := e.nats.Connect(e.t)
	return func(subject, body string) {
		e.t.Helper()
		if err := nc.Publish(subject, []byte(body)); err != nil {
			e.t.Fatal(err)
		}
		if err := nc.FlushTimeout(10 * time.Second); err != nil {
			e.t.Fatal(err)
		}
	}
}

// submit publishes a run's open record, its rows in the given order, and its seal.
func submit(pub func(subject, body string), run string, rows ...int) {
	pub(wire.SubmitOpenSubject("assess", run), `{"v":1}`)
	for _, i := range rows {
		pub(wire.SubmitRowSubject("assess", run, i), fmt.Sprintf(`{"v":1,"data":{"id":"r%d","text":"text of row %d","fault":"","fault_query":""}}`, i, i))
	}
	pub(wire.SubmitSealSubject("assess", run), fmt.Sprintf(`{"v":1,"rows":%d}`, len(rows)))
}

// Issue 8, item 3: the service acks a submitted row only once every publish of it is
// stored. A jobs stream full (MaxJobs 2, no worker) rejects the rows' jobs: the rows
// stay on MQ_SUBMIT, and once workers drain the stream all 5 rows complete.
func TestTheServiceAcksASubmittedRowOnlyOnceItsPublishesAreStored(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.MaxJobs = 2
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{})
	const run = "acked-late"
	submit(pub, run, 0, 1, 2, 3, 4)
	var lost bool
	waitFor(t, 60*time.Second, "the service to report a full stream, or to ack every row", func() bool {
		if streamMsgs(t, e.js, wire.StreamSubmit, "") == 0 && streamMsgs(t, e.js, wire.StreamJobs, "") == 2 {
			lost = true
			return true
		}
		return strings.Contains(e.logBuf.String(), "stream full")
	})
	if lost {
		t.Fatal("every submitted row was acked while MQ_JOBS holds 2 of the 5 jobs: 3 rows were lost")
	}
	if n := streamMsgs(t, e.js, wire.StreamSubmit, "submit.assess."+run+".*"); n < 3 {
		t.Fatalf("MQ_SUBMIT holds %d records of the run while 3 rows' jobs are not stored; want them all kept until stored", n)
	}
	e.startWorker(workerOpts{})
	e.startCollector("")
	e.waitSummary(run, 60*time.Second)
	if ok := e.lines(run, sink.ResultsJSONL); len(ok) != 5 {
		t.Fatalf("%d success rows, want 5", len(ok))
	}
}

// Issue 8, item 12: rows submitted out of order (2, 3, 0, 1) with max-ahead 2 must not
// deadlock flow control (2 and 3 wait for the window, 0 and 1 open it), and nothing of
// another run waits behind them.
func TestSubmittedRowsOutOfOrderDoNotDeadlockFlowControl(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{MaxAhead: 2})
	submit(pub, "out-of-order", 2, 3, 0, 1)
	submit(pub, "in-order", 0, 1, 2, 3)
	for _, run := range []string{"in-order", "out-of-order"} {
		e.waitSummary(run, 60*time.Second)
		if ok := e.lines(run, sink.ResultsJSONL); len(ok) != 4 {
			t.Fatalf("run %s: %d success rows, want 4", run, len(ok))
		}
	}
}

// Issue 8, item 12: a paused submitted run holds only itself; another run submitted
// after it completes, and the paused one completes once resumed.
func TestPausingOneSubmittedRunDoesNotHoldAnother(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{})
	ctx := context.Background()
	waitFor(t, 60*time.Second, "the service to create the runs bucket", func() bool {
		_, err := e.js.KeyValue(ctx, wire.BucketRuns)
		return err == nil
	})
	if err := status.SetControl(ctx, e.js, e.topo.Names, "held", wire.ControlPaused); err != nil {
		t.Fatal(err)
	}
	submit(pub, "held", 0, 1, 2)
	submit(pub, "free", 0, 1, 2)
	e.waitSummary("free", 60*time.Second)
	if n := streamMsgs(t, e.js, wire.StreamInput, "input.held.*"); n > 2 { // its open and seal records only
		t.Fatalf("the paused run has %d input records on the bus, want only its open and seal records", n)
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, "held", wire.ControlRunning); err != nil {
		t.Fatal(err)
	}
	e.waitSummary("held", 60*time.Second)
	if ok := e.lines("held", sink.ResultsJSONL); len(ok) != 3 {
		t.Fatalf("%d success rows of the resumed run, want 3", len(ok))
	}
}

// Issue 8, item 12: a submitted run cancelled before its rows are published completes:
// each of its rows is an error row with reason cancelled, nothing of it is called, and
// it does not hold other runs.
func TestACancelledSubmittedRunCompletesAsCancelled(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{})
	ctx := context.Background()
	waitFor(t, 60*time.Second, "the service to create the runs bucket", func() bool {
		_, err := e.js.KeyValue(ctx, wire.BucketRuns)
		return err == nil
	})
	if err := status.SetControl(ctx, e.js, e.topo.Names, "gone", wire.ControlCancelled); err != nil {
		t.Fatal(err)
	}
	submit(pub, "gone", 0, 1, 2)
	submit(pub, "after", 0, 1)
	e.waitSummary("after", 60*time.Second)
	e.waitSummary("gone", 60*time.Second)
	bad := e.lines("gone", sink.ErrorsJSONL)
	if len(bad) != 3 {
		t.Fatalf("%d error rows of the cancelled run, want 3", len(bad))
	}
	for _, r := range bad {
		if er, _ := r["_error"].(map[string]any); er["reason"] != wire.ReasonCancelled || r["id"] == nil {
			t.Fatalf("row %v: _error %v, want the row with reason %s", r["id"], r["_error"], wire.ReasonCancelled)
		}
	}
	if st := e.sim.Stats(); st.Requests != 2 {
		t.Fatalf("llmsim saw %d requests, want 2 (the other run's rows only)", st.Requests)
	}
}

// Issue 8, item 13: a run id that is not one valid subject token of at most 64
// characters is rejected at the door: its records are terminated with the reason
// logged and counted, and nothing of it reaches the bus.
func TestASubmittedRunWithAnInvalidIDIsRejectedAtTheDoor(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	m := producer.NewMetrics() // BEFORE-SKIP-LINE
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{Metrics: m})
	bad := []string{"dollar$run", strings.Repeat("x", 65)}
	for _, run := range bad {
		submit(pub, run, 0, 1)
	}
	submit(pub, "valid-run", 0, 1)
	e.waitSummary("valid-run", 60*time.Second)
	waitFor(t, 60*time.Second, "MQ_SUBMIT to be empty", func() bool { return streamMsgs(t, e.js, wire.StreamSubmit, "") == 0 })
	for _, run := range bad {
		if n := streamMsgs(t, e.js, wire.StreamInput, "input."+run+".>"); n != 0 {
			t.Fatalf("run %.20q: %d input records on the bus, want none", run, n)
		}
	}
	if n := streamMsgs(t, e.js, wire.StreamJobs, ""); n != 0 {
		t.Fatalf("MQ_JOBS holds %d jobs of invalid runs", n)
	}
	// BEFORE-SKIP-START
	if n := counterValue(t, m.Rejected(producer.RejectInvalidRunID)); n != 8 {
		t.Fatalf("mq_producer_submitted_rejected_total{reason=invalid_run_id} = %v, want 8 (2 runs x open, 2 rows, seal)", n)
	}
	if !strings.Contains(e.logBuf.String(), `"reason":"invalid_run_id"`) {
		t.Fatal("no log line gives the reason invalid_run_id")
	}
	// The file producer uses the same check for --run.
	_, err := producer.Run(context.Background(), e.js, producer.Config{Pipeline: e.pipeline(matrixPipeline(1, 1, "")),
		Input: strings.NewReader(csvRows(1, nil)), Format: input.CSV, Run: bad[1], Topology: e.topo}, e.log)
	var ue *producer.UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "64") {
		t.Fatalf("file producer with a 65-character --run: err = %v, want a usage error naming the limit", err)
	}
	// BEFORE-SKIP-END
}

// Issue 8, item 9: replaying a dead letter whose row is already written (the run still
// open, the row's results purged) would pay for a call whose result is ignored: the
// replay is refused with a message naming the row, and nothing is published.
func TestReplayIsRefusedForARowAlreadyWritten(t *testing.T) {
	e := setup(t, llmsim.Config{})
	ctx := context.Background()
	const run = "written-row"
	e.openOneQueryRun(run)
	for row := range 2 {
		publishJSON(t, e.js, wire.InputRowSubject(run, row), wire.Row{V: 1, Run: run, Row: row, Data: json.RawMessage(fmt.Sprintf(`{"id":"r%d"}`, row))})
	}
	publishJSON(t, e.js, wire.ResultSubject(run, 0, "q"), wire.Result{V: 1, Run: run, Row: 0, Query: "q", OK: true,
		Fields: map[string]json.RawMessage{"q_echo": json.RawMessage(`"hello"`)}, Usage: &wire.Usage{}, Model: "m", Attempt: 1})
	e.startCollector("")
	waitFor(t, 60*time.Second, "row 0 to be written and its result purged", func() bool {
		return streamMsgs(t, e.js, wire.StreamResults, wire.ResultSubject(run, 0, "q")) == 0 &&
			len(e.linesIfAny(run, sink.ResultsJSONL)) == 1
	})
	dead := nats.NewMsg(wire.DeadSubject("default", run))
	dead.Data, _ = json.Marshal(job(run, 0))
	dead.Header.Set(wire.HeaderSubject, wire.JobSubject("default", run, 0, "q"))
	dead.Header.Set(wire.HeaderReason, "test")
	ack, err := e.js.PublishMsg(ctx, dead)
	if err != nil {
		t.Fatal(err)
	}
	err = deadletter.Replay(ctx, e.js, e.topo.Names, ack.Sequence)
	if err == nil {
		t.Fatal("replay of a dead letter whose row is already written was accepted: a paid call whose result is ignored")
	}
	if !strings.Contains(err.Error(), "row 0") || !strings.Contains(err.Error(), "written") {
		t.Fatalf("replay refused with %q; want a message naming row 0 as written", err)
	}
	if n := streamMsgs(t, e.js, wire.StreamJobs, ""); n != 0 {
		t.Fatalf("MQ_JOBS holds %d jobs after a refused replay", n)
	}
}

// linesIfAny is lines, or nothing while the file does not exist yet.
func (e *env) linesIfAny(run, name string) []map[string]any {
	if _, err := os.Stat(filepath.Join(e.out, run, name)); err != nil {
		return nil
	}
	return e.lines(run, name)
}

// A finished run's id is refused: its data and checkpoints are purged, so publishing it
// again would pay for every call a second time while its output is already final.
func TestAFinishedRunIDIsRefused(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rep, err := e.produce(p, csvRows(5, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := status.WaitRun(ctx, e.js, e.topo.Names, rep.Run, nil); err != nil {
		t.Fatal(err)
	}
	_, err = producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(csvRows(5, nil)), Format: input.CSV, Topology: e.topo, Run: rep.Run}, e.log)
	var usage *producer.UsageError
	if !errors.As(err, &usage) || !strings.Contains(err.Error(), "already finished") {
		t.Fatalf("second producer with run id %s: %v, want a usage error saying the run already finished", rep.Run, err)
	}
	for _, stream := range []string{wire.StreamInput, wire.StreamJobs} {
		if n := streamMsgs(t, e.js, stream, ""); n != 0 {
			t.Fatalf("%s holds %d messages after the refused rerun: it published", stream, n)
		}
	}
}

// A run id another publisher has taken is refused by the file producer, and nothing of
// it is published: a run the producer service accepted (its submission record), and a
// run opened directly on the bus with another pipeline (docs/WIRE.md). Before, the file
// producer's rows joined the other run: with other queries than its open record names,
// the run never ended. (The same pipeline's open record without a checkpoint is the
// producer's own earlier attempt, stopped before its first checkpoint: it resumes, as
// TestAProducerKilledBeforeItsFirstCheckpointResumes shows.)
func TestARunIDAnotherPublisherTookIsRefusedByTheFileProducer(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pub := e.serve(e.pipeline(matrixPipeline(2, 2, "")), producer.ServiceConfig{})
	pub(wire.SubmitOpenSubject("assess", "taken"), `{"v":1}`)
	waitFor(t, 60*time.Second, "the service to accept run taken", func() bool {
		kv, err := e.js.KeyValue(context.Background(), wire.BucketRuns)
		if err != nil {
			return false
		}
		_, err = kv.Get(context.Background(), wire.SubmissionKey("taken"))
		return err == nil
	})
	other := e.pipeline(matrixPipeline(1, 1, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	produce := func(p *config.Pipeline, run string) error {
		_, err := producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(csvRows(3, nil)), Format: input.CSV, Topology: e.topo, Run: run}, e.log)
		return err
	}
	var usage *producer.UsageError
	if err := produce(other, "taken"); !errors.As(err, &usage) || !strings.Contains(err.Error(), "submitted to the producer service") {
		t.Fatalf("file producer on the service's run: %v, want a usage error naming the service", err)
	}
	if n := streamMsgs(t, e.js, wire.StreamJobs, "jobs.>"); n != 0 {
		t.Fatalf("%d jobs on the bus after the refusal, want none", n)
	}

	open, err := json.Marshal(wire.Open{V: wire.Version, Run: "direct", ConfigHash: "another-publishers-pipeline", Queries: []wire.QueryInfo{{Name: "x", Columns: []string{"x_a"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(ctx, wire.InputOpenSubject("direct"), open); err != nil {
		t.Fatal(err)
	}
	if err := produce(other, "direct"); !errors.As(err, &usage) || !strings.Contains(err.Error(), "opened by another publisher") {
		t.Fatalf("file producer on a run opened directly: %v, want a usage error naming the other publisher", err)
	}
	if n := streamMsgs(t, e.js, wire.StreamInput, "input.direct.>"); n != 1 {
		t.Fatalf("%d input records of run direct, want only the other publisher's open record", n)
	}
}

// A submitted run whose id belongs to a finished run is refused at the door, as the file
// producer refuses it: nothing is published, no call is paid twice.
func TestASubmittedRunReusingAFinishedRunIDIsRefused(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	m := producer.NewMetrics()
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{Metrics: m})
	submit(pub, "used-once", 0, 1)
	e.waitSummary("used-once", 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := status.WaitRun(ctx, e.js, e.topo.Names, "used-once", nil); err != nil {
		t.Fatal(err)
	}
	calls := e.sim.Stats().Requests
	submit(pub, "used-once", 0, 1)
	waitFor(t, 60*time.Second, "the reused run's records to be refused", func() bool {
		return counterValue(t, m.Rejected(producer.RejectFinishedRun)) == 4 // open, 2 rows, seal
	})
	if n := streamMsgs(t, e.js, wire.StreamInput, "input.used-once.>"); n != 0 {
		t.Fatalf("%d input records of the reused run on the bus, want none", n)
	}
	if got := e.sim.Stats().Requests; got != calls {
		t.Fatalf("llmsim saw %d calls, want %d: a reused run id was billed again", got, calls)
	}
}
