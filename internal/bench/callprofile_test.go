package bench

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// A run's call profile counts the calls llmsim received in each bucket from the first
// one, whatever order the log holds them in; a run whose calls span more than the
// profile's limit has none.
func TestACallProfileCountsTheCallsOfEachBucketFromTheFirst(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	cases := []struct {
		name     string
		received []time.Time
		want     []int
	}{
		{"a wave, a gap, a wave", at(0, 3, 9, 10, 42, 49), []int{3, 1, 0, 0, 2}},
		{"out of order, first call not at zero", at(25, 5, 14, 6), []int{3, 0, 1}},
		{"one call", at(7), []int{1}},
		{"none", nil, nil},
		{"longer than the limit", at(0, 1001), nil},
		{"exactly the limit", at(0, 1000), append(append([]int{1}, make([]int, 99)...), 1)},
	}
	for _, c := range cases {
		if got := callProfile(c.received, 10*time.Millisecond, time.Second); !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestTheCallProfileTableShowsOnlyRowsWithAProfile(t *testing.T) {
	if got := CallProfileTable([]LatencyRow{{Name: "raw+http 64 slots"}}); got != "" {
		t.Errorf("no row has a profile, got a table: %q", got)
	}
	got := CallProfileTable([]LatencyRow{{Name: "pipeline 1x100 slots, 50x10"}, {Name: "pipeline 1x100 slots, 50x10, next run", Calls: []int{100, 0, 3}}})
	want := "| run | calls llmsim received per 10ms from the run's first call |\n|---|---|\n| pipeline 1x100 slots, 50x10, next run | 100 0 3 |\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// The calls after a sequence are whole while llmsim's log still holds the first of
// them; once it lost some (it keeps the last 100 000), the run's first call is not
// known, and the table says so instead of a time from the oldest call it kept.
func TestACallLogThatLostTheRunsFirstCallsIsNotWhole(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	logOf := func(seqs ...uint64) []llmsim.RequestLog {
		var out []llmsim.RequestLog
		for _, s := range seqs {
			out = append(out, llmsim.RequestLog{Seq: s, Received: t0.Add(time.Duration(s) * time.Millisecond)})
		}
		return out
	}
	cases := []struct {
		name  string
		log   []llmsim.RequestLog
		since uint64
		calls int
		whole bool
	}{
		{"the run's calls after an earlier run's", logOf(5, 6, 7, 8), 6, 2, true},
		{"the log starts at the run's first call", logOf(7, 8, 9), 6, 3, true},
		{"the log lost the run's first call", logOf(8, 9, 10), 6, 3, false},
		{"no call after since", logOf(3, 4), 4, 0, true},
	}
	for _, c := range cases {
		received, whole := receivedSince(c.log, c.since)
		if len(received) != c.calls || whole != c.whole {
			t.Errorf("%s: %d calls, whole %v; want %d, %v", c.name, len(received), whole, c.calls, c.whole)
		}
	}
	table := LatencyTable([]LatencyRow{{Name: "pipeline 4x256 slots, 102400x1", Slots: 1024, Ideal: 20480, Achieved: 3692, Wall: 27 * time.Second, ToFirst: -1, AfterLast: 58 * time.Millisecond, Peak: 1024}})
	if !strings.Contains(table, "| not in llmsim's log / 58ms |") {
		t.Errorf("a row whose first call the log lost shows\n%s", table)
	}
	if !strings.Contains(table, "| 1024 | - | - | - |") {
		t.Errorf("a row without CPU readings shows\n%s", table)
	}
	cost := CostRow{Queries: 1000, CPU: map[string]time.Duration{"worker": 200 * time.Millisecond, "nats-server": 90 * time.Millisecond}, Sim: 80 * time.Millisecond,
		MsgsIn: 3000, MsgsOut: 3500}
	table = LatencyTable([]LatencyRow{{Name: "pipeline 1x64 slots, 6400x1", Cost: cost}})
	if !strings.Contains(table, "| 290 (nats-server 90, worker 200) | 80 | 6.50 |") {
		t.Errorf("a row's CPU per call, all but llmsim's and by process, then llmsim's, then its NATS messages, shows\n%s", table)
	}
}
