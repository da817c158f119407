package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// metricsBundle is a worker of deployment "sim" (4 slots, priced) against the simulator
// on a real NATS server.
type metricsBundle struct {
	js     jetstream.JetStream
	sim    *llmsim.Server
	w      *Worker
	prices Prices
}

func setupMetrics(t *testing.T, sim llmsim.Config) *metricsBundle {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	s, url, stop, err := llmsim.Start(sim, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	prices := Prices{PromptPer1K: 0.5, CompletionPer1K: 2}
	tp := ThrottleParams(config.DefaultThrottle())
	tp.StartRate, tp.MinRate, tp.MaxRate = 1000, 500, 100000
	w, err := New(js, Config{Name: "metrics", Concurrency: 4, Topology: queue.Topology{AckWait: 5 * time.Second}, DrainTimeout: 5 * time.Second,
		Deployments: []Deployment{
			{LLM: llm.Options{Alias: "sim", Provider: "openai", Endpoint: url + "/v1", Timeout: 10 * time.Second}, Throttle: tp, Prices: prices},
			{LLM: llm.Options{Alias: "unpriced", Provider: "openai", Endpoint: url + "/v1", Timeout: 10 * time.Second}, Throttle: tp, MaxConcurrency: 2},
		}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return &metricsBundle{js: js, sim: s, w: w, prices: prices}
}

// run starts the worker until the test ends.
func (b *metricsBundle) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
}

// produce publishes a run of rows rows, one query each, for deployment sim.
func (b *metricsBundle) produce(t *testing.T, rows int) string {
	t.Helper()
	p, err := config.ParsePipeline([]byte(`llm: {deployment: sim, model: sim-model}
output_fields:
  echo: {type: string}
case_studies:
  - {name: cs1, input_fields: [text]}
criteria:
  - {name: k1}
template: |
  Assess {{ row.input_1 }}.
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var in strings.Builder
	in.WriteString("text\n")
	for i := range rows {
		fmt.Fprintf(&in, "row %d\n", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := producer.Run(ctx, b.js, producer.Config{Pipeline: p, Input: strings.NewReader(in.String()), Format: input.CSV,
		Topology: queue.Topology{AckWait: 5 * time.Second}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return rep.Run
}

// results reads a run's final results.
func (b *metricsBundle) results(t *testing.T, run string, want int) []wire.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []wire.Result
	deadline := time.Now().Add(30 * time.Second)
	for len(out) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d results after 30 s", len(out), want)
		}
		out = out[:0]
		c, err := b.js.OrderedConsumer(ctx, wire.StreamResults, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"results." + run + ".>"}})
		if err != nil {
			t.Fatal(err)
		}
		batch, err := c.FetchNoWait(1000)
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			var r wire.Result
			if err := json.Unmarshal(msg.Data(), &r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func histogramCount(t *testing.T, h *prometheus.HistogramVec, labels ...string) uint64 {
	t.Helper()
	c := make(chan prometheus.Metric, 1)
	h.WithLabelValues(labels...).(prometheus.Histogram).Collect(c)
	var m dto.Metric
	if err := (<-c).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

func TestWorkerMetricsExistBeforeTheFirstEvent(t *testing.T) {
	b := setupMetrics(t, llmsim.Config{})
	m := b.w.m
	t.Run("slots are the deployment's slots and nothing is in flight", func(t *testing.T) {
		if got := testutil.ToFloat64(m.slots.WithLabelValues("sim")); got != 4 {
			t.Errorf("mq_worker_slots{sim} = %v, want 4", got)
		}
		if got := testutil.ToFloat64(m.slots.WithLabelValues("unpriced")); got != 2 {
			t.Errorf("mq_worker_slots{unpriced} = %v, want 2 (max_concurrency)", got)
		}
		if got := testutil.ToFloat64(m.inflight.WithLabelValues("sim")); got != 0 {
			t.Errorf("mq_worker_inflight_calls{sim} = %v, want 0", got)
		}
	})
	t.Run("counters of every deployment, outcome and class are at 0", func(t *testing.T) {
		for name, tc := range map[string]struct {
			c    prometheus.Collector
			want int
		}{
			"mq_worker_calls_total":           {m.calls, 2},
			"mq_worker_naks_total":            {m.naks, 2},
			"mq_worker_results_total":         {m.results, 2 * len(resultOutcomes)},
			"mq_worker_call_duration_seconds": {m.latency, 2 * 3},
			"mq_worker_tokens_total":          {m.tokens, 2 * 2},
			"mq_worker_cost_usd_total":        {m.cost, 1}, // the priced deployment only
		} {
			if got := testutil.CollectAndCount(tc.c); got != tc.want {
				t.Errorf("%s: %d series, want %d", name, got, tc.want)
			}
		}
	})
}

func TestWorkerCallMetrics(t *testing.T) {
	b := setupMetrics(t, llmsim.Config{Latency: 300 * time.Millisecond})
	m := b.w.m
	b.run(t)
	const rows = 12
	run := b.produce(t, rows)

	t.Run("calls in flight are counted, never more than the slots", func(t *testing.T) {
		max := 0.0
		waitUntil(t, "4 calls in flight", func() bool {
			v := testutil.ToFloat64(m.inflight.WithLabelValues("sim"))
			max = math.Max(max, v)
			return v == 4
		})
		if max > 4 {
			t.Errorf("%v calls in flight on 4 slots", max)
		}
	})
	res := b.results(t, run, rows)
	t.Run("each call's latency is observed under its outcome class", func(t *testing.T) {
		waitUntil(t, "12 ok latencies", func() bool { return histogramCount(t, m.latency, "sim", callOK) == rows })
		if n := histogramCount(t, m.latency, "sim", callError) + histogramCount(t, m.latency, "sim", callCapacity); n != 0 {
			t.Errorf("%d error or capacity latencies, want 0", n)
		}
		waitUntil(t, "no call in flight", func() bool { return testutil.ToFloat64(m.inflight.WithLabelValues("sim")) == 0 })
	})
	t.Run("tokens and cost are what the results were billed", func(t *testing.T) {
		var prompt, completion int64
		for _, r := range res {
			prompt += r.Billed.PromptTokens
			completion += r.Billed.CompletionTokens
		}
		if prompt == 0 || completion == 0 {
			t.Fatalf("the simulator billed %d prompt and %d completion tokens: the test proves nothing", prompt, completion)
		}
		if got := testutil.ToFloat64(m.tokens.WithLabelValues("sim", "prompt")); got != float64(prompt) {
			t.Errorf("prompt tokens %v, results billed %d", got, prompt)
		}
		if got := testutil.ToFloat64(m.tokens.WithLabelValues("sim", "completion")); got != float64(completion) {
			t.Errorf("completion tokens %v, results billed %d", got, completion)
		}
		want := float64(prompt)/1000*b.prices.PromptPer1K + float64(completion)/1000*b.prices.CompletionPer1K
		if got := testutil.ToFloat64(m.cost.WithLabelValues("sim")); math.Abs(got-want) > 1e-9 {
			t.Errorf("cost %v USD, want %v", got, want)
		}
	})
}

func TestObserveCall(t *testing.T) {
	m := newMetrics()
	priced := &deployment{alias: "p", prices: Prices{PromptPer1K: 1, CompletionPer1K: 3}}
	free := &deployment{alias: "f"}
	m.observeCall(priced, classCapacity, 0.2, spend{calls: 1})
	m.observeCall(priced, classPermanent, 1.5, spend{calls: 1, prompt: 1000, completion: 500}) // a 200 that did not parse is billed
	m.observeCall(free, classOK, 0.5, spend{calls: 1, prompt: 10, completion: 20})
	m.observeCall(free, classDrained, 9, spend{calls: 1})
	for _, tc := range []struct {
		what string
		got  float64
		want float64
	}{
		{"capacity latencies of p", float64(histogramCount(t, m.latency, "p", callCapacity)), 1},
		{"error latencies of p (an answer that did not parse)", float64(histogramCount(t, m.latency, "p", callError)), 1},
		{"ok latencies of f (a drained call is not one)", float64(histogramCount(t, m.latency, "f", callOK)) + float64(histogramCount(t, m.latency, "f", callError)), 1},
		{"cost of p", testutil.ToFloat64(m.cost.WithLabelValues("p")), 1000.0/1000*1 + 500.0/1000*3},
		{"prompt tokens of f", testutil.ToFloat64(m.tokens.WithLabelValues("f", "prompt")), 10},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.cost); n != 1 {
		t.Errorf("%d cost series, want 1: a deployment without prices counts no cost", n)
	}
}
