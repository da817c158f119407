package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// A run cancelled (mqctl cancel) before its producer has published the whole input:
// the producer publishes no more rows, seals what it published and says so, and does
// not exit 0, which says every row was published (docs/OPERATIONS.md, "Producer").
// A script that runs the next step on exit 0 must not take a cancelled run for a
// complete one. It exits 1, "anything else".
func TestAProducerWhoseRunWasCancelledDoesNotExitZero(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	const id = "cancelled-early"
	if err := status.SetControl(ctx, js, wire.Names{}, id, wire.ControlCancelled); err != nil {
		t.Fatal(err)
	}
	var rows strings.Builder
	rows.WriteString("case_id,history,symptoms,diagnosis,treatment\n")
	for i := range 150 {
		rows.WriteString("c" + string(rune('a'+i%26)) + ",h,s,d,t\n")
	}
	in := filepath.Join(t.TempDir(), "rows.csv")
	if err := os.WriteFile(in, []byte(rows.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--nats", srv.URL(), "--config", "../../examples/assessment/pipeline.yaml", "--input", in, "--run", id}
	if got := run(args); got != 1 {
		t.Fatalf("exit %d for a run cancelled before its 150 rows were published, want 1", got)
	}
}
