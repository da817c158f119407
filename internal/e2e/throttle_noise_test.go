package e2e

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/throttle"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// fleetView collects the throttle heartbeats of one deployment: each member's last.
type fleetView struct {
	mu   sync.Mutex
	last map[string]hbCounters
}

type hbCounters struct {
	at        time.Time
	Rate      float64 `json:"rate"`
	Signals   int64   `json:"signals"`
	Lone      int64   `json:"lone"`
	Decreases int64   `json:"decreases"`
	Pauses    int64   `json:"pauses"`
	Source    string  `json:"source"`
}

func (e *env) watchFleet(alias string) *fleetView {
	e.t.Helper()
	nc, _ := e.nats.Connect(e.t)
	v := &fleetView{last: map[string]hbCounters{}}
	sub, err := nc.Subscribe(wire.ThrottleHeartbeatSubject(alias), func(m *nats.Msg) {
		var h struct {
			Member  string `json:"member"`
			Leaving bool   `json:"leaving"`
			hbCounters
		}
		if json.Unmarshal(m.Data, &h) != nil || h.Leaving {
			return
		}
		h.at = time.Now()
		v.mu.Lock()
		v.last[h.Member] = h.hbCounters
		v.mu.Unlock()
	})
	if err != nil {
		e.t.Fatalf("subscribe heartbeats: %v", err)
	}
	e.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return v
}

// settled waits until each of n members has sent a heartbeat after since, and returns
// the members' last counters.
func (v *fleetView) settled(t *testing.T, n int, since time.Time) map[string]hbCounters {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v.mu.Lock()
		fresh := 0
		out := map[string]hbCounters{}
		for id, h := range v.last {
			out[id] = h
			if h.at.After(since) {
				fresh++
			}
		}
		v.mu.Unlock()
		if fresh >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d members sent a heartbeat after the run", fresh, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Issue 9: random 429s (a busy backend, no rate-limit headers) only delay their own jobs:
// with 5 % of calls refused at an unlimited endpoint, no member ever pauses the fleet or
// cuts the rate, while each saw the fleet's 429s.
func TestRandom429sNeitherPauseNorCutTheFleet(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, Faults: llmsim.Faults{llmsim.Fault429: 5},
		InjectedRetryAfter: 200 * time.Millisecond, Seed: 9})
	fleet := e.watchFleet("default")
	tp := worker.ThrottleParams(config.DefaultThrottle()) // slow start from 5/s, as shipped
	for range 3 {
		e.startWorker(workerOpts{concurrency: 16, throttle: &tp})
	}
	e.startCollector("")
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(800, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	s := e.waitSummary(rep.Run, 90*time.Second)
	st := e.sim.Stats()
	if st.ByStatus[429] < 10 {
		t.Fatalf("only %d 429s were served: the test proves nothing", st.ByStatus[429])
	}
	var signals int64
	for id, h := range fleet.settled(t, 3, time.Now()) {
		signals = max(signals, h.Signals)
		t.Logf("member %s: rate %.0f/s, %d signals, %d lone", id, h.Rate, h.Signals, h.Lone)
		if h.Pauses != 0 || h.Decreases != 0 {
			t.Errorf("member %s: %d pauses, %d cuts after %d random 429s, want none", id, h.Pauses, h.Decreases, h.Signals)
		}
	}
	if signals < 10 {
		t.Errorf("the members saw at most %d 429s of %d served: the signals did not reach the fleet", signals, st.ByStatus[429])
	}
	t.Logf("summary %+v; llmsim %d requests, by status %v", s, st.Requests, st.ByStatus)
}

// The other side: a real limit (llmsim's token bucket) is still pressure: the fleet cuts
// its rate. With rate-limit headers it cuts when a served answer reads the budget spent,
// before the limiter refuses much; without them, on the corroborated 429s.
func TestARealLimitStillCutsTheFleet(t *testing.T) {
	for _, headers := range []string{llmsim.RateLimitHeadersAzure, llmsim.RateLimitHeadersNone} {
		t.Run(headers, func(t *testing.T) {
			e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, RPS: 50, Burst: 5, RateLimitHeaders: headers})
			fleet := e.watchFleet("default")
			tp := worker.ThrottleParams(config.DefaultThrottle())
			for range 2 {
				e.startWorker(workerOpts{concurrency: 16, throttle: &tp})
			}
			e.startCollector("")
			rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(250, nil), input.CSV)
			if err != nil {
				t.Fatalf("produce: %v", err)
			}
			e.waitSummary(rep.Run, 90*time.Second)
			st := e.sim.Stats()
			var cuts int64
			for _, h := range fleet.settled(t, 2, time.Now()) {
				cuts = max(cuts, h.Decreases)
			}
			if headers == llmsim.RateLimitHeadersNone && st.ByStatus[429] == 0 {
				t.Fatal("the limiter refused nothing: the test proves nothing")
			}
			if cuts == 0 {
				t.Errorf("no member cut its rate (%d limiter 429s)", st.ByStatus[429])
			}
			t.Logf("llmsim %d requests, by status %v; max cuts of a member %d", st.Requests, st.ByStatus, cuts)
		})
	}
}

// Issue 13: the fleet remembers the rate it was served at the limit (KV mq_throttle); a
// worker started for the next run begins from it instead of slow start from start_rate,
// and mqctl status shows it. Without rate-limit headers, so only the 429s tell the limit.
func TestALaterWorkerStartsFromTheRememberedRate(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, RPS: 40, Burst: 5, RateLimitHeaders: llmsim.RateLimitHeadersNone})
	tp := worker.ThrottleParams(config.DefaultThrottle())
	stop := e.startWorker(workerOpts{concurrency: 32, throttle: &tp})
	e.startCollector("")
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(400, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 90*time.Second)
	kv, err := e.js.KeyValue(t.Context(), wire.BucketThrottle)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(t.Context(), "default")
	if err != nil {
		t.Fatalf("after a run at the limit nothing is remembered: %v", err)
	}
	var l wire.LearnedRate
	if err := json.Unmarshal(entry.Value(), &l); err != nil || l.Rate < 10 || l.Rate > 44 {
		t.Fatalf("remembered %s (%v); want a rate near the 40/s limit", entry.Value(), err)
	}
	stop()

	fleet := e.watchFleet("default")
	e.startWorker(workerOpts{concurrency: 32, throttle: &tp})
	hb := fleet.settled(t, 1, time.Now())
	for id, h := range hb {
		if h.Source != throttle.SourceLearned || h.Rate < 0.9*l.Rate*0.95 {
			t.Fatalf("the new worker %s: source %q at %.1f/s; want it to start from the remembered %.1f/s", id, h.Source, h.Rate, l.Rate)
		}
	}
	nc, _ := e.nats.Connect(t)
	r, err := status.Get(t.Context(), nc, e.js, e.topo.Names, rep.Run, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if th := r.Throttle["default"]; th.Learned != l.Rate || th.Source != throttle.SourceLearned || !strings.Contains(r.Text(), "remembered rate") {
		t.Fatalf("status shows %+v:\n%s\nwant the remembered %.1f/s and source learned", th, r.Text(), l.Rate)
	}
}
