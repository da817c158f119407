package e2e

import (
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
)

// Issue 3, acceptance 4: a 429 with retry-after-ms 2000 pauses the whole fleet: no call
// dispatched more than 20 ms after that 429 came back reaches the deployment before the
// 2 s have passed.
func TestRetryAfterPausesTheWholeFleet(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, InjectedRetryAfter: 2 * time.Second})
	tp := fastThrottle()
	tp.MaxPause = 10 * time.Second
	for range 3 {
		e.startWorker(workerOpts{concurrency: 8, throttle: &tp})
	}
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, "max_capacity_retry_seconds: 1\n"))
	rep, err := e.produce(p, csvRows(300, func(i int) (string, string) {
		if i == 60 {
			return "429", "cs1_k1"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 90*time.Second)
	reqs := e.sim.Requests(0)
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].Received.Before(reqs[j].Received) })
	var t0 time.Time
	for _, r := range reqs {
		if r.Status == 429 {
			t0 = r.Received
			break
		}
	}
	if t0.IsZero() {
		t.Fatal("no 429 was served: the test proves nothing")
	}
	after, inPause := 0, 0
	for _, r := range reqs {
		ns, err := strconv.ParseInt(r.Dispatch, 10, 64)
		if err != nil {
			t.Fatalf("request %d has no dispatch stamp %q", r.Seq, r.Dispatch)
		}
		dispatched := time.Unix(0, ns)
		if dispatched.After(t0.Add(20 * time.Millisecond)) {
			after++
			if r.Received.Before(t0.Add(2 * time.Second)) {
				inPause++
				t.Errorf("request %d dispatched %s after the 429 reached the deployment %s after it, inside the 2 s pause",
					r.Seq, dispatched.Sub(t0), r.Received.Sub(t0))
			}
		}
	}
	if after == 0 {
		t.Fatal("no request was dispatched after the pause: the test proves nothing")
	}
	t.Logf("%d requests dispatched after the 429, %d inside the pause", after, inPause)
}
