package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/deadletter"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

func publishJSON(t *testing.T, js jetstream.JetStream, subject string, v any) {
	t.Helper()
	var data []byte
	switch x := v.(type) {
	case []byte:
		data = x
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: data}); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
}

// openOneQueryRun creates the streams and publishes the open record of a run of query q
// (output q_echo), the run whose jobs job builds, in input order.
func (e *env) openOneQueryRun(run string) {
	e.t.Helper()
	if err := queue.Ensure(context.Background(), e.js, e.topo); err != nil {
		e.t.Fatal(err)
	}
	publishJSON(e.t, e.js, wire.InputOpenSubject(run), wire.Open{V: 1, Run: run, Order: wire.OrderInput, Deployments: []string{"default"},
		Queries: []wire.QueryInfo{{Name: "q", Columns: []string{"q_echo"}}}, Created: time.Now()})
}

func job(run string, row int) wire.Job {
	return wire.Job{V: 1, Run: run, Row: row, Query: "q", Deployment: "default",
		Request: wire.Request{Model: "m", ResponseFormat: wire.FormatStandard, Messages: []wire.Message{{Role: "user",
			Content: `Respond with a JSON object with these fields: {"echo":"string"}`}}},
		Outputs: []wire.OutputField{{Field: "echo", Column: "q_echo", Type: wire.TypeString}}, MaxCapacityRetrySeconds: 60, MaxAttempts: 3}
}

// Poison jobs are terminated with a reason, dead-lettered with their payload, and given a
// synthetic error result so their row completes; a job of a newer schema version is
// left for a newer worker, never terminated.
func TestPoisonJobsAreDeadLetteredAndTheirRowsComplete(t *testing.T) {
	e := setup(t, llmsim.Config{})
	ctx := context.Background()
	const run = "manual-poison"
	e.openOneQueryRun(run)
	for row := range 3 {
		publishJSON(t, e.js, wire.InputRowSubject(run, row), wire.Row{V: 1, Run: run, Row: row, Data: json.RawMessage(`{"id":"r` + string(rune('0'+row)) + `"}`)})
	}
	publishJSON(t, e.js, wire.JobSubject("default", run, 0, "q"), job(run, 0))
	publishJSON(t, e.js, wire.JobSubject("default", run, 1, "q"), []byte(`{"v":1,"run":"manual-poison","row":`)) // undecodable
	publishJSON(t, e.js, wire.JobSubject("default", run, 2, "q"), job(run, 2))
	e.openOneQueryRun("newer-run")
	newer := job(run, 3)
	newer.V = wire.MaxVersion + 1
	publishJSON(t, e.js, wire.JobSubject("default", "newer-run", 3, "q"), newer)
	publishJSON(t, e.js, wire.InputSealSubject(run), wire.Seal{V: 1, Run: run, Rows: 3})

	e.startWorker(workerOpts{})
	e.startCollector("")
	e.waitSummary(run, 30*time.Second)
	ok, bad := e.lines(run, sink.ResultsJSONL), e.lines(run, sink.ErrorsJSONL)
	if len(ok) != 2 || len(bad) != 1 || bad[0]["id"] != "r1" {
		t.Fatalf("got %d ok rows and error rows %v, want 2 and [r1]", len(ok), bad)
	}
	if qe := failedQuery(t, bad[0], "q"); qe["reason"] != wire.ReasonPoison {
		t.Fatalf("reason = %v, want %s", qe["reason"], wire.ReasonPoison)
	}
	letters, err := deadletter.List(ctx, e.js, e.topo.Names, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 1 || letters[0].Subject != wire.JobSubject("default", run, 1, "q") || letters[0].Reason == "" ||
		string(letters[0].Data) != `{"v":1,"run":"manual-poison","row":` {
		t.Fatalf("dead letters = %+v, want the poison payload with its subject and a reason", letters)
	}
	// Once the run's status says finished (the summary file comes just before it), a
	// replay is refused: the query has a result, or its row is written.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := status.WaitRun(wctx, e.js, e.topo.Names, run, nil); err != nil {
		t.Fatal(err)
	}
	if err := deadletter.Replay(ctx, e.js, e.topo.Names, letters[0].Seq); !errors.Is(err, deadletter.ErrHasResult) && !errors.Is(err, deadletter.ErrRowWritten) {
		t.Fatalf("replay of a dead letter whose query has a result: err = %v, want ErrHasResult or ErrRowWritten", err)
	}
	// The newer-version job is still waiting for a newer worker.
	s, _ := e.js.Stream(ctx, wire.StreamJobs)
	if _, err := s.GetLastMsgForSubject(ctx, wire.JobSubject("default", "newer-run", 3, "q")); err != nil {
		t.Fatalf("the newer-version job is gone from the stream (%v): it must be NAKed, not terminated", err)
	}
}

// A job that hits the consumer's MaxDeliver is dead-lettered by the worker fleet (the
// server's advisory), gets a synthetic max_deliveries_exceeded result, and leaves the
// work queue; its row completes.
func TestJobsPastMaxDeliverAreDeadLettered(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.MaxDeliver = 3
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, "max_attempts: 10\n"))
	rep, err := e.produce(p, csvRows(4, func(i int) (string, string) {
		if i == 2 {
			return "500", "cs1_k1"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	bad := e.lines(rep.Run, sink.ErrorsJSONL)
	if len(bad) != 1 || bad[0]["id"] != "r2" {
		t.Fatalf("error rows = %v, want [r2]", bad)
	}
	if qe := failedQuery(t, bad[0], "cs1_k1"); qe["reason"] != wire.ReasonMaxDeliveries {
		t.Fatalf("reason = %v, want %s", qe["reason"], wire.ReasonMaxDeliveries)
	}
	letters, err := deadletter.List(context.Background(), e.js, e.topo.Names, rep.Run)
	if err != nil || len(letters) != 1 {
		t.Fatalf("dead letters of the run = %+v (%v), want 1", letters, err)
	}
	info, err := e.js.Stream(context.Background(), wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := info.Info(context.Background()); st.State.Msgs != 0 {
		t.Fatalf("MQ_JOBS still holds %d messages", st.State.Msgs)
	}
}

// A dead letter whose row is still open and has no result is published again on its
// subject and leaves MQ_DEAD.
func TestReplayRepublishesAnOpenRowsJob(t *testing.T) {
	e := setup(t, llmsim.Config{})
	ctx := context.Background()
	if err := queue.Ensure(ctx, e.js, e.topo); err != nil {
		t.Fatal(err)
	}
	const run = "manual-replay"
	publishJSON(t, e.js, wire.InputRowSubject(run, 0), wire.Row{V: 1, Run: run, Row: 0, Data: json.RawMessage(`{"id":"r0"}`)})
	j := job(run, 0)
	dead := nats.NewMsg(wire.DeadSubject("default", run))
	dead.Data, _ = json.Marshal(j)
	dead.Header.Set(wire.HeaderSubject, wire.JobSubject("default", run, 0, "q"))
	dead.Header.Set(wire.HeaderReason, "test")
	if _, err := e.js.PublishMsg(ctx, dead); err != nil {
		t.Fatal(err)
	}
	letters, err := deadletter.List(ctx, e.js, e.topo.Names, run)
	if err != nil || len(letters) != 1 {
		t.Fatalf("letters = %v (%v)", letters, err)
	}
	if err := deadletter.Replay(ctx, e.js, e.topo.Names, letters[0].Seq); err != nil {
		t.Fatalf("replay: %v", err)
	}
	jobs, _ := e.js.Stream(ctx, wire.StreamJobs)
	m, err := jobs.GetLastMsgForSubject(ctx, wire.JobSubject("default", run, 0, "q"))
	if err != nil || string(m.Data) != string(dead.Data) {
		t.Fatalf("replayed job = %v (%v), want the dead letter's payload", m, err)
	}
	if left, _ := deadletter.List(ctx, e.js, e.topo.Names, run); len(left) != 0 {
		t.Fatalf("%d dead letters left after replay, want 0", len(left))
	}
}
