package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// errorOf returns a row's _error object.
func errorOf(t *testing.T, row map[string]any) map[string]any {
	t.Helper()
	e, ok := row["_error"].(map[string]any)
	if !ok {
		t.Fatalf("row %v has no _error object", row["id"])
	}
	return e
}

// failedQuery returns the error of one failed query of a query_failed row.
func failedQuery(t *testing.T, row map[string]any, query string) map[string]any {
	t.Helper()
	e := errorOf(t, row)
	if e["reason"] != wire.ReasonQueryFailed {
		t.Fatalf("row %v: _error.reason = %v, want %s", row["id"], e["reason"], wire.ReasonQueryFailed)
	}
	fq, _ := e["failed_queries"].([]any)
	for _, f := range fq {
		m := f.(map[string]any)
		if m["query"] == query {
			return m["error"].(map[string]any)
		}
	}
	t.Fatalf("row %v: query %s not among failed_queries %v", row["id"], query, fq)
	return nil
}

func byID(rows []map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, r := range rows {
		id, _ := r["id"].(string)
		out[id] = r
	}
	return out
}

// Acceptance 2: a query that always gets 429 fails its row with capacity_retry_timeout
// once its budget (from the first capacity error) is spent; every other row succeeds.
func TestCapacityBudgetSpentFailsOnlyThatRow(t *testing.T) {
	e := setup(t, llmsim.Config{InjectedRetryAfter: 5 * time.Millisecond})
	e.startWorker(workerOpts{concurrency: 32})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 3, "max_capacity_retry_seconds: 2\n"))
	rep, err := e.produce(p, csvRows(10, func(i int) (string, string) {
		if i == 4 {
			return "429", "cs1_k2"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
	if len(ok) != 9 || len(bad) != 1 {
		t.Fatalf("got %d ok and %d error rows, want 9 and 1", len(ok), len(bad))
	}
	if bad[0]["id"] != "r4" {
		t.Fatalf("error row is %v, want r4", bad[0]["id"])
	}
	qe := failedQuery(t, bad[0], "cs1_k2")
	if qe["reason"] != wire.ReasonCapacityTimeout {
		t.Fatalf("inner reason = %v, want %s", qe["reason"], wire.ReasonCapacityTimeout)
	}
	if qe["status_code"] != float64(429) {
		t.Fatalf("status_code = %v, want 429", qe["status_code"])
	}
	if el, _ := qe["elapsed"].(float64); el < 2 {
		t.Fatalf("elapsed = %v, want >= 2 (the budget)", qe["elapsed"])
	}
	if qe["max"] != float64(2) {
		t.Fatalf("max = %v, want 2", qe["max"])
	}
	if e := errorOf(t, bad[0]); e["succeeded_count"] != float64(2) || e["total_count"] != float64(3) {
		t.Fatalf("counts = %v/%v, want 2/3", e["succeeded_count"], e["total_count"])
	}
	for _, col := range []string{"cs1_k1_echo", "cs1_k3_echo", "cs1_k2_echo"} {
		if _, ok := bad[0][col]; ok {
			t.Fatalf("error row carries output column %s: partial row", col)
		}
	}
}

// Acceptance 3: answers that are not what was asked fail with a precise reason, and only
// their own row.
func TestBadAnswersFailTheirRowWithAPreciseReason(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{concurrency: 32})
	e.startCollector("")
	cases := map[string]string{"r1": "invalid_json", "r3": "missing_field", "r5": "wrong_type", "r7": "truncated"}
	want := map[string]string{"r1": wire.ReasonInvalidJSON, "r3": wire.ReasonMissingField, "r5": wire.ReasonTypeMismatch, "r7": wire.ReasonTruncated}
	p := e.pipeline(strings.Replace(matrixPipeline(1, 2, ""), "note: {type: string, suffix: why}", "score: {type: integer}", 1))
	rep, err := e.produce(p, csvRows(10, func(i int) (string, string) {
		if f, ok := cases[fmt.Sprintf("r%d", i)]; ok {
			return f, "cs1_k2"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
	if len(ok) != 6 || len(bad) != 4 {
		t.Fatalf("got %d ok and %d error rows, want 6 and 4", len(ok), len(bad))
	}
	for id, r := range byID(bad) {
		qe := failedQuery(t, r, "cs1_k2")
		if qe["reason"] != want[id] {
			t.Errorf("row %s: reason %v, want %s (error %v)", id, qe["reason"], want[id], qe)
		}
	}
	for _, r := range ok {
		if _, isInt := r["cs1_k1_score"].(float64); !isInt {
			t.Errorf("row %v: cs1_k1_score = %v, want a number", r["id"], r["cs1_k1_score"])
		}
	}
}

// Acceptance 4: one worker with 100 slots keeps its slots full with calls of many rows
// at once (the replaced system processed one row at a time: 10 calls). The calls take
// 30 s, so the only way to reach 90 in flight is to run the calls of at least 9 rows
// side by side; how fast the machine dispatches does not matter (the throughput figure
// is in make bench).
func TestOneWorkerRunsCallsOfManyRowsAtOnce(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 30 * time.Second})
	tp := worker.ThrottleParams(config.DefaultThrottle())
	p := e.pipeline(matrixPipeline(2, 5, ""))
	// Publish first so the backlog is there when the worker starts.
	if _, err := e.produce(p, csvRows(50, nil), input.CSV); err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.startWorker(workerOpts{concurrency: 100, throttle: &tp})
	waitInFlight(t, e, 90)
	if st := e.sim.Stats(); st.Requests > 100 {
		t.Fatalf("llmsim saw %d requests, want at most the 100 slots", st.Requests)
	}
}

// Acceptance 5: a job delivered twice and a result published twice produce one row, and
// the first result wins.
func TestDuplicateJobsAndResultsProduceOneRow(t *testing.T) {
	e := setup(t, llmsim.Config{})
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rep, err := e.produce(p, csvRows(5, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	ctx := context.Background()
	// A second copy of row 0's first job (another message id, so the stream keeps both).
	js := e.js
	stream, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := stream.GetLastMsgForSubject(ctx, wire.JobSubject("default", rep.Run, 0, "cs1_k1"))
	if err != nil {
		t.Fatalf("read job: %v", err)
	}
	dup := nats.NewMsg(orig.Subject)
	dup.Data = orig.Data
	dup.Header.Set(wire.HeaderMsgID, "dup-copy")
	if _, err := js.PublishMsg(ctx, dup); err != nil {
		t.Fatalf("publish duplicate job: %v", err)
	}
	// A result for row 1 published before any worker runs: it must win over the worker's.
	pre := wire.Result{V: 1, Run: rep.Run, Row: 1, Query: "cs1_k2", OK: true, Model: "pre",
		Fields: map[string]json.RawMessage{"cs1_k2_echo": json.RawMessage(`"pre-published"`), "cs1_k2_why": json.RawMessage(`"pre"`)},
		Usage:  &wire.Usage{}}
	for range 2 { // twice: the second is refused by the stream (first writer wins)
		b, _ := json.Marshal(pre)
		_, _ = js.Publish(ctx, wire.ResultSubject(rep.Run, 1, "cs1_k2"), b)
	}
	e.startWorker(workerOpts{})
	e.startCollector("")
	e.waitSummary(rep.Run, 60*time.Second)
	rows := e.lines(rep.Run, sink.ResultsJSONL)
	if len(rows) != 5 {
		t.Fatalf("got %d rows, want 5", len(rows))
	}
	ids := byID(rows)
	if len(ids) != 5 {
		t.Fatalf("duplicate row ids in %d lines", len(rows))
	}
	if got := ids["r1"]["cs1_k2_echo"]; got != "pre-published" {
		t.Fatalf("row r1 cs1_k2_echo = %v, want the first result %q", got, "pre-published")
	}
	if st := e.sim.Stats(); st.Requests != 11 {
		// 5 rows x 2 queries plus the duplicate job (a worker does not look for a result
		// before calling; the stream refuses its late result).
		t.Fatalf("llmsim saw %d requests, want 11", st.Requests)
	}
}

// Acceptance 8: a job naming a deployment no worker serves fails permanently, and the
// API key never appears in a log line or a message on the bus.
func TestCredentialsStayInTheWorker(t *testing.T) {
	const secret = "sk-test-SECRET-0123456789"
	e := setup(t, llmsim.Config{Keys: []string{secret}})
	// Record every message on the bus.
	nc, _ := e.nats.Connect(t)
	var mu sync.Mutex
	var leaked []string
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		if strings.Contains(string(m.Data), secret) || strings.Contains(fmt.Sprint(m.Header), secret) {
			mu.Lock()
			leaked = append(leaked, m.Subject)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	e.startWorker(workerOpts{key: secret})
	e.startCollector("")
	good, err := e.produce(e.pipeline(matrixPipeline(1, 2, "")), csvRows(5, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	unknown, err := e.produce(e.pipeline(strings.Replace(matrixPipeline(1, 2, ""), "deployment: default", "deployment: nosuch", 1)), csvRows(3, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	if s := e.waitSummary(good.Run, 60*time.Second); s.Stats.RowsOK != 5 {
		t.Fatalf("run with the right key: %d rows ok, want 5", s.Stats.RowsOK)
	}
	e.waitSummary(unknown.Run, 60*time.Second)
	bad := e.lines(unknown.Run, sink.ErrorsJSONL)
	if len(bad) != 3 {
		t.Fatalf("unknown alias: %d error rows, want 3", len(bad))
	}
	for _, r := range bad {
		if qe := failedQuery(t, r, "cs1_k1"); qe["reason"] != wire.ReasonUnknownDeployment {
			t.Fatalf("reason = %v, want %s", qe["reason"], wire.ReasonUnknownDeployment)
		}
	}
	_ = nc.Flush()
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Fatalf("the API key appeared on the bus on %v", leaked)
	}
	if strings.Contains(e.logBuf.String(), secret) {
		t.Fatalf("the API key appeared in a log line")
	}
}

// Every LLM attempt, retries included, leaves an audit record in MQ_AUDIT.
func TestEveryAttemptIsAudited(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 2, "")), csvRows(5, func(i int) (string, string) {
		if i == 1 {
			return "invalid_json", "cs1_k2"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 30*time.Second)
	var rec *worker.AuditRecord
	for _, r := range e.auditRecords() {
		if r.Run == rep.Run && r.Row == 1 && r.Query == "cs1_k2" && (rec == nil || r.Attempt > rec.Attempt) {
			rec = &r
		}
	}
	if rec == nil || rec.Error == nil || rec.Error.Type != "permanent" || len(rec.RequestHash) != 64 {
		t.Fatalf("audit record of the invalid answer = %+v", rec)
	}
}

// A run whose pipeline names a model the provider does not know (404 model_not_found)
// fails its own queries at once, each called once, with that reason; the deployment is
// not paused, and another run on it completes. Before, the 404 opened the deployment's
// breaker: the run's jobs waited for ever and stalled every other run on the alias.
func TestAModelTheProviderDoesNotKnowFailsItsOwnRunOnly(t *testing.T) {
	e := setup(t, llmsim.Config{Models: []string{"sim-model"}})
	e.startWorker(workerOpts{concurrency: 16})
	e.startCollector("")
	typo, err := e.produce(e.pipeline(strings.Replace(matrixPipeline(1, 2, ""), "model: sim-model", "model: sim-modle", 1)), csvRows(10, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce the run with the unknown model: %v", err)
	}
	good, err := e.produce(e.pipeline(matrixPipeline(1, 2, "")), csvRows(30, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce the run with a known model: %v", err)
	}
	if s := e.waitSummary(good.Run, 30*time.Second); s.Stats.RowsOK != 30 {
		t.Errorf("the run with a known model: %+v, want 30 rows ok", s.Stats)
	}
	s := e.waitSummary(typo.Run, 30*time.Second)
	if s.Stats.RowsFailed != 10 || s.Stats.Calls != 20 {
		t.Errorf("the run with the unknown model: %+v, want 10 rows failed after 20 calls (each query once)", s.Stats)
	}
	for _, row := range e.lines(typo.Run, sink.ErrorsJSONL) {
		for _, q := range queryNames(1, 2) {
			if fe := failedQuery(t, row, q); fe["reason"] != wire.ReasonModelNotFound || !strings.Contains(fmt.Sprint(fe["message"]), "sim-modle") {
				t.Errorf("row %v query %s: error %v, want %s naming the model", row["id"], q, fe, wire.ReasonModelNotFound)
			}
		}
	}
	runs, err := e.js.KeyValue(context.Background(), wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runs.Get(context.Background(), wire.BreakerKey("default")); err == nil {
		t.Error("the deployment's breaker was opened by the job's unknown model")
	}
}
