package bench

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/natstest"
)

// The raw loop runs its jobs once per pass in one process, each pass's jobs new ones,
// and reports each pass before the next starts: the passes after the first measure a
// loop that has run before.
func TestTheRawLoopRunsEachPassOnItsOwnJobs(t *testing.T) {
	srv := natstest.Start(t)
	sim, simURL, stop, err := llmsim.Start(llmsim.Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var reported []RawLoopResult
	res, err := RawLoop(ctx, RawLoopConfig{NATSURL: srv.URL(), SimURL: simURL, Jobs: 300, Slots: 16, Passes: 2,
		After: func(r RawLoopResult) error { reported = append(reported, r); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || len(reported) != 2 {
		t.Fatalf("passes returned %d, reported %d: want 2 each", len(res), len(reported))
	}
	for i, r := range res {
		if r.Pass != i+1 || r.Jobs != 300 || r.Wall <= 0 || r.CPU <= 0 || r != reported[i] {
			t.Errorf("pass %d: %+v (reported %+v)", i+1, r, reported[i])
		}
	}
	// Every job of both passes made its call: a pass that counted the other's results
	// would end before its own jobs were called.
	if got := sim.Stats().OK; got != 600 {
		t.Errorf("llmsim answered %d calls, want 300 a pass", got)
	}
	_, js := srv.Connect(t)
	if _, err := js.Stream(ctx, "RAWJOBS"); err == nil {
		t.Error("the loop left its jobs stream")
	}
}
