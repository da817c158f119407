package bench

import (
	"slices"
	"testing"
	"time"
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
