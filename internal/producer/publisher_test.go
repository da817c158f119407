package producer

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Issue 8, item 3: a wait that failed (its context ended while a publish was not yet
// acknowledged, here because the server was down) leaves the rest for the next wait,
// which must finish them once the server is back, not wait again on acks it already
// read (it used to block for ever).
func TestAWaitAfterAFailedSettleFinishesWhatIsLeft(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: js, window: 100, log: zerolog.Nop()}
	send := func(i int) {
		t.Helper()
		m, err := newMsg(wire.JobSubject("d", "run", i, "q"), wire.JobMsgID("run", i, "q"), map[string]int{"v": 1, "row": i})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.async(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	send(0)
	srv.Shutdown()
	send(1) // buffered by the client while the server is down
	short, cancel := context.WithTimeout(ctx, time.Second)
	err := pub.wait(short)
	cancel()
	if err == nil {
		t.Fatal("wait succeeded with the server down")
	}
	srv.Restart()
	long, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := pub.wait(long); err != nil {
		t.Fatalf("second wait: %v; want the publishes left by the first wait finished", err)
	}
	s, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs != 2 {
		t.Fatalf("MQ_JOBS holds %v messages (%v), want 2", info.State.Msgs, err)
	}
}

// Issue 8, item 6: fit turns a row whose data, or one of whose prompts, is over the
// limit into a row_too_large error row with no job, keeping the data when it fits.
func TestFitMakesRowsTooLargeForAMessageErrorRows(t *testing.T) {
	t.Parallel()
	job := func(content string) wire.Job {
		return wire.Job{V: 1, Run: "r", Row: 7, Query: "q", Deployment: "d", Request: wire.Request{Messages: []wire.Message{{Role: "user", Content: content}}}}
	}
	data := func(n int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"text":%q}`, strings.Repeat("x", n)))
	}
	const limit = 4096
	tests := []struct {
		name             string
		pl               plan
		wantErr, keepRow bool
	}{
		{name: "a row and prompts that fit are published as they are", pl: plan{row: wire.Row{V: 1, Run: "r", Row: 7, Data: data(100)}, jobs: []wire.Job{job("small")}}, keepRow: true},
		{name: "a prompt over the limit fails the row, which keeps its data", pl: plan{row: wire.Row{V: 1, Run: "r", Row: 7, Data: data(100)}, jobs: []wire.Job{job("small"), job(strings.Repeat("p", 5000))}}, wantErr: true, keepRow: true},
		{name: "a row over the limit fails without its data", pl: plan{row: wire.Row{V: 1, Run: "r", Row: 7, Data: data(5000)}, jobs: []wire.Job{job("small")}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pl, err := fit(tt.pl, wire.Names{}, limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := pl.row.Error != nil; got != tt.wantErr {
				t.Fatalf("error row = %v (%v), want %v", got, pl.row.Error, tt.wantErr)
			}
			if tt.wantErr && (pl.row.Error.Reason != wire.ReasonRowTooLarge || len(pl.jobs) != 0 || !pl.rowErr ||
				pl.row.Error.Details["limit_bytes"] != int64(limit) || !strings.Contains(pl.row.Error.Message, "row 7")) {
				t.Fatalf("plan %+v: want reason %s naming row 7 and the limit, no job", pl.row.Error, wire.ReasonRowTooLarge)
			}
			if got := pl.row.Data != nil; got != tt.keepRow {
				t.Fatalf("row data kept = %v, want %v", got, tt.keepRow)
			}
			if pl.rowMsg == nil || msgSize(pl.rowMsg) > limit || len(pl.jobMsgs) != len(pl.jobs) {
				t.Fatalf("encoded row %v (%d jobs for %d messages): want it within the limit", pl.rowMsg != nil, len(pl.jobs), len(pl.jobMsgs))
			}
		})
	}
}

// publishJobsAndRows publishes n jobs, each followed (later) by its row, and waits.
func publishJobsAndRows(t *testing.T, pub *publisher, first, n int) {
	t.Helper()
	ctx := context.Background()
	for i := first; i < first+n; i++ {
		job, err := newMsg(wire.JobSubject("d", "run", i, "q"), wire.JobMsgID("run", i, "q"), map[string]int{"row": i})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.async(ctx, job); err != nil {
			t.Fatal(err)
		}
		row, err := newMsg(wire.Names{}.InputRowSubject("run", i), fmt.Sprintf("row.run.%d", i), map[string]int{"row": i})
		if err != nil {
			t.Fatal(err)
		}
		pub.later(row)
	}
	if err := pub.wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func streamMsgs(t *testing.T, js interface {
	Stream(context.Context, string) (jetstream.Stream, error)
}, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// Jobs and rows go out in batches: a few acks per batch, not one per message.
func TestJobsAndRowsGoOutInBatches(t *testing.T) {
	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	if err := queue.Ensure(context.Background(), js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: js, window: 2048, log: zerolog.Nop()}
	before := nc.Stats().InMsgs
	publishJobsAndRows(t, pub, 0, 600)
	acks := nc.Stats().InMsgs - before
	if jobs, rows := streamMsgs(t, js, wire.StreamJobs), streamMsgs(t, js, wire.StreamInput); jobs != 600 || rows != 600 {
		t.Fatalf("stored %d jobs and %d rows, want 600 of each", jobs, rows)
	}
	// 600 jobs in batches of 64, 128, 256 and the rest at the wait, 600 rows in 512 and
	// 88: six batches, each with a first ack, a commit ack and flow acks (the server acks
	// every message of a batch while another is in flight, doubling from there; seen:
	// 20 in all). One by one: 1200 acks.
	if acks > 100 || pub.single {
		t.Fatalf("%d messages back for 1200 published (batches off: %v), want one ack per batch", acks, pub.single)
	}
}

// A run's first jobs go out in a small batch, before a full one is read: workers start
// within a millisecond of the producer, whatever the input's size.
func TestTheFirstBatchGoesOutBeforeAFullOneIsRead(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	if err := queue.Ensure(context.Background(), js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: js, window: 2048, log: zerolog.Nop()}
	for i := range batchFirst {
		job, err := newMsg(wire.JobSubject("d", "run", i, "q"), wire.JobMsgID("run", i, "q"), map[string]int{"row": i})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.async(context.Background(), job); err != nil {
			t.Fatal(err)
		}
	}
	// No wait: the batch went out when it reached its size.
	deadline := time.Now().Add(10 * time.Second)
	for streamMsgs(t, js, wire.StreamJobs) != batchFirst {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the first %d jobs stored without a wait, want all", streamMsgs(t, js, wire.StreamJobs), batchFirst)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := pub.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A stream created without fast batches (by an older version, by hand, or on a server
// before 2.14) gets every message one at a time.
func TestAStreamWithoutBatchesGetsEveryMessageOneByOne(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	for _, c := range (queue.Topology{}).Streams() {
		c.AllowBatchPublish = false
		if _, err := js.CreateStream(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	pub := &publisher{js: js, window: 2048, log: zerolog.Nop()}
	publishJobsAndRows(t, pub, 0, 300)
	if jobs, rows := streamMsgs(t, js, wire.StreamJobs), streamMsgs(t, js, wire.StreamInput); jobs != 300 || rows != 300 || !pub.single {
		t.Fatalf("stored %d jobs and %d rows (batches off: %v), want 300 of each, one by one", jobs, rows, pub.single)
	}
}

// A stream that stops taking batches under a running publisher (an operator changed its
// configuration) refuses the next batch: it is published again one message at a time,
// and so is everything after it.
func TestABatchRefusedByTheStreamTurnsBatchesOff(t *testing.T) {
	srv := natstest.Start(t)
	nc, _ := srv.Connect(t)
	// The refusal comes after the batch's first ack timeout (see publishBatch).
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: js, window: 2048, log: zerolog.Nop()}
	publishJobsAndRows(t, pub, 0, 100)
	if pub.single {
		t.Fatal("batches off before the stream changed")
	}
	for _, c := range (queue.Topology{}).Streams() {
		c.AllowBatchPublish = false
		if _, err := js.UpdateStream(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	publishJobsAndRows(t, pub, 100, 300)
	if jobs, rows := streamMsgs(t, js, wire.StreamJobs), streamMsgs(t, js, wire.StreamInput); jobs != 400 || rows != 400 || !pub.single {
		t.Fatalf("stored %d jobs and %d rows (batches off: %v), want 400 of each, batches off", jobs, rows, pub.single)
	}
}

// A batch the server refuses because one of its rows is stored already (a resumed
// producer) is published again one message at a time: every row once, nothing lost.
func TestABatchWithARowAlreadyStoredIsPublishedOneByOne(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	if err := queue.Ensure(context.Background(), js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: js, window: 2048, log: zerolog.Nop()}
	publishJobsAndRows(t, pub, 5, 1) // row 5 and its job are on the bus
	publishJobsAndRows(t, pub, 0, 20)
	if rows := streamMsgs(t, js, wire.StreamInput); rows != 20 || pub.single {
		t.Fatalf("stored %d rows (batches off: %v), want 20, batches still on", rows, pub.single)
	}
	if jobs := streamMsgs(t, js, wire.StreamJobs); jobs != 20 {
		t.Fatalf("stored %d jobs, want 20 (job 5's second publish deduplicated by its id)", jobs)
	}
	if pub.out != 0 || len(pub.pending) != 0 {
		t.Fatalf("%d messages in %d publishes still counted outstanding after the wait, want none", pub.out, len(pub.pending))
	}
}
