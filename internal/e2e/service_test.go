package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// Issue 5, acceptance 1: a run submitted by an upstream system with plain NATS publishes
// (what `nats pub` sends, following docs/WIRE.md) produces the same output as the file
// producer on the same rows.
func TestASubmittedRunMatchesTheFileProducer(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rows := csvRows(20, nil)
	rep, err := e.produce(p, rows, input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	want, err := os.ReadFile(filepath.Join(e.out, rep.Run, sink.ResultsJSONL))
	if err != nil {
		t.Fatal(err)
	}

	e.run("producer-service", func(ctx context.Context) error {
		return producer.Serve(ctx, e.js, producer.ServiceConfig{Pipelines: map[string]*config.Pipeline{"assess": p}, Topology: e.topo}, e.log)
	})
	nc, _ := e.nats.Connect(t)
	const run = "submitted-run"
	pub := func(subject, body string) {
		if err := nc.Publish(subject, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	pub(wire.SubmitOpenSubject("assess", run), `{"v":1}`)
	for i := range 20 {
		pub(wire.SubmitRowSubject("assess", run, i), fmt.Sprintf(`{"v":1,"data":{"id":"r%d","text":"text of row %d, with a comma","fault":"","fault_query":""}}`, i, i))
	}
	pub(wire.SubmitSealSubject("assess", run), `{"v":1,"rows":20}`)
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.waitSummary(run, 60*time.Second)
	got, err := os.ReadFile(filepath.Join(e.out, run, sink.ResultsJSONL))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("submitted run output differs from the file producer's:\n got %.300s\nwant %.300s", got, want)
	}
}

// events subscribes to a run's status subject (what a submitter does before it submits)
// and returns what it has received so far.
func (e *env) events(run string) func() []wire.SubmitEvent {
	e.t.Helper()
	nc, _ := e.nats.Connect(e.t)
	var mu sync.Mutex
	var got []wire.SubmitEvent
	if _, err := nc.Subscribe(wire.StatusSubject(run), func(m *nats.Msg) {
		var ev wire.SubmitEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			e.t.Errorf("event on %s: %v", m.Subject, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, ev)
	}); err != nil {
		e.t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		e.t.Fatal(err)
	}
	return func() []wire.SubmitEvent {
		mu.Lock()
		defer mu.Unlock()
		return append([]wire.SubmitEvent(nil), got...)
	}
}

// waitEvent waits for an event of the given state (and reason, if set) and returns it.
func waitEvent(t *testing.T, events func() []wire.SubmitEvent, state, reason string) wire.SubmitEvent {
	t.Helper()
	var found wire.SubmitEvent
	waitFor(t, 60*time.Second, "a "+state+" "+reason+" event", func() bool {
		for _, ev := range events() {
			if ev.State == state && (reason == "" || ev.Reason == reason) {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// mqctlStatus is what `mqctl status RUN` prints, as a report.
func (e *env) mqctlStatus(run string) status.Report {
	e.t.Helper()
	nc, js := e.nats.Connect(e.t)
	r, err := status.Get(context.Background(), nc, js, wire.Names{}, run, 10*time.Millisecond)
	if err != nil {
		e.t.Fatalf("status of run %s: %v", run, err)
	}
	return r
}

// Issue 10, A: a submitter learns the outcome of its run. Subscribed to status.<run>
// before submitting, it sees accepted, sealed and completed; with Mq-Reply-To on the
// open and seal records it gets their outcome as replies; and mqctl status says the
// run completed.
func TestASubmittedRunReportsAcceptedSealedAndCompleted(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{})
	const run = "told-run"
	events := e.events(run)
	nc, _ := e.nats.Connect(t)
	inbox := nats.NewInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	withReply := func(subject, body string) {
		m := nats.NewMsg(subject)
		m.Data = []byte(body)
		m.Header.Set(wire.HeaderReplyTo, inbox)
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	withReply(wire.SubmitOpenSubject("assess", run), `{"v":1}`)
	for i := range 3 {
		pub(wire.SubmitRowSubject("assess", run, i), fmt.Sprintf(`{"v":1,"data":{"id":"r%d","text":"row %d","fault":"","fault_query":""}}`, i, i))
	}
	withReply(wire.SubmitSealSubject("assess", run), `{"v":1,"rows":3}`)

	if ev := waitEvent(t, events, wire.SubmitAccepted, ""); ev.Pipeline != "assess" || ev.Run != run {
		t.Fatalf("accepted event %+v, want run %s of pipeline assess", ev, run)
	}
	if ev := waitEvent(t, events, wire.SubmitSealed, ""); ev.Rows != 3 {
		t.Fatalf("sealed event %+v, want rows 3", ev)
	}
	if ev := waitEvent(t, events, wire.SubmitCompleted, ""); ev.Rows != 3 || ev.RowsOK != 3 || ev.RowsFailed != 0 {
		t.Fatalf("completed event %+v, want 3 rows, 3 ok", ev)
	}
	for _, want := range []string{wire.SubmitAccepted, wire.SubmitSealed} {
		m, err := replies.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("reply to the %s record: %v", want, err)
		}
		var ev wire.SubmitEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.State != want {
			t.Fatalf("reply %s (%v), want state %s", m.Data, err, want)
		}
	}
	for _, ev := range events() {
		if ev.State == wire.SubmitRejected || ev.State == wire.SubmitRowRejected {
			t.Fatalf("a well-formed run got %+v", ev)
		}
	}
	e.waitSummary(run, 60*time.Second)
	waitFor(t, 30*time.Second, "mqctl status to say completed", func() bool {
		return e.mqctlStatus(run).State == wire.RunCompleted
	})
	if txt := e.mqctlStatus(run).Text(); !strings.Contains(txt, "run "+run+": completed") {
		t.Fatalf("mqctl status prints %q, want the run completed", txt)
	}
}

// Issue 10, A: a rejected submission says why. An unknown pipeline and an undecodable
// open record are rejected (event, and mqctl status shows the reason); a row that is
// not a JSON object, or lacks a field its prompt needs, is reported as row_rejected
// naming the row (and the field), and the run goes on with them as error rows.
func TestARejectedSubmissionSaysWhy(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{})

	t.Run("an unknown pipeline is rejected, and mqctl status shows why", func(t *testing.T) {
		const run = "no-such-pipeline"
		events := e.events(run)
		pub(wire.SubmitOpenSubject("nope", run), `{"v":1}`)
		ev := waitEvent(t, events, wire.SubmitRejected, producer.RejectUnknownPipeline)
		if !strings.Contains(ev.Message, `"nope"`) || ev.Subject != wire.SubmitOpenSubject("nope", run) {
			t.Fatalf("rejection %+v, want the message naming pipeline nope and the record's subject", ev)
		}
		var r status.Report
		waitFor(t, 30*time.Second, "mqctl status to say rejected", func() bool {
			r = e.mqctlStatus(run)
			return r.State == wire.SubmitRejected
		})
		if !strings.Contains(r.Text(), producer.RejectUnknownPipeline) || !strings.Contains(r.Text(), `"nope"`) {
			t.Fatalf("mqctl status prints %q, want the reason and the pipeline", r.Text())
		}
	})

	t.Run("an undecodable open record is rejected, its rows too, until the run is submitted again", func(t *testing.T) {
		const run = "bad-open"
		events := e.events(run)
		pub(wire.SubmitOpenSubject("assess", run), `{"run":"bad-open"}`)
		if ev := waitEvent(t, events, wire.SubmitRejected, producer.RejectUndecodableOpen); !strings.Contains(ev.Message, `"v"`) {
			t.Fatalf("rejection %+v, want the message to say the v field is missing", ev)
		}
		pub(wire.SubmitRowSubject("assess", run, 0), `{"v":1,"data":{"id":"r0","text":"row 0","fault":"","fault_query":""}}`)
		pub(wire.SubmitSealSubject("assess", run), `{"v":1,"rows":1}`)
		waitFor(t, 60*time.Second, "the row and the seal to be refused", func() bool {
			n := 0
			for _, ev := range events() {
				if ev.Reason == producer.RejectRunRejected {
					n++
				}
			}
			return n == 2
		})
		if n := streamMsgs(t, e.js, wire.StreamInput, "input."+run+".>"); n != 0 {
			t.Fatalf("%d input records of a rejected run on the bus", n)
		}
		submit(pub, run, 0)
		if ev := waitEvent(t, events, wire.SubmitCompleted, ""); ev.RowsOK != 1 {
			t.Fatalf("the run submitted again: %+v, want 1 row ok", ev)
		}
	})

	t.Run("malformed rows are reported naming row and field, and become error rows", func(t *testing.T) {
		const run = "bad-rows"
		events := e.events(run)
		pub(wire.SubmitOpenSubject("assess", run), `{"v":1}`)
		pub(wire.SubmitRowSubject("assess", run, 0), `{"v":1,"data":{"id":"r0","text":"fine","fault":"","fault_query":""}}`)
		pub(wire.SubmitRowSubject("assess", run, 1), `{"v":1,"data":{"id":"r1","fault":"","fault_query":""}}`)
		pub(wire.SubmitRowSubject("assess", run, 2), `not json`)
		var missing, garbled wire.SubmitEvent
		waitFor(t, 60*time.Second, "two row_rejected events", func() bool {
			for _, ev := range events() {
				if ev.State == wire.SubmitRowRejected && ev.Row != nil && *ev.Row == 1 {
					missing = ev
				}
				if ev.State == wire.SubmitRowRejected && ev.Row != nil && *ev.Row == 2 {
					garbled = ev
				}
			}
			return missing.Row != nil && garbled.Row != nil
		})
		if missing.Reason != wire.ReasonTemplateRendering || missing.Field != "text" {
			t.Fatalf("row 1 (no text) reported as %+v, want %s naming field text", missing, wire.ReasonTemplateRendering)
		}
		if garbled.Reason != wire.ReasonMalformedRecord {
			t.Fatalf("row 2 (not JSON) reported as %+v, want %s", garbled, wire.ReasonMalformedRecord)
		}
		// Unsealed, the run stays: mqctl status lists the rejected rows.
		waitFor(t, 30*time.Second, "mqctl status to list both rejected rows", func() bool {
			txt := e.mqctlStatus(run).Text()
			return strings.Contains(txt, "row 1 rejected: template_rendering_failed (field text)") && strings.Contains(txt, "row 2 rejected: malformed_record")
		})
		pub(wire.SubmitSealSubject("assess", run), `{"v":1,"rows":3}`)
		if ev := waitEvent(t, events, wire.SubmitCompleted, ""); ev.RowsOK != 1 || ev.RowsFailed != 2 {
			t.Fatalf("completed event %+v, want 1 row ok and 2 failed", ev)
		}
	})
}

// Issue 10, A: a run id that exists already is refused by the service as the file
// producer refuses it: a second submission of a submitted run (its open record,
// its seal with another row count, its rows beyond the seal) and any submission of a
// run the file producer published. Nothing of them is published or billed: llmsim
// counts the calls of the first runs only.
func TestAReusedRunIDIsRefusedAndNothingIsBilledTwice(t *testing.T) {
	e := setup(t, llmsim.Config{})
	pub := e.serve(e.pipeline(matrixPipeline(1, 1, "")), producer.ServiceConfig{})
	const run = "taken"
	events := e.events(run)
	submit(pub, run, 0, 1)
	waitEvent(t, events, wire.SubmitSealed, "")

	// Another submitter reuses the id while the run waits for workers.
	submit(pub, run, 0, 1, 2)
	if ev := waitEvent(t, events, wire.SubmitRejected, producer.RejectReusedRunID); ev.Subject != wire.SubmitOpenSubject("assess", run) ||
		!strings.Contains(ev.Message, "submitted already") {
		t.Fatalf("first rejection %+v, want the open record refused as submitted already", ev)
	}
	if ev := waitEvent(t, events, wire.SubmitRejected, producer.RejectRowBeyondSeal); ev.Row == nil || *ev.Row != 2 {
		t.Fatalf("rejection %+v, want row 2 refused as beyond the seal", ev)
	}
	waitFor(t, 60*time.Second, "the second seal to be refused", func() bool {
		for _, ev := range events() {
			if ev.Reason == producer.RejectReusedRunID && ev.Subject == wire.SubmitSealSubject("assess", run) {
				return true
			}
		}
		return false
	})

	// A run the file producer published is refused whole.
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(2, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	fileEvents := e.events(rep.Run)
	submit(pub, rep.Run, 0, 1, 2)
	waitFor(t, 60*time.Second, "every record of the file run's reuse to be refused", func() bool {
		n := 0
		for _, ev := range fileEvents() {
			if ev.State == wire.SubmitRejected && ev.Reason == producer.RejectReusedRunID {
				n++
			}
		}
		return n == 5 // open, 3 rows, seal
	})
	waitFor(t, 60*time.Second, "MQ_SUBMIT to be empty", func() bool { return streamMsgs(t, e.js, wire.StreamSubmit, "") == 0 })

	e.startWorker(workerOpts{})
	e.startCollector("")
	for _, r := range []string{run, rep.Run} {
		if sum := e.waitSummary(r, 60*time.Second); sum.Rows != 2 {
			t.Fatalf("run %s: %d rows, want 2 (the reuse added none)", r, sum.Rows)
		}
	}
	if got := e.sim.Stats().Requests; got != 4 {
		t.Fatalf("llmsim saw %d requests, want 4 (2 rows x 1 query of each run): a reused run id was billed", got)
	}
}
