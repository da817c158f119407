package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// LatencyRow is one latency-bound measurement: achieved calls/s against what the slots
// allow at the model's latency (slots / latency).
type LatencyRow struct {
	Name     string
	Slots    int
	Ideal    float64 // slots / latency, calls/s
	Achieved float64
	Wall     time.Duration
	Peak     int64 // llmsim peak in flight
	Queries  int   // calls the run asked for
	Raw      bool  // the raw+HTTP loop, not the pipeline
	Shipped  bool  // the pipeline ran with the shipped throttle defaults
	// Aside is a row shown beside the bounds and judged by none: the replaced system's
	// scenario with other throttle settings (mqbench --replaced-throttle).
	Aside bool
	// Next is the same scenario run again, NextRunAfter after the run before it ended,
	// on the same fleet: a fleet that has run before, as a deployed one has (the rows
	// without it are a fleet's first run).
	Next bool
	// ToFirst is the time from the producer's start to the first call, AfterLast from
	// the last call to the summary (pipeline rows only): what the run's wall spends
	// outside the calls. ToFirst is -1 when llmsim's log lost the run's first calls.
	ToFirst, AfterLast time.Duration
	// Calls is how many calls llmsim received in each CallBucket from the run's first
	// call, for a pipeline run whose calls span at most CallProfileSpan (the replaced
	// system's scenario on a fleet that has run before): how the run's calls were spread.
	Calls []int
	// Cost is the run's CPU by process (llmsim apart) and its queries: what a call
	// cost where the machine, not the latency, bounds the rate.
	Cost CostRow
}

// CallBucket and CallProfileSpan bound LatencyRow.Calls: 10 ms buckets (a fifth of the
// scenarios' 50 ms latency), for runs whose calls span up to a second.
const (
	CallBucket      = 10 * time.Millisecond
	CallProfileSpan = time.Second
)

// Share is achieved / ideal.
func (r LatencyRow) Share() float64 { return r.Achieved / r.Ideal }

// simPeak reads llmsim's peak in-flight count and resets its counters.
func (s *Stack) simPeak(reset bool) (int64, error) {
	var st struct {
		Peak int64 `json:"peak_in_flight"`
	}
	if err := getJSON(s.SimURL+"/stats", &st); err != nil {
		return 0, err
	}
	if reset {
		r, err := http.Post(s.SimURL+"/stats/reset", "application/json", nil)
		if err == nil {
			r.Body.Close()
		}
	}
	return st.Peak, nil
}

// FleetWarm is how long the latency-bound cells let a fresh fleet run before the run
// starts: more than a worker's first listening period (throttle.HeartbeatEvery + 20 %).
const FleetWarm = time.Second

// NextRunAfter is how long after a run ends the fleet's next run starts (LatencyBound's
// runs after the first): more than the throttle's idle spell (1 s), so that the fleet
// resumes as after a break between runs, not as in mid-run.
const NextRunAfter = 2 * time.Second

// LatencyBound measures, at a model latency, the raw loop with HTTP at `slots` and the
// pipeline with `workers` workers x slots/workers, each on a fresh stack; the pipeline
// runs with the throttle given (the shipped defaults when ""), `runs` times on the same
// fleet (the rows after the first are Next).
func LatencyBound(ctx context.Context, c CostConfig, latency time.Duration, workers, slots, rows, queries, runs int, throttle string) ([]LatencyRow, error) {
	dir, err := os.MkdirTemp(c.Dir, fmt.Sprintf("lat-%dx%d-", workers, slots/workers))
	if err != nil {
		return nil, err
	}
	s, err := startStack(c.Bin, dir, []string{"--latency", latency.String()}, 1, c.Profile != "")
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	ideal := float64(slots) / latency.Seconds()
	var out []LatencyRow
	if c.Self != "" {
		passes, err := c.rawLoop(ctx, s, true, slots, rows*queries, 1)
		if err != nil {
			return out, err
		}
		raw := passes[0]
		peak, _ := s.simPeak(true)
		out = append(out, LatencyRow{Name: fmt.Sprintf("raw+http %d slots", slots), Slots: slots, Ideal: ideal, Achieved: raw.Rate(), Wall: raw.Wall, Peak: peak,
			Queries: raw.Queries, Raw: true, Cost: raw})
	}
	if _, err := s.StartWorkers(workers, throttle, "--concurrency", strconv.Itoa(slots/workers), "--log-level", "warn"); err != nil {
		return out, err
	}
	if err := s.StartCollector(); err != nil {
		return out, err
	}
	// A run comes to a fleet that is up: a worker listens to its fleet for a heartbeat
	// period before its first call (throttle.Fleet), once in its life, not per run.
	if err := sleepCtx(ctx, FleetWarm); err != nil {
		return out, err
	}
	for i := range max(runs, 1) {
		name := fmt.Sprintf("pipeline %dx%d slots, %dx%d", workers, slots/workers, rows, queries)
		if i > 0 {
			if err := sleepCtx(ctx, NextRunAfter); err != nil {
				return out, err
			}
			name += ", next run"
		}
		seq0 := s.lastSeq() // the raw loop's calls, and the run before's, are not this run's
		row, err := c.pipeline(ctx, s, name, rows, queries)
		if err != nil {
			return out, err
		}
		sinceFirst, sinceLast, received := s.callSpan(seq0, row.Ended)
		toFirst := row.Wall - sinceFirst
		if sinceFirst < 0 {
			toFirst = -1 // not known: the log lost the run's first calls
		}
		peak, _ := s.simPeak(true)
		out = append(out, LatencyRow{Name: name, Slots: slots, Ideal: ideal, Achieved: row.Rate(), Wall: row.Wall, Peak: peak,
			ToFirst: toFirst, AfterLast: sinceLast, Queries: rows * queries, Shipped: throttle == "", Next: i > 0,
			Calls: callProfile(received, CallBucket, CallProfileSpan), Cost: row})
	}
	return out, nil
}

// callSpan is how long before now llmsim received the first and the last call logged
// after sequence since (now is taken by the caller: reading a long log takes a while),
// and when it received each of them. first is -1 when the log no longer holds the
// run's first calls (llmsim keeps its last 100 000: a longer run's first calls are gone).
func (s *Stack) callSpan(since uint64, now time.Time) (first, last time.Duration, received []time.Time) {
	reqs, err := s.Requests()
	if err != nil {
		return 0, 0, nil
	}
	received, whole := receivedSince(reqs, since)
	lo, hi := span(received)
	if lo.IsZero() {
		return 0, 0, nil
	}
	if !whole {
		return -1, now.Sub(hi), received
	}
	return now.Sub(lo), now.Sub(hi), received
}

// receivedSince is when llmsim received each logged call after sequence since; whole is
// false when the log lost some of them (its oldest entry comes after since + 1).
func receivedSince(reqs []llmsim.RequestLog, since uint64) (received []time.Time, whole bool) {
	oldest := uint64(0)
	for _, r := range reqs {
		if r.Seq > since {
			received = append(received, r.Received)
		}
		if oldest == 0 || r.Seq < oldest {
			oldest = r.Seq
		}
	}
	return received, len(received) == 0 || oldest <= since+1
}

// span is the earliest and the latest of ts (zero times when ts is empty).
func span(ts []time.Time) (lo, hi time.Time) {
	for _, t := range ts {
		if lo.IsZero() || t.Before(lo) {
			lo = t
		}
		if t.After(hi) {
			hi = t
		}
	}
	return lo, hi
}

// callProfile counts the calls received in each bucket from the first one; nil when
// they span more than maxSpan (or there are none).
func callProfile(received []time.Time, bucket, maxSpan time.Duration) []int {
	lo, hi := span(received)
	if lo.IsZero() || hi.Sub(lo) > maxSpan {
		return nil
	}
	counts := make([]int, hi.Sub(lo)/bucket+1)
	for _, t := range received {
		counts[t.Sub(lo)/bucket]++
	}
	return counts
}

// lastSeq is the sequence of llmsim's last logged request.
func (s *Stack) lastSeq() uint64 {
	reqs, _ := s.Requests()
	var seq uint64
	for _, r := range reqs {
		seq = max(seq, r.Seq)
	}
	return seq
}

// CallProfileTable prints the rows' call profiles (LatencyRow.Calls); "" when none has
// one.
func CallProfileTable(rows []LatencyRow) string {
	var b strings.Builder
	for _, r := range rows {
		if len(r.Calls) == 0 {
			continue
		}
		if b.Len() == 0 {
			fmt.Fprintf(&b, "| run | calls llmsim received per %s from the run's first call |\n|---|---|\n", CallBucket)
		}
		counts := make([]string, len(r.Calls))
		for i, n := range r.Calls {
			counts[i] = strconv.Itoa(n)
		}
		fmt.Fprintf(&b, "| %s | %s |\n", r.Name, strings.Join(counts, " "))
	}
	return b.String()
}

// LatencyTable prints latency-bound rows.
func LatencyTable(rows []LatencyRow) string {
	var b strings.Builder
	b.WriteString("| measure | ideal calls/s (slots/latency) | achieved calls/s | achieved / ideal | wall | start to first call / last call to summary | llmsim peak in flight | CPU/call µs, all but llmsim (by process) | llmsim CPU/call µs | NATS msgs/call in+out |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		span := "-"
		if r.ToFirst != 0 || r.AfterLast != 0 {
			toFirst := r.ToFirst.Round(time.Millisecond).String()
			if r.ToFirst < 0 {
				toFirst = "not in llmsim's log"
			}
			span = fmt.Sprintf("%s / %s", toFirst, r.AfterLast.Round(time.Millisecond))
		}
		cpu, msgs := "-", "-"
		if len(r.Cost.CPU) > 0 {
			cpu = fmt.Sprintf("%d (%s)", r.Cost.PerQuery().Microseconds(), r.Cost.byProcess())
			msgs = fmt.Sprintf("%.2f", r.Cost.MsgsPerQuery())
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f %% | %s | %s | %d | %s | %s | %s |\n", r.Name, r.Ideal, r.Achieved, 100*r.Share(), r.Wall.Round(10*time.Millisecond), span, r.Peak,
			cpu, r.Cost.simPerQuery(), msgs)
	}
	return b.String()
}
