package wire

import (
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// The runs-bucket keys are the contract of docs/WIRE.md ("Key-value buckets"): spelled
// out here, not rebuilt with the functions under test.
func TestRunsBucketKeys(t *testing.T) {
	for got, want := range map[string]string{
		ControlKey("run-1"):            "run-1.control",
		ControlKeyFilter:               "*.control",
		BreakerKey("default"):          "breaker.default",
		BreakerKeyFilter:               "breaker.*",
		ProducerCheckpointKey("run-1"): "run-1.producer",
	} {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
	if run, ok := ParseControlKey("run-1.control"); !ok || run != "run-1" {
		t.Errorf("ParseControlKey(run-1.control) = %q %v", run, ok)
	}
	if alias, ok := ParseBreakerKey("breaker.default"); !ok || alias != "default" {
		t.Errorf("ParseBreakerKey(breaker.default) = %q %v", alias, ok)
	}
	for _, other := range []string{"run-1", "run-1.producer", "breaker.x"} {
		if _, ok := ParseControlKey(other); ok {
			t.Errorf("ParseControlKey(%q) accepted", other)
		}
	}
	for _, other := range []string{"run-1", "run-1.control", "run-1.producer"} {
		if _, ok := ParseBreakerKey(other); ok {
			t.Errorf("ParseBreakerKey(%q) accepted", other)
		}
	}
}

// The JSON field names of the run records, as docs/WIRE.md lists them.
func TestRunRecordsJSON(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		v    any
		want []string
	}{
		{"RunStatus", RunStatus{Run: "r", State: RunCompleted, LeaseEpoch: 3}, []string{"run", "state", "rows_total",
			"rows_emitted", "rows_ok", "rows_failed", "watermark", "out_dir", "deployments", "started", "updated", "finished", "lease_epoch"}},
		{"ProducerCheckpoint", ProducerCheckpoint{Through: 4, Updated: now}, []string{"published_through", "rows_sha256", "config_hash", "updated"}},
		{"Control", Control{State: ControlPaused, Updated: now}, []string{"state", "updated"}},
		{"Breaker", Breaker{State: BreakerOpen, Status: 401, Code: "c", Type: "t", Message: "m", Since: now, Worker: "w"},
			[]string{"state", "status", "code", "type", "message", "since", "worker"}},
	} {
		b, err := json.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		var got []string
		for k := range m {
			got = append(got, k)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(c.want))
		if !slices.Equal(got, want) {
			t.Errorf("%s fields = %v, want %v", c.name, got, want)
		}
	}
}
