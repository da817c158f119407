package worker

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/wire"
)

// A final result carries every call of its job: retries are the calls beyond the
// first, whatever their reason, and no call means no billed usage.
func TestAFinalResultCarriesWhatEveryCallCost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spent spend
		want  wire.Result
	}{
		{"no call (cancelled, paused, poison)", spend{}, wire.Result{}},
		{"one call", spend{calls: 1, prompt: 40, completion: 8},
			wire.Result{Calls: 1, Billed: &wire.Usage{PromptTokens: 40, CompletionTokens: 8, TotalTokens: 48}}},
		{"two 429s then an invalid answer", spend{calls: 3, prompt: 40, completion: 12},
			wire.Result{Calls: 3, Retries: 2, Billed: &wire.Usage{PromptTokens: 40, CompletionTokens: 12, TotalTokens: 52}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got wire.Result
			tc.spent.apply(&got)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Fatalf("result (-want +got):\n%s", d)
			}
		})
	}
}

// Only deliveries that ended without an outcome count toward the crash-loop cap; a
// state written before NAKs were counted falls back on its error counts.
func TestWaitsAndRetriesDoNotCountTowardTheCrashLoopCap(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   retryState
		want uint64
	}{
		{"fresh", retryState{}, 0},
		{"waits and retries", retryState{Naks: 40, CapacityErrors: 3}, 40},
		{"older state", retryState{CapacityErrors: 5, TransientErrors: 2}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.st.naks(); got != tc.want {
				t.Fatalf("naks = %d, want %d", got, tc.want)
			}
		})
	}
}
