package worker

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/wire"
)

// An audit record the stream does not take is counted as dropped, never silently lost:
// here there is no MQ_AUDIT at all, so every publish fails (no responders).
func TestAnAuditRecordNotStoredIsCounted(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	var dropped atomic.Int64
	a, err := newAuditor(js, wire.Names{}, func() { dropped.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	job := &wire.Job{Run: "r", Row: 1, Query: "q", Deployment: "d"}
	for i := range 3 {
		a.record(job, job.Request, i+1, 0, "w", nil, nil, time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for dropped.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("dropped %d of 3 records not stored", dropped.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
