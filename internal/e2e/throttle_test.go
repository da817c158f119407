package e2e

import (
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
)

// dispatched reads a request's dispatch stamp.
func dispatched(t *testing.T, r llmsim.RequestLog) time.Time {
	t.Helper()
	ns, err := strconv.ParseInt(r.Dispatch, 10, 64)
	if err != nil {
		t.Fatalf("request %d has no dispatch stamp %q", r.Seq, r.Dispatch)
	}
	return time.Unix(0, ns)
}

func byReceived(reqs []llmsim.RequestLog) []llmsim.RequestLog {
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].Received.Before(reqs[j].Received) })
	return reqs
}

// Issue 9 (replacing issue 3's "every Retry-After pauses the fleet"): a lone 429 with
// retry-after-ms 2000 delays only its own job -- the job is not called again before the
// 2 s -- while the rest of the fleet keeps dispatching.
func TestALone429DelaysOnlyItsOwnJob(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, InjectedRetryAfter: 2 * time.Second})
	tp := fastThrottle()
	tp.MaxPause = 10 * time.Second
	for range 3 {
		e.startWorker(workerOpts{concurrency: 8, throttle: &tp})
	}
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, "max_capacity_retry_seconds: 3\n"))
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
	reqs := byReceived(e.sim.Requests(0))
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
	inPause, retried := 0, false
	for _, r := range reqs {
		if r.Marker == "r60.cs1_k1" && r.Received.After(t0) {
			retried = true
			if r.Received.Before(t0.Add(2 * time.Second)) {
				t.Errorf("the refused job was called again %s after its 429, before its Retry-After of 2 s", r.Received.Sub(t0))
			}
		}
		if dispatched(t, r).After(t0.Add(20*time.Millisecond)) && r.Received.Before(t0.Add(2*time.Second)) {
			inPause++
		}
	}
	if !retried {
		t.Error("the refused job was never called again")
	}
	if inPause == 0 {
		t.Error("no call reached the deployment in the 2 s after a lone 429: the fleet paused")
	}
	t.Logf("%d calls dispatched in the 2 s after the lone 429", inPause)
}

// Corroborated pressure pauses the whole fleet: 429s (without rate-limit headers) that
// are most of a window's answers pause every worker for their retry-after-ms of 2 s: no
// call dispatched more than 20 ms after the pressure was seen reaches the deployment
// before the 2 s have passed.
func TestCorroboratedPressurePausesTheWholeFleet(t *testing.T) {
	e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, InjectedRetryAfter: 2 * time.Second})
	tp := fastThrottle()
	// A fixed fleet rate of 40/s: 10 answers a window, so 5 refusals in a row are
	// min_signals and half of the window's answers.
	tp.StartRate, tp.MinRate, tp.MaxRate, tp.MaxPause = 40, 40, 40, 10*time.Second
	for range 3 {
		e.startWorker(workerOpts{concurrency: 8, throttle: &tp})
	}
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, "max_capacity_retry_seconds: 1\n"))
	rep, err := e.produce(p, csvRows(80, func(i int) (string, string) {
		if i >= 30 && i < 45 {
			return "429", "cs1_k1"
		}
		return "", ""
	}), input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	e.waitSummary(rep.Run, 120*time.Second)
	reqs := byReceived(e.sim.Requests(0))
	var seen []time.Time // 429s, in order
	for _, r := range reqs {
		if r.Status == 429 {
			seen = append(seen, r.Received)
		}
	}
	// The first run of 5 refusals within one 250 ms window is the pressure.
	var tp0 time.Time
	for i := 4; i < len(seen); i++ {
		if seen[i].Sub(seen[i-4]) < 250*time.Millisecond {
			tp0 = seen[i]
			break
		}
	}
	if tp0.IsZero() {
		t.Fatalf("no 5 refusals within a window among %d 429s: the test proves nothing", len(seen))
	}
	after, inPause := 0, 0
	for _, r := range reqs {
		if !dispatched(t, r).After(tp0.Add(20 * time.Millisecond)) {
			continue
		}
		after++
		if r.Received.Before(tp0.Add(2 * time.Second)) {
			inPause++
			t.Errorf("request %d dispatched %s after the pressure reached the deployment %s after it, inside the 2 s pause",
				r.Seq, dispatched(t, r).Sub(tp0), r.Received.Sub(tp0))
		}
	}
	if after == 0 {
		t.Fatal("no request was dispatched after the pause: the test proves nothing")
	}
	t.Logf("%d requests dispatched after the pressure, %d inside the pause", after, inPause)
}
