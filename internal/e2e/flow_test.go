package e2e

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// Issue 5, acceptance 2 (short variant; `make bench-flow` runs 100 000 rows): the
// producer stays at most K rows ahead of the collector, so the jobs stream never holds
// more than K x M jobs, and the run completes.
func TestFlowControlBoundsTheJobsStream(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 5 * time.Millisecond})
	tp := fastThrottle()
	tp.StartRate, tp.MinRate, tp.MaxRate = 300, 300, 300 // a limited fleet
	e.startWorker(workerOpts{concurrency: 8, throttle: &tp})
	e.startCollector("")
	const k, m = 20, 2
	p := e.pipeline(matrixPipeline(1, m, ""))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		s, err := e.js.Stream(ctx, wire.StreamJobs)
		for err != nil && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
			s, err = e.js.Stream(ctx, wire.StreamJobs)
		}
		for ctx.Err() == nil {
			if info, err := s.Info(ctx); err == nil && int64(info.State.Msgs) > peak.Load() {
				peak.Store(int64(info.State.Msgs))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	rep, err := producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(csvRows(600, nil)), Format: input.CSV,
		Topology: e.topo, MaxAhead: k}, e.log)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	sum := e.waitSummary(rep.Run, 60*time.Second)
	cancel()
	<-sampled
	if sum.Stats.RowsOK != 600 {
		t.Fatalf("%d rows ok, want 600", sum.Stats.RowsOK)
	}
	// A job leaves MQ_JOBS when its ack arrives, after its result is stored: the collector
	// may emit the row (and the producer move on) while up to a slot's worth of acks are
	// still in flight, so the bound is K x M plus the fleet's slots (8). Seen on a busy
	// machine: 43 with K x M = 40.
	const slots = 8
	if got := peak.Load(); got == 0 || got > k*m+slots {
		t.Fatalf("MQ_JOBS held at most %d jobs, want 1..%d (K x M + the fleet's slots)", got, k*m+slots)
	}
	t.Logf("peak jobs in the stream: %d (bound %d + %d in-flight acks)", peak.Load(), k*m, slots)
}

// interruptProducer runs the file producer for run with a window of 64 (a checkpoint
// every 64/(M+1) rows) and kills it once it has published rows rows.
func (e *env) interruptProducer(p *config.Pipeline, data, run string, rows int) {
	e.t.Helper()
	ctx, kill := context.WithCancel(context.Background())
	_, err := producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: input.CSV, Run: run,
		Topology: e.topo, Window: 64, Progress: func(n int) {
			if n == rows {
				kill()
			}
		}}, e.log)
	if !errors.Is(err, context.Canceled) {
		e.t.Fatalf("first producer: err = %v, want it interrupted", err)
	}
}

// Issue 5, acceptance 3: a producer killed half-way and rerun with the same run id after
// the dedup window resumes from its checkpoint: no job is called twice and the run
// completes; a different input under the same run id is refused before publishing.
func TestProducerResumesWithoutDuplicateCalls(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 5 * time.Millisecond})
	e.topo.Duplicates = 500 * time.Millisecond // the dedup window is no resume mechanism
	e.startWorker(workerOpts{concurrency: 16})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	data := csvRows(400, nil)
	const run = "resume-run"
	e.interruptProducer(p, data, run, 200) // mid-run, with publishes in flight
	time.Sleep(time.Second)                // past the dedup window
	other := csvRows(400, func(i int) (string, string) {
		if i == 3 {
			return "x", "y"
		}
		return "", ""
	})
	_, err := producer.Run(context.Background(), e.js, producer.Config{Pipeline: p, Input: strings.NewReader(other), Format: input.CSV, Run: run, Topology: e.topo}, e.log)
	var ue *producer.UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "input differs") {
		t.Fatalf("rerun with another input: err = %v, want a UsageError saying the input differs", err)
	}
	rep, err := producer.Run(context.Background(), e.js, producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: input.CSV, Run: run, Topology: e.topo}, e.log)
	if err != nil {
		t.Fatalf("rerun: %v", err)
	}
	if rep.Rows != 400 {
		t.Fatalf("rerun report %+v, want 400 rows", rep)
	}
	e.waitSummary(run, 60*time.Second)
	rows := e.lines(run, sink.ResultsJSONL)
	if len(rows) != 400 || len(byID(rows)) != 400 {
		t.Fatalf("%d lines, %d distinct rows, want 400", len(rows), len(byID(rows)))
	}
	if st := e.sim.Stats(); st.Requests != 800 {
		t.Fatalf("llmsim saw %d calls for 800 jobs: some job was called twice", st.Requests)
	}
}

// A producer stopped before its first checkpoint has left its open record on the bus and
// no checkpoint: run again with the same run id, pipeline and input, it resumes (the
// open record of its own pipeline is not another publisher's run) and the run completes
// with every job called once.
func TestAProducerKilledBeforeItsFirstCheckpointResumes(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.Duplicates = 500 * time.Millisecond
	e.startWorker(workerOpts{concurrency: 16})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	data := csvRows(50, nil)
	const run = "early-kill"
	e.interruptProducer(p, data, run, 1) // a checkpoint every 64/3 rows: none yet
	kv, err := e.js.KeyValue(context.Background(), wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(context.Background(), wire.ProducerCheckpointKey(run)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("producer checkpoint after one row: %v, want none", err)
	}
	if n := streamMsgs(t, e.js, wire.StreamInput, wire.InputOpenSubject(run)); n != 1 {
		t.Fatalf("%d open records of the run, want the first attempt's", n)
	}
	time.Sleep(time.Second) // past the dedup window
	if _, err := producer.Run(context.Background(), e.js, producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: input.CSV, Run: run, Topology: e.topo}, e.log); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	e.waitSummary(run, 60*time.Second)
	if rows := e.lines(run, sink.ResultsJSONL); len(byID(rows)) != 50 {
		t.Fatalf("%d distinct rows, want 50", len(byID(rows)))
	}
}

// Issue 5, acceptance 6 (short variant): a small run started while a big one is in
// progress is not queued behind the big one's backlog: workers take the runs of a
// deployment in turn. Taken in turn, the big run gets about as many calls as the small
// one (100) while the small one runs; queued behind it, the small run would wait for the
// big run's 1000 queued jobs (its flow-control window) first. The count of calls does
// not depend on how fast the machine is (the time ratio is in make bench).
func TestASmallRunIsNotStuckBehindABigOne(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond})
	tp := fastThrottle()
	tp.StartRate, tp.MinRate, tp.MaxRate = 100, 100, 100 // a fleet limited to 100 calls/s
	e.startWorker(workerOpts{concurrency: 8, throttle: &tp})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, ""))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	big := make(chan producer.Report, 1)
	go func() { // the big run: 5000 rows, 50 s of work at the limit
		rep, _ := producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(csvRows(5000, nil)), Format: input.CSV, Topology: e.topo}, e.log)
		big <- rep
	}()
	// Wait until the big run's backlog is queued and being worked on (the producer
	// creates the streams).
	deadline := time.Now().Add(60 * time.Second)
	for {
		jobs, err := e.js.Stream(ctx, wire.StreamJobs)
		if err == nil {
			info, err := jobs.Info(ctx)
			if err == nil && info.State.Msgs >= 500 && e.sim.Stats().Requests > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the big run's backlog never reached 500 queued jobs")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := e.sim.Stats().Requests
	rep, err := e.produce(p, csvRows(100, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 2*time.Minute)
	bigCalls := e.sim.Stats().Requests - before - 100
	t.Logf("the big run got %d calls while the small run's 100 ran", bigCalls)
	if bigCalls >= 500 {
		t.Fatalf("the big run got %d calls while the small run's 100 waited: the small run was queued behind it", bigCalls)
	}
}

// An operator cancels a run whose producer died before the seal (it stays `open`), then
// reruns the producer to seal it. A producer resumes from its last checkpoint, and the
// crashed one had published rows after it; the rerun meets the cancellation at a row
// the crashed one had already published. The seal must still count every row on the
// bus: the summary's rows_total equals the rows written, and every published row is
// written (none refused as beyond the seal).
func TestACancelledRunResumedAfterAProducerCrashSealsEveryPublishedRow(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.topo.Duplicates = 500 * time.Millisecond
	p := e.pipeline(matrixPipeline(1, 2, ""))
	data := csvRows(400, nil)
	const run = "cancel-after-crash"
	// A window of 64 publishes checkpoints every 21 rows: the last before row 205 is
	// at 189, and the rerun's first control check is at row 200. The rows after 190
	// come slowly, so that their jobs go out (a batch waits at most 25 ms to fill)
	// before the producer is stopped at row 205.
	first, kill := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	go func() {
		lines := strings.SplitAfter(data, "\n")
		_, _ = io.WriteString(pw, strings.Join(lines[:191], "")) // the header and rows 0..189
		for _, l := range lines[191:] {
			if first.Err() != nil {
				break
			}
			time.Sleep(40 * time.Millisecond)
			_, _ = io.WriteString(pw, l)
		}
		pw.Close()
	}()
	_, err := producer.Run(first, e.js, producer.Config{Pipeline: p, Input: pr, Format: input.CSV, Run: run,
		Topology: e.topo, Window: 64, Progress: func(n int) {
			if n == 205 {
				time.Sleep(100 * time.Millisecond) // its jobs are stored
				kill()
			}
		}}, e.log)
	pr.Close() // the writer stops
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first producer: err = %v, want it interrupted", err)
	}
	ctx := context.Background()
	s, err := e.js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(e.topo.Names.JobRunFilter(run)))
	if err != nil {
		t.Fatal(err)
	}
	published := map[string]bool{}
	for subj := range info.State.Subjects { // jobs.<deployment>.<run>.<row>.<query>
		published["r"+strings.Split(subj, ".")[3]] = true
	}
	if len(published) <= 200 {
		t.Fatalf("the first producer published %d rows, want more than 200 for this test", len(published))
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, run, wire.ControlCancelled); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // past the dedup window
	if _, err := producer.Run(ctx, e.js, producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: input.CSV, Run: run, Topology: e.topo}, e.log); err != nil {
		t.Fatalf("rerun: %v", err)
	}
	e.startWorker(workerOpts{concurrency: 8})
	e.startCollector("")
	sum := e.waitSummary(run, 60*time.Second)
	rows := byID(append(e.lines(run, sink.ResultsJSONL), e.lines(run, sink.ErrorsJSONL)...))
	if sum.Rows != len(rows) || sum.Stats.RowsOK+sum.Stats.RowsFailed != len(rows) {
		t.Errorf("summary: rows_total %d, %d ok + %d failed, but %d rows written", sum.Rows, sum.Stats.RowsOK, sum.Stats.RowsFailed, len(rows))
	}
	for id := range published {
		if rows[id] == nil {
			t.Errorf("row %s was published but not written", id)
		}
	}
}
