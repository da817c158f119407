package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// waitFor polls cond until it holds or timeout passes, then fails naming what.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

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
	ctx := context.Background()
	p := e.pipeline(matrixPipeline(1, 1, ""))
	rep, err := e.produce(p, csvRows(5, nil), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	// Hold the run while the worker starts (its start-up ensures the topology, which
	// would undo the limit below), then limit MQ_RESULTS to 2 messages and resume.
	if err := status.SetControl(ctx, e.js, rep.Run, worker.StatePaused); err != nil {
		t.Fatal(err)
	}
	e.startWorker(workerOpts{})
	waitFor(t, 60*time.Second, "the worker to register its alias", func() bool {
		kv, err := e.js.KeyValue(ctx, wire.BucketFleet)
		if err != nil {
			return false
		}
		_, err = kv.Get(ctx, "default")
		return err == nil
	})
	res, err := e.js.Stream(ctx, wire.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := res.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	full := info.Config
	full.MaxMsgs = 2
	if _, err := e.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	if err := status.SetControl(ctx, e.js, rep.Run, worker.StateRunning); err != nil {
		t.Fatal(err)
	}
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
	full.MaxMsgs = -1
	if _, err := e.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	e.startCollector("")
	e.waitSummary(rep.Run, 60*time.Second)
	if ok := e.lines(rep.Run, sink.ResultsJSONL); len(ok) != 5 {
		t.Fatalf("%d success rows, want 5", len(ok))
	}
}
