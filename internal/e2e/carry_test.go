package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// A run in input order carries each well-formed row in the job of its first query: the
// producer publishes no input row message for it (a malformed record keeps its own, as
// it has no job), and every row is written with its input columns, a row whose first
// query failed included.
func TestARunInInputOrderCarriesEachRowInItsFirstJob(t *testing.T) {
	e := setup(t, llmsim.Config{})
	p := e.pipeline(matrixPipeline(1, 2, "max_answer_retries: 0\n"))
	data := csvRows(4, func(i int) (string, string) {
		if i == 1 {
			return "invalid_json", "cs1_k1" // the first query fails: its result still brings the row
		}
		return "", ""
	}) + "r4,\"unclosed\n"
	rep, err := e.produce(p, data, input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, e.js, wire.StreamInput, "input."+rep.Run+".*"); n != 3 {
		t.Fatalf("MQ_INPUT holds %d messages of the run, want 3: the open and seal records and the malformed row's", n)
	}
	e.startWorker(workerOpts{})
	e.startCollector("")
	sum := e.waitSummary(rep.Run, 60*time.Second)
	if sum.Stats.RowsOK != 3 || sum.Stats.RowsFailed != 2 {
		t.Fatalf("summary: %+v, want 3 rows ok and 2 failed", sum.Stats)
	}
	ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
	for i, want := range []string{"r0", "r2", "r3"} {
		if ok[i]["id"] != want || ok[i]["text"] == nil || ok[i]["cs1_k1_echo"] == nil || ok[i]["cs1_k2_echo"] == nil {
			t.Fatalf("success row %d = %v, want %s with its input and both outputs", i, ok[i], want)
		}
	}
	if len(bad) != 2 || bad[0]["id"] != "r1" || bad[0]["text"] == nil {
		t.Fatalf("error rows = %v, want r1 with its input columns, then the malformed record", bad)
	}
	if qe := failedQuery(t, bad[0], "cs1_k1"); qe["reason"] != wire.ReasonInvalidJSON {
		t.Fatalf("r1's failed query: %v, want %s", qe, wire.ReasonInvalidJSON)
	}
	if e := errorOf(t, bad[1]); e["reason"] != wire.ReasonMalformedRecord {
		t.Fatalf("the malformed record's _error: %v", e)
	}
}

// A poison job that carries its row (decodable, but not a valid job) is dead-lettered
// and answered with a synthetic result that brings the row back: the row is written,
// as an error row with its input columns.
func TestAPoisonJobThatCarriesItsRowStillCompletesIt(t *testing.T) {
	e := setup(t, llmsim.Config{})
	const run = "carried-poison"
	e.openOneQueryRun(run)
	good := job(run, 0)
	good.Data = json.RawMessage(`{"id":"r0"}`)
	invalid := job(run, 1)
	invalid.Data, invalid.Outputs = json.RawMessage(`{"id":"r1"}`), nil
	publishJSON(t, e.js, wire.JobSubject("default", run, 0, "q"), good)
	publishJSON(t, e.js, wire.JobSubject("default", run, 1, "q"), invalid)
	publishJSON(t, e.js, wire.InputSealSubject(run), wire.Seal{V: 1, Run: run, Rows: 2})
	e.startWorker(workerOpts{})
	e.startCollector("")
	e.waitSummary(run, 30*time.Second)
	ok, bad := e.lines(run, sink.ResultsJSONL), e.lines(run, sink.ErrorsJSONL)
	if len(ok) != 1 || ok[0]["id"] != "r0" || ok[0]["q_echo"] == nil {
		t.Fatalf("success rows = %v, want r0 with its output", ok)
	}
	if len(bad) != 1 || bad[0]["id"] != "r1" {
		t.Fatalf("error rows = %v, want r1 with its input", bad)
	}
	if qe := failedQuery(t, bad[0], "q"); qe["reason"] != wire.ReasonPoison {
		t.Fatalf("r1's failed query: %v, want %s", qe, wire.ReasonPoison)
	}
}

// A producer killed mid-run and rerun after the rows it had published were written and
// their results deleted finds those rows neither queued nor answered (carried rows have
// no input row message to find): the run's watermark tells it they are written, and
// none of their queries is called again.
func TestAResumedProducerCallsNoCarriedRowAgainOnceWritten(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.Duplicates = 500 * time.Millisecond // the dedup window is no resume mechanism
	e.startWorker(workerOpts{concurrency: 16})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, ""))
	data := csvRows(300, nil)
	const run = "resume-carried"
	// At a checkpoint (every 32 rows): the last 32 rows are flushed, the checkpoint is
	// not written, so the rerun publishes rows 160.. carefully.
	e.interruptProducer(p, data, run, 192)
	kv, err := e.js.KeyValue(context.Background(), e.topo.Names.BucketRuns())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every row published so far written, its job and result gone", func() bool {
		st, err := status.Read(context.Background(), kv, run)
		calls := e.sim.Stats().Requests
		return err == nil && st != nil && calls > 0 && int64(st.Next) == int64(calls) &&
			streamMsgs(t, e.js, wire.StreamJobs, "") == 0 && streamMsgs(t, e.js, wire.StreamResults, "results."+run+".>") == 0
	})
	time.Sleep(time.Second) // past the dedup window
	if _, err := producer.Run(context.Background(), e.js, producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: input.CSV, Run: run, Topology: e.topo}, e.log); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	e.waitSummary(run, 60*time.Second)
	if rows := e.lines(run, sink.ResultsJSONL); len(rows) != 300 || len(byID(rows)) != 300 {
		t.Fatalf("%d lines, %d distinct rows, want 300", len(rows), len(byID(rows)))
	}
	if st := e.sim.Stats(); st.Requests != 300 {
		t.Fatalf("llmsim saw %d calls for 300 jobs: a written row was called again", st.Requests)
	}
}
