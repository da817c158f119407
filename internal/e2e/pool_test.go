package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

const poolPipeline = `llm:
  model: sim-model
  pool: duo
  deployments:
    - {alias: east, weight: 1}
    - {alias: west, weight: 4}
output_fields:
  echo: {type: string}
queries:
  - name: q
    input_fields: [text]
    template: "Answer about {{ row.input_1 }}. [[mark:{{ row.source_row.id }}]]"
`

// poolWorker starts a worker serving east and west at the given simulators, with the
// default throttle (slow start from 5/s: each member finds its own limit).
func (e *env) poolWorker(eastURL, westURL string) {
	e.t.Helper()
	dep := func(alias, url string) worker.Deployment {
		return worker.Deployment{LLM: llm.Options{Alias: alias, Provider: "openai", Endpoint: url + "/v1", Timeout: 10 * time.Second},
			Throttle: worker.ThrottleParams(config.DefaultThrottle())}
	}
	e.startWorker(workerOpts{concurrency: 16, tweak: func(c *worker.Config) {
		c.Deployments = []worker.Deployment{dep("east", eastURL), dep("west", westURL)}
	}})
}

// deployments counts a run's result rows by the member that answered q.
func (e *env) deployments(run string, rows int) map[string]int {
	e.t.Helper()
	lines := e.lines(run, sink.ResultsJSONL)
	if errs := e.lines(run, sink.ErrorsJSONL); len(lines) != rows || len(errs) != 0 {
		e.t.Fatalf("run %s: %d result lines and %d error lines, want %d and 0", run, len(lines), len(errs), rows)
	}
	by := map[string]int{}
	for _, r := range lines {
		id, _ := r["id"].(string)
		if echo, _ := r["q_echo"].(string); !strings.Contains(echo, id) {
			e.t.Fatalf("row %s: q_echo %q lacks its marker", id, echo)
		}
		d, _ := r["q_deployment"].(string)
		by[d]++
	}
	return by
}

// Acceptance 5 (behaviour; the goodput and 429 figures are mqbench --pool's): two
// llmsim instances limited to 10 and 40 req/s serve one pool. Both members answer;
// when one is killed mid-run, the run completes on the other.
func TestDeploymentPool(t *testing.T) {
	e := setup(t, llmsim.Config{})
	east, eastURL, stopEast, err := llmsim.Start(llmsim.Config{Latency: 20 * time.Millisecond, RPS: 10, Burst: 5, Seed: 1}, zerolog.Nop())
	if err != nil {
		t.Fatalf("start llmsim: %v", err)
	}
	t.Cleanup(stopEast)
	west, westURL, stopWest, err := llmsim.Start(llmsim.Config{Latency: 20 * time.Millisecond, RPS: 40, Burst: 5, Seed: 2}, zerolog.Nop())
	if err != nil {
		t.Fatalf("start llmsim: %v", err)
	}
	t.Cleanup(stopWest)
	e.poolWorker(eastURL, westURL)
	e.startCollector("")
	p := e.pipeline(poolPipeline)

	t.Run("both members answer the pool's jobs, and each row says which", func(t *testing.T) {
		rep, err := e.produce(p, csvRows(150, nil), input.CSV)
		if err != nil {
			t.Fatalf("produce: %v", err)
		}
		sum := e.waitSummary(rep.Run, 90*time.Second)
		if sum.Stats.RowsOK != 150 {
			t.Fatalf("rows ok = %d, want 150", sum.Stats.RowsOK)
		}
		by := e.deployments(rep.Run, 150)
		if by["east"] == 0 || by["west"] == 0 || by["east"]+by["west"] != 150 {
			t.Fatalf("rows by deployment = %v, want both east and west, 150 in all", by)
		}
		if east.Stats().OK == 0 || west.Stats().OK == 0 {
			t.Fatalf("llmsim answers east/west = %d/%d, want both > 0", east.Stats().OK, west.Stats().OK)
		}
		if int64(by["east"]) > east.Stats().OK || int64(by["west"]) > west.Stats().OK {
			t.Fatalf("rows by deployment %v exceed the members' answers %d/%d", by, east.Stats().OK, west.Stats().OK)
		}
	})

	t.Run("a member killed mid-run: the run completes on the other", func(t *testing.T) {
		before := east.Stats().OK
		rep, err := e.produce(p, csvRows(300, nil), input.CSV)
		if err != nil {
			t.Fatalf("produce: %v", err)
		}
		waitFor(t, 60*time.Second, "east to answer some of the run", func() bool { return east.Stats().OK >= before+10 })
		stopEast()
		eastServed := east.Stats().OK - before
		westBefore := west.Stats().OK
		sum := e.waitSummary(rep.Run, 120*time.Second)
		if sum.Stats.RowsOK != 300 || sum.Stats.RowsFailed != 0 {
			t.Fatalf("rows ok/failed = %d/%d, want 300/0", sum.Stats.RowsOK, sum.Stats.RowsFailed)
		}
		by := e.deployments(rep.Run, 300)
		if int64(by["east"]) > eastServed {
			t.Fatalf("%d rows answered by east, which served %d calls of the run before it was killed", by["east"], eastServed)
		}
		if by["east"]+by["west"] != 300 {
			t.Fatalf("rows by deployment = %v, want east and west only", by)
		}
		if west.Stats().OK == westBefore {
			t.Fatal("west answered no call after east was killed: the kill was not mid-run")
		}
		if !strings.Contains(e.logBuf.String(), "pool member down") {
			t.Fatal("no worker took east down after its calls failed")
		}
	})
}

// A pool's member that refuses calls is failed over within the delivery: a member that
// answers only 429s, and a member whose key is refused (its breaker opens).
func TestPoolFailsOver(t *testing.T) {
	for _, tc := range []struct {
		name    string
		east    llmsim.Config
		breaker bool
	}{
		{"a member answering only 429s: every row is answered by the other",
			llmsim.Config{Latency: 5 * time.Millisecond, Faults: llmsim.Faults{"429": 100}, InjectedRetryAfter: time.Second}, false},
		{"a member refusing the key: its breaker opens and every row is answered by the other",
			llmsim.Config{Latency: 5 * time.Millisecond, Keys: []string{"another-key"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, llmsim.Config{})
			east, eastURL, stopEast, err := llmsim.Start(tc.east, zerolog.Nop())
			if err != nil {
				t.Fatalf("start llmsim: %v", err)
			}
			t.Cleanup(stopEast)
			west, westURL, stopWest, err := llmsim.Start(llmsim.Config{Latency: 5 * time.Millisecond}, zerolog.Nop())
			if err != nil {
				t.Fatalf("start llmsim: %v", err)
			}
			t.Cleanup(stopWest)
			e.poolWorker(eastURL, westURL)
			e.startCollector("")
			rep, err := e.produce(e.pipeline(poolPipeline), csvRows(60, nil), input.CSV)
			if err != nil {
				t.Fatalf("produce: %v", err)
			}
			sum := e.waitSummary(rep.Run, 90*time.Second)
			if sum.Stats.RowsOK != 60 {
				t.Fatalf("rows ok = %d, want 60", sum.Stats.RowsOK)
			}
			if by := e.deployments(rep.Run, 60); by["west"] != 60 {
				t.Fatalf("rows by deployment = %v, want all 60 from west", by)
			}
			if east.Stats().Requests == 0 || west.Stats().OK < 60 {
				t.Fatalf("east got %d calls, west answered %d: want east tried and west answering every row", east.Stats().Requests, west.Stats().OK)
			}
			// Every call of east failed over within its delivery: no job was delivered
			// twice, and east's calls are audited under east.
			byDep := map[string]int{}
			for _, r := range e.auditRecordsOf(func() int64 { return east.Stats().Requests + west.Stats().Requests }) {
				if r.Attempt != 1 {
					t.Fatalf("row %d called at delivery %d (%s): a refused call was not failed over within its delivery", r.Row, r.Attempt, r.Deployment)
				}
				byDep[r.Deployment]++
			}
			if int64(byDep["east"]) != east.Stats().Requests || int64(byDep["west"]) != west.Stats().Requests {
				t.Fatalf("audited calls by deployment %v, want east %d and west %d", byDep, east.Stats().Requests, west.Stats().Requests)
			}
			if !tc.breaker {
				return
			}
			runs, err := e.js.KeyValue(context.Background(), e.topo.Names.BucketRuns())
			if err != nil {
				t.Fatalf("runs bucket: %v", err)
			}
			if _, err := runs.Get(context.Background(), wire.BreakerKey("east")); err != nil {
				t.Fatalf("east's breaker: %v, want it open", err)
			}
		})
	}
}

// The prompt cache with a pool: a run whose jobs use the cache is fetched without
// permits, and a job the cache does not answer takes the permit of a member with spare
// capacity, which answers it (the first run: every row names east or west); a job the
// cache answers takes no member's permit and makes no call (the second run of the same
// input: neither member is called, every row is cached and names no member).
func TestAPoolRunUsesThePromptCache(t *testing.T) {
	e := setup(t, llmsim.Config{})
	east, eastURL, stopEast, err := llmsim.Start(llmsim.Config{Latency: 5 * time.Millisecond, Seed: 1}, zerolog.Nop())
	if err != nil {
		t.Fatalf("start llmsim: %v", err)
	}
	t.Cleanup(stopEast)
	west, westURL, stopWest, err := llmsim.Start(llmsim.Config{Latency: 5 * time.Millisecond, Seed: 2}, zerolog.Nop())
	if err != nil {
		t.Fatalf("start llmsim: %v", err)
	}
	t.Cleanup(stopWest)
	e.poolWorker(eastURL, westURL)
	e.startCollector("")
	pipeline := poolPipeline + "cache: {enabled: true, ttl: 168h}\n"
	rows := csvRows(60, nil)
	calls := func() int64 { return east.Stats().Requests + west.Stats().Requests }

	_, calls1, cached1, first := e.cacheRun(pipeline, rows)
	served := calls()
	if calls1 != 60 || cached1 != 0 || served != 60 {
		t.Fatalf("first run: %d calls, %d cached, the members served %d; want 60, 0, 60", calls1, cached1, served)
	}
	by := map[string]int{}
	for _, r := range first {
		if r["q_cached"] != false {
			t.Fatalf("first run row %v: q_cached %v, want false", r["id"], r["q_cached"])
		}
		d, _ := r["q_deployment"].(string)
		by[d]++
	}
	if len(first) != 60 || by["east"]+by["west"] != 60 {
		t.Fatalf("first run: %d rows, by deployment %v; want 60, all answered by east or west", len(first), by)
	}

	_, calls2, cached2, second := e.cacheRun(pipeline, rows)
	if n := calls(); n != served {
		t.Fatalf("second run: the members served %d requests more, want none", n-served)
	}
	if calls2 != 0 || cached2 != 60 || len(second) != 60 {
		t.Fatalf("second run: %d calls, %d cached, %d rows; want 0, 60, 60", calls2, cached2, len(second))
	}
	for _, r := range second {
		if r["q_cached"] != true || r["q_deployment"] != "" {
			t.Fatalf("second run row %v: q_cached %v, q_deployment %q; want true and no member", r["id"], r["q_cached"], r["q_deployment"])
		}
	}
}
