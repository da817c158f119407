package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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

const (
	run   = "run-a"
	other = "run-b"
	dep   = "default"
	query = "q"
)

// start runs a server with the whole topology (queue.Ensure, as every process does at
// start-up) and returns its JetStream context and a context that ends a hang.
func start(t *testing.T) (jetstream.JetStream, context.Context) {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	return js, ctx
}

// jobPayload is a valid job body of one query of one row, as the producer encodes it.
func jobPayload(t *testing.T, r string, row int) []byte {
	t.Helper()
	b, err := json.Marshal(wire.Job{V: wire.Version, Run: r, Row: row, Query: query, Deployment: dep,
		Request: wire.Request{Model: "m", ResponseFormat: wire.FormatStandard, Messages: []wire.Message{{Role: "user", Content: fmt.Sprintf("row %d", row)}}},
		Outputs: []wire.OutputField{{Field: "a", Column: "q_a", Type: wire.TypeString}}, MaxCapacityRetrySeconds: 60, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deadLetter stores a payload in MQ_DEAD as a worker does (internal/worker: poison and
// deadLetterSeq): subject dead.<alias>.<run>, headers Mq-Reason, Mq-Subject and a
// Nats-Msg-Id. It returns the letter's sequence.
func deadLetter(t *testing.T, ctx context.Context, js jetstream.JetStream, alias, r, jobSubject, reason string, data []byte) uint64 {
	t.Helper()
	m := nats.NewMsg(wire.DeadSubject(alias, r))
	m.Data = data
	m.Header.Set(wire.HeaderReason, reason)
	if jobSubject != "" {
		m.Header.Set(wire.HeaderSubject, jobSubject)
	}
	m.Header.Set(wire.HeaderMsgID, fmt.Sprintf("dead.%s.%s.%d", alias, jobSubject, time.Now().UnixNano()))
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatalf("dead-letter %s: %v", jobSubject, err)
	}
	return ack.Sequence
}

// publish stores a record with a Nats-Msg-Id and the Mq-Schema header earlier builds sent.
func publish(t *testing.T, ctx context.Context, js jetstream.JetStream, subject, id string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(wire.HeaderMsgID, id)
	m.Header.Set(wire.HeaderSchema, "1")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
}

// inputRow publishes a run's input row: present until the run finishes (and the sign
// that the row is not emitted yet).
func inputRow(t *testing.T, ctx context.Context, js jetstream.JetStream, r string, row int) {
	t.Helper()
	publish(t, ctx, js, wire.InputRowSubject(r, row), "row."+r+"."+fmt.Sprint(row),
		wire.Row{V: wire.Version, Run: r, Row: row, Data: json.RawMessage(fmt.Sprintf(`{"id":"r%d"}`, row))})
}

// runStatus writes the collector's status of a run (key <run> in mq_runs).
func runStatus(t *testing.T, ctx context.Context, js jetstream.JetStream, st wire.RunStatus) {
	t.Helper()
	kv, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st)
	if _, err := kv.Put(ctx, st.Run, b); err != nil {
		t.Fatal(err)
	}
}

// jobsOn counts the messages MQ_JOBS holds on a subject.
func jobsOn(t *testing.T, ctx context.Context, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// kept checks that a refused replay lost nothing: the letter is still in MQ_DEAD with
// its payload and headers, and no job was published on its subject.
func kept(t *testing.T, ctx context.Context, js jetstream.JetStream, seq uint64, jobSubject string, data []byte) {
	t.Helper()
	dead, err := js.Stream(ctx, wire.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dead.GetMsg(ctx, seq)
	if err != nil {
		t.Fatalf("dead letter %d is gone after a refused replay: %v", seq, err)
	}
	if string(m.Data) != string(data) || m.Header.Get(wire.HeaderSubject) != jobSubject {
		t.Fatalf("dead letter %d = %s on %q after a refused replay, want %s on %q", seq, m.Data, m.Header.Get(wire.HeaderSubject), data, jobSubject)
	}
	if jobSubject != "" {
		if n := jobsOn(t, ctx, js, jobSubject); n != 0 {
			t.Fatalf("MQ_JOBS holds %d messages on %s after a refused replay, want 0", n, jobSubject)
		}
	}
}

// List returns every letter of the asked run, in sequence order, with its original
// subject, reason, payload and size; letters of other runs, and letters whose subject
// names no run, are left out; "" lists them all. A removed letter is skipped.
func TestListReturnsTheLettersOfARunWithTheirReasonAndSubject(t *testing.T) {
	js, ctx := start(t)
	a0 := wire.JobSubject(dep, run, 0, query)
	b0 := wire.JobSubject(dep, other, 0, query)
	a1 := wire.JobSubject("other-dep", run, 1, query)
	before := time.Now().Add(-time.Second)
	seqA0 := deadLetter(t, ctx, js, dep, run, a0, "decode: unexpected end of JSON input", []byte(`{"v":1,"run":"run-a","row":`))
	seqB0 := deadLetter(t, ctx, js, dep, other, b0, "invalid job: outputs: empty", jobPayload(t, other, 0))
	seqA1 := deadLetter(t, ctx, js, "other-dep", run, a1, "delivered 3 times (MaxDeliver)", jobPayload(t, run, 1))
	seqBad := deadLetter(t, ctx, js, dep, "unknown", "jobs.bad", "job subject: bad", []byte(`x`))
	gone := deadLetter(t, ctx, js, dep, run, wire.JobSubject(dep, run, 2, query), "removed", jobPayload(t, run, 2))
	last := deadLetter(t, ctx, js, dep, other, wire.JobSubject(dep, other, 1, query), "last", jobPayload(t, other, 1))
	dead, err := js.Stream(ctx, wire.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.DeleteMsg(ctx, gone); err != nil {
		t.Fatal(err)
	}

	letters, err := List(ctx, js, wire.Names{}, run)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 2 {
		t.Fatalf("List(%s) = %+v, want 2 letters", run, letters)
	}
	want := []Letter{
		{Seq: seqA0, Subject: a0, Reason: "decode: unexpected end of JSON input", Data: []byte(`{"v":1,"run":"run-a","row":`)},
		{Seq: seqA1, Subject: a1, Reason: "delivered 3 times (MaxDeliver)", Data: jobPayload(t, run, 1)},
	}
	for i, w := range want {
		l := letters[i]
		if l.Seq != w.Seq || l.Subject != w.Subject || l.Reason != w.Reason || string(l.Data) != string(w.Data) || l.Size != len(w.Data) {
			t.Errorf("letter %d = {seq %d subject %q reason %q data %s size %d}, want {seq %d subject %q reason %q data %s size %d}",
				i, l.Seq, l.Subject, l.Reason, l.Data, l.Size, w.Seq, w.Subject, w.Reason, w.Data, len(w.Data))
		}
		if l.Time.Before(before) || l.Time.After(time.Now().Add(time.Second)) {
			t.Errorf("letter %d time = %s, want the time it was stored", i, l.Time)
		}
	}

	letters, err = List(ctx, js, wire.Names{}, other)
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 2 || letters[0].Seq != seqB0 || letters[0].Subject != b0 || letters[1].Seq != last {
		t.Fatalf("List(%s) = %+v, want the letters %d and %d", other, letters, seqB0, last)
	}

	all, err := List(ctx, js, wire.Names{}, "")
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, l := range all {
		seqs = append(seqs, l.Seq)
	}
	if fmt.Sprint(seqs) != fmt.Sprint([]uint64{seqA0, seqB0, seqA1, seqBad, last}) {
		t.Fatalf("List(\"\") sequences = %v, want %v (all but the removed %d)", seqs, []uint64{seqA0, seqB0, seqA1, seqBad, last}, gone)
	}
	if all[3].Subject != "jobs.bad" || all[3].Reason != "job subject: bad" {
		t.Fatalf("letter without a run = %+v, want subject jobs.bad and its reason", all[3])
	}

	if letters, err := List(ctx, js, wire.Names{}, "no-such-run"); err != nil || len(letters) != 0 {
		t.Fatalf("List of a run without letters = %+v (%v), want none and no error", letters, err)
	}
}

// An empty MQ_DEAD lists nothing; a missing one is an error naming it.
func TestListOfAnEmptyOrMissingDeadStream(t *testing.T) {
	js, ctx := start(t)
	if letters, err := List(ctx, js, wire.Names{}, ""); err != nil || len(letters) != 0 {
		t.Fatalf("List of an empty MQ_DEAD = %+v (%v), want none and no error", letters, err)
	}
	if err := js.DeleteStream(ctx, wire.StreamDead); err != nil {
		t.Fatal(err)
	}
	if _, err := List(ctx, js, wire.Names{}, run); err == nil || !strings.Contains(err.Error(), wire.StreamDead) {
		t.Fatalf("List without MQ_DEAD: err = %v, want an error naming %s", err, wire.StreamDead)
	}
}

// Replay publishes the letter's payload again on its original job subject, with a
// Nats-Msg-Id of its own, and removes the letter (and only it) from MQ_DEAD. A second
// replay of the same sequence fails and publishes nothing more.
func TestReplayRepublishesTheJobAndRemovesTheLetter(t *testing.T) {
	js, ctx := start(t)
	inputRow(t, ctx, js, run, 0)
	runStatus(t, ctx, js, wire.RunStatus{Run: run, State: "open", Next: 0, Deployments: []string{dep}})
	subject := wire.JobSubject(dep, run, 0, query)
	data := jobPayload(t, run, 0)
	seq := deadLetter(t, ctx, js, dep, run, subject, "delivered 100000 times (MaxDeliver)", data)
	otherSeq := deadLetter(t, ctx, js, dep, run, wire.JobSubject(dep, run, 1, query), "poison", jobPayload(t, run, 1))

	if err := Replay(ctx, js, wire.Names{}, seq); err != nil {
		t.Fatalf("replay: %v", err)
	}
	jobs, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("no job on %s after replay: %v", subject, err)
	}
	if string(m.Data) != string(data) {
		t.Fatalf("replayed job = %s, want the dead letter's payload %s", m.Data, data)
	}
	if id, want := m.Header.Get(wire.HeaderMsgID), fmt.Sprintf("replay.%d.%s", seq, wire.JobKey(run, 0, query)); id != want {
		t.Fatalf("replayed job Nats-Msg-Id = %q, want %q", id, want)
	}
	dead, err := js.Stream(ctx, wire.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.GetMsg(ctx, seq); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("dead letter %d after replay: err = %v, want it removed", seq, err)
	}
	letters, err := List(ctx, js, wire.Names{}, run)
	if err != nil || len(letters) != 1 || letters[0].Seq != otherSeq {
		t.Fatalf("letters left = %+v (%v), want only %d", letters, err, otherSeq)
	}

	if err := Replay(ctx, js, wire.Names{}, seq); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("second replay of %d: err = %v, want ErrMsgNotFound", seq, err)
	}
	if n := jobsOn(t, ctx, js, subject); n != 1 {
		t.Fatalf("MQ_JOBS holds %d jobs on %s after a second replay, want 1", n, subject)
	}
}

// A row below the run's watermark is written: Replay refuses it with ErrRowWritten,
// naming the row, and keeps the letter; the row at the watermark is not written yet and
// is replayed.
func TestReplayRefusesARowBelowTheWatermarkAndLosesNothing(t *testing.T) {
	js, ctx := start(t)
	for row := range 4 {
		inputRow(t, ctx, js, run, row)
	}
	runStatus(t, ctx, js, wire.RunStatus{Run: run, State: "sealed", Total: 10, Emitted: 3, OK: 3, Next: 3, Deployments: []string{dep}})
	below := wire.JobSubject(dep, run, 2, query)
	belowData := jobPayload(t, run, 2)
	seq := deadLetter(t, ctx, js, dep, run, below, "poison", belowData)
	at := wire.JobSubject(dep, run, 3, query)
	atSeq := deadLetter(t, ctx, js, dep, run, at, "poison", jobPayload(t, run, 3))

	err := Replay(ctx, js, wire.Names{}, seq)
	if !errors.Is(err, ErrRowWritten) {
		t.Fatalf("replay of row 2 under watermark 3: err = %v, want ErrRowWritten", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "row 2 of run "+run) || !strings.Contains(msg, below) {
		t.Fatalf("refusal %q does not name the row and the job", msg)
	}
	kept(t, ctx, js, seq, below, belowData)

	if err := Replay(ctx, js, wire.Names{}, atSeq); err != nil {
		t.Fatalf("replay of row 3 at watermark 3: %v", err)
	}
	if n := jobsOn(t, ctx, js, at); n != 1 {
		t.Fatalf("MQ_JOBS holds %d jobs on %s, want the replayed 1", n, at)
	}
}

// A row written in completion order above the watermark is found on MQ_ROWS: Replay
// refuses it with ErrRowWritten and keeps the letter.
func TestReplayRefusesARowOnTheRowsStreamAndLosesNothing(t *testing.T) {
	js, ctx := start(t)
	inputRow(t, ctx, js, run, 5)
	runStatus(t, ctx, js, wire.RunStatus{Run: run, State: "open", Emitted: 1, Next: 0, Deployments: []string{dep}})
	publish(t, ctx, js, wire.RowSubject(run, 5), "rows."+run+".5", map[string]any{"id": "r5"})
	subject := wire.JobSubject(dep, run, 5, query)
	data := jobPayload(t, run, 5)
	seq := deadLetter(t, ctx, js, dep, run, subject, "poison", data)

	err := Replay(ctx, js, wire.Names{}, seq)
	if !errors.Is(err, ErrRowWritten) {
		t.Fatalf("replay of a row on MQ_ROWS: err = %v, want ErrRowWritten", err)
	}
	if !strings.Contains(err.Error(), "row 5 of run "+run) || !strings.Contains(err.Error(), wire.StreamRows) {
		t.Fatalf("refusal %q does not name the row and %s", err, wire.StreamRows)
	}
	kept(t, ctx, js, seq, subject, data)
}

// A query that already has its (synthetic) result, or a row whose input is purged
// (emitted), is refused with ErrHasResult; the letter stays.
func TestReplayRefusesAQueryWithAResultOrAnEmittedRow(t *testing.T) {
	js, ctx := start(t)
	inputRow(t, ctx, js, run, 0)
	publish(t, ctx, js, wire.ResultSubject(run, 0, query), wire.ResultMsgID(run, 0, query),
		wire.Result{V: wire.Version, Run: run, Row: 0, Query: query, Error: &wire.Error{Reason: wire.ReasonPoison, Message: "bad"}})
	withResult := wire.JobSubject(dep, run, 0, query)
	data0 := jobPayload(t, run, 0)
	seq0 := deadLetter(t, ctx, js, dep, run, withResult, "poison", data0)
	if err := Replay(ctx, js, wire.Names{}, seq0); !errors.Is(err, ErrHasResult) {
		t.Fatalf("replay of a query with a result: err = %v, want ErrHasResult", err)
	}
	kept(t, ctx, js, seq0, withResult, data0)

	noInput := wire.JobSubject(dep, run, 1, query) // row 1 has no input row (purged)
	data1 := jobPayload(t, run, 1)
	seq1 := deadLetter(t, ctx, js, dep, run, noInput, "poison", data1)
	if err := Replay(ctx, js, wire.Names{}, seq1); !errors.Is(err, ErrHasResult) {
		t.Fatalf("replay of a row without its input row: err = %v, want ErrHasResult", err)
	}
	kept(t, ctx, js, seq1, noInput, data1)
}

// A sequence that is not in MQ_DEAD (never was, or already removed) is an error that
// changes nothing; so is a letter whose Mq-Subject is not a job subject.
func TestReplayOfAMissingSequenceOrABadSubjectFailsAndLosesNothing(t *testing.T) {
	js, ctx := start(t)
	inputRow(t, ctx, js, run, 0)
	subject := wire.JobSubject(dep, run, 0, query)
	data := jobPayload(t, run, 0)
	seq := deadLetter(t, ctx, js, dep, run, subject, "poison", data)

	if err := Replay(ctx, js, wire.Names{}, seq+100); !errors.Is(err, jetstream.ErrMsgNotFound) || !strings.Contains(err.Error(), fmt.Sprint(seq+100)) {
		t.Fatalf("replay of a missing sequence: err = %v, want ErrMsgNotFound naming %d", err, seq+100)
	}
	kept(t, ctx, js, seq, subject, data)

	bad := deadLetter(t, ctx, js, dep, "unknown", "jobs.bad", "job subject: bad", []byte(`x`))
	if err := Replay(ctx, js, wire.Names{}, bad); err == nil || !strings.Contains(err.Error(), "jobs.bad") {
		t.Fatalf("replay of a letter without a job subject: err = %v, want an error naming the subject", err)
	}
	kept(t, ctx, js, bad, "jobs.bad", []byte(`x`))
	noSubject := deadLetter(t, ctx, js, dep, "unknown", "", "no header", []byte(`y`))
	if err := Replay(ctx, js, wire.Names{}, noSubject); err == nil {
		t.Fatal("replay of a letter without Mq-Subject succeeded")
	}
	kept(t, ctx, js, noSubject, "", []byte(`y`))
	if letters, err := List(ctx, js, wire.Names{}, ""); err != nil || len(letters) != 3 {
		t.Fatalf("letters after refused replays = %+v (%v), want all 3", letters, err)
	}
	s, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Fatalf("MQ_JOBS after refused replays: %v (%v), want empty", info.State, err)
	}
}

// rowWritten: a row is written below the watermark or when on MQ_ROWS; a run without a
// status has no watermark; without MQ_ROWS only the watermark counts.
func TestRowWrittenChecksTheWatermarkAndTheRowsStream(t *testing.T) {
	js, ctx := start(t)
	addr := func(row int) wire.Addr { return wire.Addr{Run: run, Row: row, Query: query} }
	if err := rowWritten(ctx, js, wire.Names{}, addr(0)); err != nil {
		t.Fatalf("row 0 of a run without status: %v, want not written", err)
	}
	runStatus(t, ctx, js, wire.RunStatus{Run: run, State: "open", Next: 4})
	runStatus(t, ctx, js, wire.RunStatus{Run: other, State: "open", Next: 100})
	publish(t, ctx, js, wire.RowSubject(run, 9), "rows."+run+".9", map[string]any{"id": "r9"})
	publish(t, ctx, js, wire.RowSubject(other, 6), "rows."+other+".6", map[string]any{"id": "r6"})
	for row, written := range map[int]bool{0: true, 3: true, 4: false, 6: false, 9: true} {
		err := rowWritten(ctx, js, wire.Names{}, addr(row))
		if written != errors.Is(err, ErrRowWritten) {
			t.Errorf("row %d: rowWritten = %v, want written %v", row, err, written)
		}
		if written && !strings.Contains(err.Error(), fmt.Sprintf("row %d of run %s", row, run)) {
			t.Errorf("row %d: %q does not name the row", row, err)
		}
	}

	if err := js.DeleteStream(ctx, wire.StreamRows); err != nil {
		t.Fatal(err)
	}
	if err := rowWritten(ctx, js, wire.Names{}, addr(9)); err != nil {
		t.Fatalf("row 9 above the watermark without MQ_ROWS: %v, want not written", err)
	}
	if err := rowWritten(ctx, js, wire.Names{}, addr(3)); !errors.Is(err, ErrRowWritten) {
		t.Fatalf("row 3 below the watermark without MQ_ROWS: %v, want ErrRowWritten", err)
	}
}

// A job that carries its row's data (the row's first query, wire.Job.Data) has no input
// row message: its row is pending while the run's open record is on MQ_INPUT, so
// Replay republishes it then, and refuses it (losing nothing) once the run has ended.
func TestReplayOfACarriedJobLooksForItsRunsOpenRecord(t *testing.T) {
	js, ctx := start(t)
	subject := wire.JobSubject(dep, run, 0, query)
	var job wire.Job
	if err := json.Unmarshal(jobPayload(t, run, 0), &job); err != nil {
		t.Fatal(err)
	}
	job.Data = json.RawMessage(`{"id":"r0"}`)
	data, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	seq := deadLetter(t, ctx, js, dep, run, subject, "delivered 100000 times (MaxDeliver)", data)
	if err := Replay(ctx, js, wire.Names{}, seq); !errors.Is(err, ErrHasResult) {
		t.Fatalf("replay of a carried job of a run without an open record: err = %v, want ErrHasResult", err)
	}
	kept(t, ctx, js, seq, subject, data)

	publish(t, ctx, js, wire.InputOpenSubject(run), "open."+run, wire.Open{V: wire.Version, Run: run, Deployments: []string{dep},
		Queries: []wire.QueryInfo{{Name: query, Columns: []string{"a"}}}})
	if err := Replay(ctx, js, wire.Names{}, seq); err != nil {
		t.Fatalf("replay of a carried job of an open run: %v", err)
	}
	if n := jobsOn(t, ctx, js, subject); n != 1 {
		t.Fatalf("MQ_JOBS holds %d jobs on %s after the replay, want 1", n, subject)
	}
}
