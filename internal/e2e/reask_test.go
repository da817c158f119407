package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// readAudit decodes every record MQ_AUDIT holds now (its messages are batches).
func (e *env) readAudit() []worker.AuditRecord {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, e.topo.Names.StreamAudit())
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []worker.AuditRecord
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			e.t.Fatalf("audit message %d: %v", seq, err)
		}
		recs, err := worker.DecodeAudit(m.Data)
		if err != nil {
			e.t.Fatalf("audit message %d: %v", seq, err)
		}
		out = append(out, recs...)
	}
	return out
}

// auditRecordsOf reads every record of MQ_AUDIT once it holds calls() of them (one per
// call the simulators answered).
func (e *env) auditRecordsOf(calls func() int64) []worker.AuditRecord {
	e.t.Helper()
	var out []worker.AuditRecord
	waitFor(e.t, 10*time.Second, "an audit record per call", func() bool {
		out = e.readAudit()
		return int64(len(out)) == calls()
	})
	return out
}

// auditRecords reads every record of MQ_AUDIT once it holds one per call llmsim answered.
func (e *env) auditRecords() []worker.AuditRecord {
	e.t.Helper()
	return e.auditRecordsOf(func() int64 { return e.sim.Stats().Requests })
}

// Issue 11, acceptance 7: with 5 % of answers invalid JSON on their first try only,
// every row succeeds: each bad answer is asked again (max_answer_retries defaults to 1),
// here with the reason appended (reask_with_error), and the audit shows the re-asks.
func TestInvalidFirstAnswersAreAskedAgainAndEveryRowSucceeds(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 11, FirstTryOnly: true, Faults: llmsim.Faults{llmsim.FaultInvalidJSON: 5}})
	e.startWorker(workerOpts{})
	e.startCollector("")
	const rows, queries = 100, 2
	rep, err := e.produce(e.pipeline(matrixPipeline(1, queries, "reask_with_error: true\n")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	sum := e.waitSummary(rep.Run, 90*time.Second)
	st := e.sim.Stats()
	bad := st.ByFault[llmsim.FaultInvalidJSON]
	if bad == 0 {
		t.Fatalf("no invalid answer injected (%v): the test proves nothing", st.ByFault)
	}
	if ok, failed := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL); len(ok) != rows || len(failed) != 0 {
		t.Fatalf("got %d ok and %d error rows, want %d and 0", len(ok), len(failed), rows)
	}
	if want := int64(rows*queries) + bad; st.Requests != want || sum.Stats.Calls != want {
		t.Errorf("llmsim answered %d calls, the summary counts %d; want one per query plus one per bad answer, %d", st.Requests, sum.Stats.Calls, want)
	}

	t.Run("each re-ask is audited as one, after the bad answer, with the reason appended", func(t *testing.T) {
		byQuery := map[wire.Addr][]worker.AuditRecord{}
		for _, rec := range e.auditRecords() {
			a := wire.Addr{Run: rec.Run, Row: rec.Row, Query: rec.Query}
			byQuery[a] = append(byQuery[a], rec)
		}
		reasks := 0
		for a, recs := range byQuery {
			switch len(recs) {
			case 1:
				if recs[0].Reask != 0 || recs[0].Error != nil {
					t.Errorf("%s: a single attempt audited as %+v", a, recs[0])
				}
			case 2:
				first, again := recs[0], recs[1]
				if first.Reask != 0 || first.Error == nil || first.Error.Type != "permanent" {
					t.Errorf("%s: first attempt audited as %+v, want the bad answer (permanent error, no reask)", a, first)
				}
				if again.Reask != 1 || again.Error != nil || again.Status != 200 {
					t.Errorf("%s: second attempt audited as %+v, want re-ask 1, answered", a, again)
				}
				if again.RequestHash == first.RequestHash {
					t.Errorf("%s: the re-ask sent the same request: reask_with_error appended nothing", a)
				}
				reasks++
			default:
				t.Errorf("%s: %d attempts audited, want 1 or 2", a, len(recs))
			}
		}
		if int64(reasks) != bad {
			t.Errorf("%d re-asks audited, llmsim gave %d bad answers", reasks, bad)
		}
	})
}

// max_answer_retries: 0 turns re-asking off: a bad first answer fails its row with the
// precise reason, after one call.
func TestWithoutAnswerRetriesABadAnswerFailsItsRow(t *testing.T) {
	e := setup(t, llmsim.Config{Seed: 11, FirstTryOnly: true, Faults: llmsim.Faults{llmsim.FaultInvalidJSON: 5}})
	e.startWorker(workerOpts{})
	e.startCollector("")
	const rows, queries = 100, 2
	rep, err := e.produce(e.pipeline(matrixPipeline(1, queries, "max_answer_retries: 0\n")), csvRows(rows, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 90*time.Second)
	st := e.sim.Stats()
	bad := st.ByFault[llmsim.FaultInvalidJSON]
	if bad == 0 || st.Requests != rows*queries {
		t.Fatalf("llmsim answered %d calls with %d bad answers; want one call per query, some bad", st.Requests, bad)
	}
	failed := e.lines(rep.Run, sink.ErrorsJSONL)
	if len(failed) == 0 {
		t.Fatalf("no error row for %d bad answers", bad)
	}
	n := 0
	for _, r := range failed {
		for _, f := range errorOf(t, r)["failed_queries"].([]any) {
			if qe := f.(map[string]any)["error"].(map[string]any); qe["reason"] != wire.ReasonInvalidJSON {
				t.Errorf("row %v: reason %v, want %s", r["id"], qe["reason"], wire.ReasonInvalidJSON)
			}
			n++
		}
	}
	if int64(n) != bad {
		t.Errorf("%d failed queries, llmsim gave %d bad answers", n, bad)
	}
}

// The count of unusable answers lives in mq_retry, not in the worker: a worker that
// counted a bad answer and died before its NAK leaves the re-ask to the job's next
// delivery, which asks again, with the reason appended (reask_with_error), and says so
// in the audit.
func TestAReaskSurvivesTheWorkerThatCountedTheBadAnswer(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.AckWait = 2 * time.Second
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "reask_with_error: true\n")), csvRows(1, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The worker that dies: it takes the job's first delivery, counts a bad answer in
	// mq_retry as the worker does, and never NAKs nor acks.
	cons := e.jobConsumer(rep.Run)
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	msg, ok := <-batch.Messages()
	if !ok {
		t.Fatalf("no job delivered: %v", batch.Error())
	}
	var job wire.Job
	if err := json.Unmarshal(msg.Data(), &job); err != nil {
		t.Fatal(err)
	}
	const cause = "invalid_json: answer is not JSON"
	retry, err := e.js.KeyValue(ctx, wire.BucketRetry)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := retry.Create(ctx, wire.JobKey(job.Run, job.Row, job.Query),
		[]byte(`{"answer_errors":1,"last_answer_error":"`+cause+`","naks":1,"calls":1}`)); err != nil {
		t.Fatal(err)
	}

	e.startWorker(workerOpts{})
	e.startCollector("")
	sum := e.waitSummary(rep.Run, 30*time.Second)
	if sum.Stats.RowsOK != 1 || sum.Stats.Calls != 2 {
		t.Fatalf("summary %+v, want the row ok after 2 calls (the dead worker's and the re-ask)", sum.Stats)
	}
	recs := e.auditRecords()
	if len(recs) != 1 {
		t.Fatalf("%d audit records, want the re-ask's only", len(recs))
	}
	want := job.Request
	want.Messages = append(slices.Clip(want.Messages), wire.Message{Role: "user", Content: worker.ReaskMessage(cause)})
	b, _ := json.Marshal(want)
	sha := sha256.Sum256(b)
	if got := recs[0]; got.Reask != 1 || got.Attempt != 2 || got.RequestHash != hex.EncodeToString(sha[:]) {
		t.Errorf("audit record %+v: want re-ask 1 on delivery 2, the request with the reason appended", got)
	}
}
