package resubmit

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/multiquery/multiquery/internal/wire"
)

// What an error row of resubmit.jsonl comes to: asked again (with which jobs, which
// answers kept), skipped, or refused for want of the pipeline.
func TestPick(t *testing.T) {
	open := &wire.Open{Run: "r", Queries: []wire.QueryInfo{{Name: "a", Columns: []string{"a_x"}}, {Name: "b", Columns: []string{"b_x"}}}}
	job := func(q string) json.RawMessage {
		b, _ := json.Marshal(wire.Job{V: 1, Run: "r", Row: 3, Query: q, Deployment: "d", Request: wire.Request{Messages: []wire.Message{{Role: "user", Content: "hi"}},
			ResponseFormat: wire.FormatStandard}, Outputs: []wire.OutputField{{Field: "x", Column: q + "_x", Type: wire.TypeString}},
			MaxCapacityRetrySeconds: 1, MaxAttempts: 1})
		return b
	}
	// result is a query's result as the collector keeps it: a failure with its job
	// (withJob), a success without.
	result := func(q string, ok, withJob bool, fields string) json.RawMessage {
		r := wire.Result{V: 1, Run: "r", Row: 3, Query: q, OK: ok}
		if fields != "" {
			_ = json.Unmarshal([]byte(fields), &r.Fields)
		}
		if !ok {
			r.Error = &wire.Error{Reason: wire.ReasonContentFiltered}
		}
		if withJob {
			r.Job = job(q)
		}
		b, _ := json.Marshal(r)
		return b
	}
	answered, failed := result("a", true, false, `{"a_x":"1"}`), result("b", false, true, "")
	tests := []struct {
		name       string
		results    []json.RawMessage
		onlyFailed bool
		want       bool
		wantErr    error
		jobs, kept int
	}{
		{"a pre-known error (no results): skipped", nil, false, false, nil, 0, 0},
		{"every query failed: every query asked again with its kept job", []json.RawMessage{result("a", false, true, ""), failed}, false, true, nil, 2, 0},
		{"one query answered, every query asked: the pipeline is needed", []json.RawMessage{answered, failed}, false, false, ErrNeedsPipeline, 0, 0},
		{"one query answered, only failed queries: one asked, one answer kept", []json.RawMessage{answered, failed}, true, true, nil, 1, 1},
		{"a failed query without its job: the pipeline is needed", []json.RawMessage{answered, result("b", false, false, "")}, true, false, ErrNeedsPipeline, 0, 0},
		{"an ok result lacking its column counts as failed", []json.RawMessage{result("a", true, false, `{}`), result("b", true, false, `{"b_x":"1"}`)}, true, false, ErrNeedsPipeline, 0, 0},
		{"results of another count of queries: skipped", []json.RawMessage{failed}, false, false, nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok, err := pick(open, wire.ResubmitEntry{Row: 3, Results: tt.results}, Options{OnlyFailed: tt.onlyFailed})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("pick error = %v, want %v", err, tt.wantErr)
			}
			if ok != tt.want {
				t.Fatalf("pick = %v, want %v", ok, tt.want)
			}
			jobs, kept := 0, 0
			for i := range r.jobs {
				if r.jobs[i] != nil {
					jobs++
				}
				if r.kept[i] != nil {
					kept++
				}
			}
			if jobs != tt.jobs || kept != tt.kept {
				t.Errorf("%d jobs, %d answers kept; want %d and %d", jobs, kept, tt.jobs, tt.kept)
			}
		})
	}
}
