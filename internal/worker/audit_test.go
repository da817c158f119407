package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	stdjson "encoding/json"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/wire"
)

// An audit record the stream does not take is counted as dropped, never silently lost:
// here there is no MQ_AUDIT at all, so every publish fails (no responders).
func TestAnAuditRecordNotStoredIsCounted(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	var dropped atomic.Int64
	a, err := newAuditor(js, wire.Names{}, func(n int) { dropped.Add(int64(n)) })
	if err != nil {
		t.Fatal(err)
	}
	job := &wire.Job{Run: "r", Row: 1, Query: "q", Deployment: "d"}
	for i := range 3 {
		a.record(job, job.Request, i+1, 0, "w", nil, nil, time.Millisecond)
	}
	a.flush()
	deadline := time.Now().Add(10 * time.Second)
	for dropped.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("dropped %d of 3 records not stored", dropped.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A run's records go out together: one message per batch on audit.<run>.batch, JSON
// lines that DecodeAudit reads back; a full batch goes out without waiting for a flush.
func TestAuditRecordsGoOutInBatchesPerRun(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: wire.StreamAudit, Subjects: []string{wire.Names{}.AuditSubjects()}})
	if err != nil {
		t.Fatal(err)
	}
	var dropped atomic.Int64
	a, err := newAuditor(js, wire.Names{}, func(n int) { dropped.Add(int64(n)) })
	if err != nil {
		t.Fatal(err)
	}
	stored := func(subject string) []AuditRecord {
		t.Helper()
		var recs []AuditRecord
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
		if err != nil {
			t.Fatal(err)
		}
		for {
			m, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
			if err != nil {
				return recs
			}
			got, err := DecodeAudit(m.Data())
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, got...)
		}
	}
	t.Run("a full batch is published at once", func(t *testing.T) {
		job := &wire.Job{Run: "full", Row: 1, Query: "q", Deployment: "d"}
		for i := range auditBatchRecords {
			a.record(job, job.Request, i+1, 0, "w", nil, nil, time.Millisecond)
		}
		waitUntil(t, "one message with every record", func() bool {
			info, err := stream.Info(ctx)
			return err == nil && info.State.Msgs == 1
		})
		if recs := stored(wire.AuditSubject("full")); len(recs) != auditBatchRecords || recs[0].Attempt != 1 || recs[len(recs)-1].Attempt != auditBatchRecords {
			t.Fatalf("stored %d records, want %d in order", len(recs), auditBatchRecords)
		}
	})
	t.Run("a flush publishes each run's records on its own subject", func(t *testing.T) {
		for _, run := range []string{"r1", "r2", "r1"} {
			job := &wire.Job{Run: run, Row: 2, Query: "q", Deployment: "d"}
			a.record(job, job.Request, 1, 0, "w", nil, nil, time.Millisecond)
		}
		a.flush()
		waitUntil(t, "a message per run", func() bool {
			info, err := stream.Info(ctx)
			return err == nil && info.State.Msgs == 3
		})
		if r1, r2 := stored(wire.AuditSubject("r1")), stored(wire.AuditSubject("r2")); len(r1) != 2 || len(r2) != 1 || r1[0].Run != "r1" || r2[0].Run != "r2" {
			t.Fatalf("r1 %d records, r2 %d: want 2 and 1", len(r1), len(r2))
		}
	})
	if dropped.Load() != 0 {
		t.Fatalf("%d records dropped", dropped.Load())
	}
}

// A run's next audit batch starts as large as its last one (no doubling its way up),
// and a run that had no record since the last flush is forgotten.
func TestAnAuditBatchStartsAtItsRunsLastSizeAndAnIdleRunIsForgotten(t *testing.T) {
	a := &auditor{batches: map[string]*auditBatch{}, dropped: func(int) { t.Error("a record was dropped") }}
	for i := range 10 {
		a.add(AuditRecord{Run: "r1", Row: i, Worker: "w"})
	}
	b := a.batches["r1"]
	n := len(b.buf)
	if full := b.take(); len(full) != n || b.buf != nil || b.records != 0 {
		t.Fatalf("take returned %d bytes of %d, left %d bytes and %d records", len(full), n, len(b.buf), b.records)
	}
	a.add(AuditRecord{Run: "r1", Row: 10, Worker: "w"})
	if c := cap(a.batches["r1"].buf); c < n {
		t.Errorf("the next batch starts with room for %d bytes, want the last batch's %d", c, n)
	}
	a.batches["r1"].take() // as a publish does
	a.flush()
	if _, ok := a.batches["r1"]; ok {
		t.Error("a run without records since the last flush is still held")
	}
}

// TestAnAuditRecordIsWrittenAsJSONMarshalWritesIt: the hand-written record is byte for
// byte encoding/json's, with every optional part absent or present, and its
// request_sha256 is over the request as json.Marshal writes it (the hash it always was).
func TestAnAuditRecordIsWrittenAsJSONMarshalWritesIt(t *testing.T) {
	at := time.Date(2026, 12, 2, 15, 4, 5, 123456789, time.UTC)
	req := wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: "rate <this> \"row\"\n"}}, ResponseFormat: wire.FormatStandard}
	std, _ := stdjson.Marshal(req)
	sum := sha256.Sum256(std)
	if got, want := hashRequest(req), hex.EncodeToString(sum[:]); got != want {
		t.Errorf("request_sha256 %s, want %s (over encoding/json's bytes)", got, want)
	}
	for i, r := range []AuditRecord{
		{V: 1, Run: "run-1", Row: 3, Query: "q<1>", Attempt: 1, Deployment: "east", RequestHash: hashRequest(req), ResponseHash: "ab",
			Status: 200, LatencyMS: 51.234, Usage: &wire.Usage{PromptTokens: 93, CompletionTokens: 13, TotalTokens: 106}, Worker: "w-1", Time: at},
		{V: 1, Run: "r", Attempt: 2, Reask: 1, Deployment: "d", RequestHash: "h", Status: 429,
			Error: &AuditError{Type: "capacity", Code: "rate_limit", Message: "slow \"down\"", Retryable: true}, Worker: "w", Time: at},
		{V: 1, Run: "r", Attempt: 1, RequestHash: "h", ResponseHash: "x", LatencyMS: 0.0004, Worker: "w", Time: at, Cached: true,
			Resubmission: &wire.Resubmission{Run: "orig", Row: 4, Attempt: 2}},
	} {
		got, err := r.appendJSON([]byte("prefix "))
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		want, _ := stdjson.Marshal(r)
		if string(got) != "prefix "+string(want) {
			t.Errorf("record %d:\n got  %s\n want prefix %s", i, got, want)
		}
	}
	bad := AuditRecord{LatencyMS: math.NaN()}
	if got, err := bad.appendJSON([]byte("prefix ")); err == nil || string(got) != "prefix " {
		t.Errorf("a NaN latency: wrote %q, err %v; want an error and the batch as it was", got, err)
	}
}
