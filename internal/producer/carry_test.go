package producer

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

func carryPlan(dataBytes int, prompts ...string) plan {
	row := wire.Row{V: 1, Run: "r", Row: 7, Data: json.RawMessage(fmt.Sprintf(`{"text":%q}`, strings.Repeat("x", dataBytes)))}
	pl := plan{row: row, carry: true}
	for i, p := range prompts {
		pl.jobs = append(pl.jobs, wire.Job{V: 1, Run: "r", Row: 7, Query: fmt.Sprintf("q%d", i), Deployment: "d",
			Request: wire.Request{Messages: []wire.Message{{Role: "user", Content: p}}}})
	}
	return pl
}

// A row of a run in input order rides in its first job (no input row message) when the
// job still fits in a message with it and the row is within maxCarried; otherwise, and
// in a run that does not carry, the row has its own message and no job carries it.
func TestFitCarriesARowInItsFirstJobWhenItFits(t *testing.T) {
	t.Parallel()
	const limit = 4096
	noCarry := carryPlan(100, "a", "b")
	noCarry.carry = false
	tests := []struct {
		name    string
		pl      plan
		limit   int64
		carried bool
	}{
		{name: "a small row rides in its first job", pl: carryPlan(100, "a", "b"), limit: limit, carried: true},
		{name: "a run that does not carry keeps the row message", pl: noCarry, limit: limit},
		{name: "a first job too large with the row keeps the row message", pl: carryPlan(2500, strings.Repeat("p", 2000), "b"), limit: limit},
		{name: "a row over maxCarried keeps the row message", pl: carryPlan(maxCarried+1, "a"), limit: 4 * maxCarried},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pl, err := fit(tt.pl, wire.Names{}, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if pl.row.Error != nil || len(pl.jobMsgs) != len(pl.jobs) {
				t.Fatalf("plan failed: %v (%d job messages for %d jobs)", pl.row.Error, len(pl.jobMsgs), len(pl.jobs))
			}
			if pl.carried() != tt.carried || (pl.rowMsg == nil) != tt.carried {
				t.Fatalf("carried = %v, row message = %v; want carried %v, a row message only when not", pl.carried(), pl.rowMsg != nil, tt.carried)
			}
			for i, m := range pl.jobMsgs {
				got := wire.RowData(m.Data)
				if want := tt.carried && i == 0; (got != nil) != want || (want && string(got) != string(pl.row.Data)) {
					t.Fatalf("job %d carries %.40q, want the row: %v", i, got, want)
				}
				var v struct{ V int }
				if err := json.Unmarshal(m.Data, &v); err != nil || (v.V == wire.VersionCarried) != (got != nil) {
					t.Fatalf("job %d: version %d (%v); want %d exactly when it carries the row", i, v.V, err, wire.VersionCarried)
				}
				if msgSize(m) > tt.limit {
					t.Fatalf("job %d is %d bytes, over %d", i, msgSize(m), tt.limit)
				}
			}
		})
	}
}

// A producer resuming a run publishes a carried row again only when it is not on the
// bus in any form: not queued, not answered, and not below the run's watermark (written,
// its results possibly purged), so that no query of a written row is called twice.
func TestACarefulPublishSkipsACarriedRowBelowTheWatermark(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(wire.RunStatus{Run: "r", State: wire.RunOpen, Next: 8})
	if _, err := kv.Put(ctx, "r", st); err != nil {
		t.Fatal(err)
	}
	pub := &publisher{js: js, window: 100, log: zerolog.Nop(), single: true, checked: true}
	for _, row := range []int{7, 8} {
		pl := carryPlan(10, "a", "b")
		pl.row.Row = row
		for i := range pl.jobs {
			pl.jobs[i].Row = row
		}
		if pl, err = fit(pl, wire.Names{}, 1<<20); err != nil || !pl.carried() {
			t.Fatalf("row %d: carried %v, %v", row, pl.carried(), err)
		}
		if _, err := publishPlan(ctx, pub, "r", pl, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.wait(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		row  int
		want uint64
	}{{7, 0}, {8, 2}} {
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(fmt.Sprintf("jobs.d.r.%d.>", c.row)))
		if err != nil {
			t.Fatal(err)
		}
		if got := uint64(len(info.State.Subjects)); got != c.want {
			t.Fatalf("row %d: %d jobs published, want %d (watermark 8)", c.row, got, c.want)
		}
	}
	if n := streamMsgs(t, js, wire.StreamInput); n != 0 {
		t.Fatalf("%d input row messages for carried rows", n)
	}
}
