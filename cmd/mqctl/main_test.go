package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

func TestLookup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args     []string
		words    []string // nil: no subcommand
		wantRest []string
	}{
		{args: []string{"status", "r1"}, words: []string{"status"}, wantRest: []string{"r1"}},
		{args: []string{"status", "r1", "--watch", "--json"}, words: []string{"status"}, wantRest: []string{"r1", "--watch", "--json"}},
		{args: []string{"status"}},
		{args: []string{"pause", "r1"}, words: []string{"pause"}, wantRest: []string{"r1"}},
		{args: []string{"resume", "r1"}, words: []string{"resume"}, wantRest: []string{"r1"}},
		{args: []string{"cancel", "r1"}, words: []string{"cancel"}, wantRest: []string{"r1"}},
		{args: []string{"cancel", "r1", "r2"}},
		{args: []string{"cancel"}},
		{args: []string{"get", "r1"}, words: []string{"get"}, wantRest: []string{"r1"}},
		{args: []string{"get", "r1", "--out", "d"}, words: []string{"get"}, wantRest: []string{"r1", "--out", "d"}},
		{args: []string{"get", "--list"}, words: []string{"get"}, wantRest: []string{"--list"}},
		{args: []string{"get"}},
		{args: []string{"dead", "list"}, words: []string{"dead", "list"}, wantRest: []string{}},
		{args: []string{"dead", "list", "--run", "r1"}, words: []string{"dead", "list"}, wantRest: []string{"--run", "r1"}},
		{args: []string{"dead", "replay", "3", "4"}, words: []string{"dead", "replay"}, wantRest: []string{"3", "4"}},
		{args: []string{"dead", "replay"}},
		{args: []string{"dead"}},
		{args: []string{"purge", "r1"}},
		{args: []string{"provision"}, words: []string{"provision"}, wantRest: []string{}},
		{args: []string{"provision", "--limits", "l.yaml", "--update"}, words: []string{"provision"}, wantRest: []string{"--limits", "l.yaml", "--update"}},
		{args: nil},
	}
	for _, tt := range tests {
		c, rest, ok := lookup(tt.args)
		if ok != (tt.words != nil) || !slices.Equal(c.words, tt.words) || !slices.Equal(rest, tt.wantRest) {
			t.Errorf("lookup(%q) = %q, %q, %v; want %q, %q", tt.args, c.words, rest, ok, tt.words, tt.wantRest)
		}
	}
}

func TestRunUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {"nope"}, {"--bogus"}, {"cancel"},
		{"--nats-creds", "/nonexistent/a.creds", "status", "r1"}, {"--nats-user", "u", "--nats-token", "t", "provision"},
		{"--prefix", "a.b", "status", "r1"}, {"resubmit"}} {
		if got := run(args); got != cli.ExitUsage {
			t.Errorf("run(%q) = %d, want %d", args, got, cli.ExitUsage)
		}
	}
	if got := run([]string{"-h"}); got != cli.ExitOK {
		t.Errorf("run(-h) = %d, want %d", got, cli.ExitOK)
	}
	if got := run([]string{"--version"}); got != cli.ExitOK {
		t.Errorf("run(--version) = %d, want %d", got, cli.ExitOK)
	}
}

// get RUN writes the run's stored files into --out (default ./RUN) byte for byte and
// exits 0; an unknown run exits 1; get --list exits 0; a run id with --list is a usage
// error. resubmit of that run (finished, no error rows) asks nothing and exits 0.
func TestGetDownloadsAStoredRun(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, wire.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	files := map[string]string{sink.ResultsJSONL: "{\"id\":\"a\"}\n", sink.ErrorsJSONL: "", sink.Summary: "{}\n"}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A run without error rows: neither resubmit.jsonl nor (an earlier build) open.json.
	if _, err := archive.Store(ctx, obs, "run-7", src, []string{sink.ResultsJSONL, sink.ErrorsJSONL, sink.Summary}, nil); err != nil {
		t.Fatal(err)
	}
	nats := []string{"--nats", srv.URL()}
	runs, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(wire.RunStatus{Run: "run-7", State: wire.RunCompleted, Total: 1, Emitted: 1, OK: 1, Finished: true, Stored: true})
	if _, err := runs.Put(ctx, "run-7", st); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "into")
	if code := run(append(nats, "get", "run-7", "--out", dir)); code != cli.ExitOK {
		t.Fatalf("get run-7 exited %d", code)
	}
	for name, body := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, []byte(body)) {
			t.Errorf("%s: %q, %v; want %q", name, got, err, body)
		}
	}
	t.Chdir(t.TempDir())
	if code := run(append(nats, "get", "run-7")); code != cli.ExitOK {
		t.Fatalf("get run-7 (default directory) exited %d", code)
	}
	if _, err := os.Stat(filepath.Join("run-7", sink.Summary)); err != nil {
		t.Fatalf("get without --out did not write ./run-7: %v", err)
	}
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"get", "no-such-run", "--out", t.TempDir()}, cli.ExitFailed},
		{[]string{"get", "--list"}, cli.ExitOK},
		{[]string{"get", "run-7", "--list"}, cli.ExitUsage},
		{[]string{"get", "--out", "d"}, cli.ExitUsage},
		// Another deployment's names: its results bucket does not hold run-7.
		{[]string{"--prefix", "other", "get", "run-7", "--out", t.TempDir()}, cli.ExitFailed},
		// resubmit: a run that has not finished fails; a finished one without error rows
		// has nothing to ask and exits 0; the run id comes first.
		{[]string{"resubmit", "no-such-run"}, cli.ExitFailed},
		{[]string{"resubmit", "run-7", "--json"}, cli.ExitOK},
		{[]string{"resubmit", "--only-failed-queries", "run-7"}, cli.ExitUsage},
		{[]string{"resubmit", "run-7", "extra"}, cli.ExitUsage},
		{[]string{"resubmit", "run-7", "--config", "/nonexistent/pipeline.yaml"}, cli.ExitUsage},
	} {
		if code := run(append(nats, tt.args...)); code != tt.want {
			t.Errorf("mqctl %q exited %d, want %d", tt.args, code, tt.want)
		}
	}
}
