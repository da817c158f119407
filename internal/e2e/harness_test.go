package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/throttle"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// env is one test's world: a NATS server, the simulator, an output directory.
type env struct {
	t       *testing.T
	nats    *natstest.Server
	js      jetstream.JetStream
	sim     *llmsim.Server
	simURL  string
	out     string
	log     zerolog.Logger
	logBuf  *syncBuffer
	topo    queue.Topology
	stopped []func()
	// roles, when set, gives each component ("worker", "collector", "producer") its own
	// connection (a NATS user of its role); js otherwise.
	roles map[string]jetstream.JetStream
}

// jsFor is the JetStream context of a component's role.
func (e *env) jsFor(role string) jetstream.JetStream {
	if js, ok := e.roles[role]; ok {
		return js
	}
	return e.js
}

// syncBuffer collects every log line of the test (to prove no key leaks).
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// maxLogLines bounds the logs a failed test prints.
const maxLogLines = 300

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func setup(t *testing.T, sim llmsim.Config) *env {
	t.Helper()
	e := newEnv(t, sim)
	e.nats = natstest.Start(t)
	_, e.js = e.nats.Connect(t)
	return e
}

// newEnv is an env without NATS: the logs, the simulator, the output directory.
func newEnv(t *testing.T, sim llmsim.Config) *env {
	t.Helper()
	buf := &syncBuffer{}
	t.Cleanup(func() { // the processes' logs, shown only when the test failed
		if t.Failed() {
			t.Logf("logs of the test's processes (last %d lines):\n%s", maxLogLines, lastLines(buf.String(), maxLogLines))
		}
	})
	log := zerolog.New(buf).With().Timestamp().Logger()
	e := &env{t: t, out: t.TempDir(), log: log, logBuf: buf,
		topo: queue.Topology{AckWait: 5 * time.Second}}
	srv, url, stop, err := llmsim.Start(sim, zerolog.Nop())
	if err != nil {
		t.Fatalf("start llmsim: %v", err)
	}
	t.Cleanup(stop)
	e.sim, e.simURL = srv, url
	return e
}

// fastThrottle is the default throttle starting at 2000/s (no slow start to wait for)
// with a high floor, and pauses capped at 2 s.
func fastThrottle() throttle.Params {
	p := worker.ThrottleParams(config.DefaultThrottle())
	p.StartRate, p.MinRate, p.MaxRate, p.MaxPause = 2000, 500, 100000, 2*time.Second
	return p
}

type workerOpts struct {
	concurrency int
	key         string
	alias       string
	throttle    *throttle.Params
	tweak       func(*worker.Config) // adjusts the worker's configuration last
}

func (e *env) startWorker(o workerOpts) func() {
	e.t.Helper()
	if o.concurrency == 0 {
		o.concurrency = 32
	}
	if o.alias == "" {
		o.alias = "default"
	}
	tp := fastThrottle()
	if o.throttle != nil {
		tp = *o.throttle
	}
	cfg := worker.Config{
		Name: fmt.Sprintf("w%d", len(e.stopped)), Concurrency: o.concurrency, Topology: e.topo,
		TransientBackoff: 20 * time.Millisecond, DrainTimeout: 5 * time.Second, UnknownAliasGrace: time.Second,
		DeploymentPause: time.Second, PausedRunDelay: 300 * time.Millisecond,
		Deployments: []worker.Deployment{{
			LLM:      llm.Options{Alias: o.alias, Provider: "openai", Endpoint: e.simURL + "/v1", APIKey: o.key, Timeout: 10 * time.Second},
			Throttle: tp,
		}},
	}
	if o.tweak != nil {
		o.tweak(&cfg)
	}
	w, err := worker.New(e.jsFor("worker"), cfg, e.log)
	if err != nil {
		e.t.Fatalf("new worker: %v", err)
	}
	return e.run("worker", w.Run)
}

func (e *env) startCollector(order string) func() {
	e.t.Helper()
	cfg := collector.Config{OutDir: e.out, Order: order, Topology: e.topo, FlushInterval: 50 * time.Millisecond}
	js := e.jsFor("collector")
	if _, err := collector.New(js, cfg, e.log); err != nil {
		e.t.Fatalf("new collector: %v", err)
	}
	// A collector that lost its lease (a starved machine can stall its refreshes past the
	// fence) exits, and an orchestrator starts it again: so does the harness.
	return e.run("collector", func(ctx context.Context) error {
		for {
			c, err := collector.New(js, cfg, e.log)
			if err != nil {
				return err
			}
			err = c.Run(ctx)
			if !errors.Is(err, lease.ErrLost) || ctx.Err() != nil {
				return err
			}
			e.t.Logf("collector: %v; restarting it, as an orchestrator would", err)
		}
	})
}

// jobConsumer is a run's job consumer for the default deployment (created if the
// worker has not yet).
func (e *env) jobConsumer(run string) jetstream.Consumer {
	e.t.Helper()
	cons, err := queue.EnsureJobConsumer(context.Background(), e.js, e.topo, "default", run)
	if err != nil {
		e.t.Fatal(err)
	}
	return cons
}

// run starts a component; the returned stop cancels it and waits for Run to return.
func (e *env) run(name string, fn func(context.Context) error) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.Canceled) {
					e.t.Errorf("%s: %v", name, err)
				}
			case <-time.After(30 * time.Second):
				e.t.Errorf("%s did not stop within 30s", name)
			}
		})
	}
	e.stopped = append(e.stopped, stop)
	e.t.Cleanup(stop)
	return stop
}

func (e *env) pipeline(yaml string) *config.Pipeline {
	e.t.Helper()
	p, err := config.ParsePipeline([]byte(yaml), e.t.TempDir())
	if err != nil {
		e.t.Fatalf("pipeline: %v", err)
	}
	return p
}

func (e *env) produce(p *config.Pipeline, data string, f input.Format) (producer.Report, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return producer.Run(ctx, e.jsFor("producer"), producer.Config{Pipeline: p, Input: strings.NewReader(data), Format: f, Topology: e.topo}, e.log)
}

// waitSummary waits for a run's summary.json.
func (e *env) waitSummary(run string, timeout time.Duration) collector.Summary {
	e.t.Helper()
	path := filepath.Join(e.out, run, sink.Summary)
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			var s collector.Summary
			if err := json.Unmarshal(b, &s); err != nil {
				e.t.Fatalf("summary: %v", err)
			}
			return s
		}
		if time.Now().After(deadline) {
			st := e.sim.Stats()
			e.t.Fatalf("run %s: no summary after %s (llmsim: %d requests, %d ok, by status %v)", run, timeout, st.Requests, st.OK, st.ByStatus)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lines reads a run's output file as JSON objects.
func (e *env) lines(run, name string) []map[string]any {
	e.t.Helper()
	f, err := os.Open(filepath.Join(e.out, run, name))
	if err != nil {
		e.t.Fatalf("open output: %v", err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			e.t.Fatalf("%s: line %d is not a JSON object: %v", name, len(out)+1, err)
		}
		out = append(out, m)
	}
	return out
}

// csvRows builds a CSV input with an id column and extra columns.
func csvRows(n int, extra func(i int) (fault, faultQuery string)) string {
	var b strings.Builder
	b.WriteString("id,text,fault,fault_query\n")
	for i := range n {
		f, fq := "", ""
		if extra != nil {
			f, fq = extra(i)
		}
		fmt.Fprintf(&b, "r%d,\"text of row %d, with a comma\",%s,%s\n", i, i, f, fq)
	}
	return b.String()
}

// matrixPipeline: cases x criteria queries whose prompts carry a marker of their row and
// query, and a fault directive when the row asks for one on that query.
func matrixPipeline(cases, criteria int, extra string) string {
	var b strings.Builder
	b.WriteString("llm: {deployment: default, model: sim-model}\n")
	b.WriteString(extra)
	b.WriteString("output_fields:\n  echo: {type: string}\n  note: {type: string, suffix: why}\n")
	b.WriteString("case_studies:\n")
	for c := range cases {
		fmt.Fprintf(&b, "  - {name: cs%d, input_fields: [text]}\n", c+1)
	}
	b.WriteString("criteria:\n")
	for c := range criteria {
		fmt.Fprintf(&b, "  - {name: k%d}\n", c+1)
	}
	b.WriteString(`template: |
  Assess {{ row.input_1 }} for {{ row.criterion.name }} in {{ row.case_study.name }}.
  [[mark:{{ row.source_row.id }}.{{ row.case_study.name }}_{{ row.criterion.name }}]]
  {% if row.source_row.fault_query == row.case_study.name ~ "_" ~ row.criterion.name %}[[fault:{{ row.source_row.fault }}]]{% endif %}
`)
	return b.String()
}

// queryNames lists the matrix query names in order.
func queryNames(cases, criteria int) []string {
	var out []string
	for c := range cases {
		for k := range criteria {
			out = append(out, fmt.Sprintf("cs%d_k%d", c+1, k+1))
		}
	}
	return out
}

// waitFor polls cond until it holds, failing the test after timeout naming what.
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

// startWorkerWithResultsFull starts a worker while run is held paused (its start-up
// ensures the topology, which would undo a limit set before), then limits MQ_RESULTS to
// maxMsgs messages and resumes the run. The returned func lifts the limit.
func (e *env) startWorkerWithResultsFull(run string, maxMsgs int64) (lift func()) {
	e.t.Helper()
	ctx := context.Background()
	if err := status.SetControl(ctx, e.js, e.topo.Names, run, wire.ControlPaused); err != nil {
		e.t.Fatal(err)
	}
	e.startWorker(workerOpts{})
	waitFor(e.t, 60*time.Second, "the worker to register its alias", func() bool {
		kv, err := e.js.KeyValue(ctx, wire.BucketFleet)
		if err != nil {
			return false
		}
		_, err = kv.Get(ctx, "default")
		return err == nil
	})
	res, err := e.js.Stream(ctx, wire.StreamResults)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := res.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	full := info.Config
	full.MaxMsgs = maxMsgs
	if _, err := e.js.UpdateStream(ctx, full); err != nil {
		e.t.Fatal(err)
	}
	if err := status.SetControl(ctx, e.js, e.topo.Names, run, wire.ControlRunning); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		e.t.Helper()
		full.MaxMsgs = -1
		if _, err := e.js.UpdateStream(ctx, full); err != nil {
			e.t.Fatal(err)
		}
	}
}
