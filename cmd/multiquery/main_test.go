package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/local"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/sink"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// files is one test's pipeline: its configs and input, and the output directory.
type files struct {
	dir, pipeline, workers, input, out string
}

// writeFiles writes a pipeline of cases x criteria queries whose prompts carry a
// marker of their row and query (llmsim logs it), a worker config for the simulator at
// simURL, and an input of n rows.
func writeFiles(t *testing.T, simURL string, n int) files {
	t.Helper()
	dir := t.TempDir()
	f := files{dir: dir, pipeline: filepath.Join(dir, "pipeline.yaml"), workers: filepath.Join(dir, "worker.yaml"),
		input: filepath.Join(dir, "rows.csv"), out: filepath.Join(dir, "out")}
	pipeline := `llm: {deployment: default, model: gpt-4o-mini, max_completion_tokens: 50}
output_fields:
  echo: {type: string}
case_studies:
  - {name: cs1, input_fields: [text]}
  - {name: cs2, input_fields: [text]}
criteria:
  - {name: k1}
  - {name: k2}
template: |
  Assess {{ row.input_1 }} for {{ row.criterion.name }} in {{ row.case_study.name }}.
  [[mark:{{ row.source_row.id }}.{{ row.case_study.name }}_{{ row.criterion.name }}]]
cost: {prompt_per_1k: 0.001, completion_per_1k: 0.002}
`
	workers := fmt.Sprintf(`deployments:
  default:
    provider: openai
    endpoint: %s/v1
    timeout: 10s
    throttle: {start_rate: 500, min_rate: 100, max_rate: 10000}
`, simURL)
	var in strings.Builder
	in.WriteString("id,text\n")
	for i := range n {
		fmt.Fprintf(&in, "r%d,\"text of row %d, with a comma\"\n", i, i)
	}
	for path, data := range map[string]string{f.pipeline: pipeline, f.workers: workers, f.input: in.String()} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f files) args(extra ...string) []string {
	return append([]string{"run", "--config", f.pipeline, "--workers", f.workers, "--input", f.input, "--out", f.out}, extra...)
}

// buildBinary builds cmd/multiquery into a temp dir.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "multiquery")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// syncBuffer is a process's output, read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rowIDs reads the ids of the complete lines of a run's output file (a line cut by a
// kill has no newline and is left out).
func rowIDs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	consumed := 0
	for sc.Scan() {
		consumed += len(sc.Bytes()) + 1
		if consumed > len(data) {
			break // the last line has no newline: cut
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		id, _ := m["id"].(string)
		ids = append(ids, id)
	}
	return ids
}

// runDir is the only run directory under out.
func runDir(t *testing.T, out string) string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(out, "local-*"))
	if len(dirs) != 1 {
		t.Fatalf("run directories under %s: %v, want one", out, dirs)
	}
	return dirs[0]
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Issue 11, local mode: a run killed with SIGKILL half-way resumes when the same
// command runs again: every input row ends up in the output once, and no query that
// had finished before the kill is called a second time.
func TestAKilledRunResumesWithoutCallingAFinishedQueryAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it twice")
	}
	bin := buildBinary(t)
	sim, simURL, stop, err := llmsim.Start(llmsim.Config{Latency: 60 * time.Millisecond, Jitter: 40 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	const rows, queries, slots = 60, 4, 4
	f := writeFiles(t, simURL, rows)
	args := f.args("--concurrency", fmt.Sprint(slots), "--log-level", "info")

	var out1 syncBuffer
	first := exec.Command(bin, args...)
	first.Stdout, first.Stderr = &out1, &out1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = first.Process.Kill() })
	var written []string
	waitFor(t, 90*time.Second, "half the calls answered and rows written", func() bool {
		if sim.Stats().OK < rows*queries/2 {
			return false
		}
		dirs, _ := filepath.Glob(filepath.Join(f.out, "local-*"))
		return len(dirs) == 1 && len(rowIDs(t, filepath.Join(dirs[0], sink.ResultsJSONL))) > 0
	})
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	dir := runDir(t, f.out)
	written = rowIDs(t, filepath.Join(dir, sink.ResultsJSONL))
	answered := int(sim.Stats().OK)
	t.Logf("killed after %d answered calls, %d rows written", answered, len(written))
	if answered >= rows*queries {
		t.Fatalf("every call was answered before the kill: nothing left to resume")
	}

	second := exec.Command(bin, args...)
	var out2 syncBuffer
	second.Stdout, second.Stderr = &out2, &out2
	done := make(chan error, 1)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("rerun: %v\nfirst run:\n%s\nrerun:\n%s", err, out1.String(), out2.String())
		}
	case <-time.After(120 * time.Second):
		_ = second.Process.Kill()
		<-done
		t.Fatalf("rerun did not finish in 120s\nrerun:\n%s", out2.String())
	}

	t.Run("every input row is in the output once", func(t *testing.T) {
		seen := map[string]int{}
		for _, name := range []string{sink.ResultsJSONL, sink.ErrorsJSONL} {
			for _, id := range rowIDs(t, filepath.Join(dir, name)) {
				seen[id]++
			}
		}
		for i := range rows {
			if id := fmt.Sprintf("r%d", i); seen[id] != 1 {
				t.Errorf("row %s is in the output %d times, want once", id, seen[id])
			}
		}
		if len(seen) != rows {
			t.Errorf("%d distinct rows in the output, want %d", len(seen), rows)
		}
		if _, err := os.Stat(filepath.Join(dir, sink.Summary)); err != nil {
			t.Errorf("summary: %v", err)
		}
	})
	t.Run("no finished query is called again", func(t *testing.T) {
		ok := map[string]int{}
		for _, r := range sim.Requests(0) {
			if r.Status == 200 && r.Marker != "" {
				ok[r.Marker]++
			}
		}
		for _, id := range written {
			for _, q := range []string{"cs1_k1", "cs1_k2", "cs2_k1", "cs2_k2"} {
				if n := ok[id+"."+q]; n != 1 {
					t.Errorf("query %s of row %s (written before the kill) was answered %d times, want once", q, id, n)
				}
			}
		}
		twice := 0
		for m, n := range ok {
			if n > 1 {
				twice++
				t.Logf("answered %d times: %s (in flight at the kill)", n, m)
			}
		}
		// Only a call in flight at the kill (answered, its result not yet stored) may be
		// made again: at most one per slot.
		if twice > slots {
			t.Errorf("%d queries answered more than once, more than the %d slots in flight at the kill", twice, slots)
		}
		if len(ok) != rows*queries {
			t.Errorf("%d queries answered, want %d", len(ok), rows*queries)
		}
	})
	if t.Failed() {
		t.Logf("first run:\n%s\nrerun:\n%s", out1.String(), out2.String())
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	f := writeFiles(t, "http://127.0.0.1:1", 2)
	other := filepath.Join(f.dir, "other.yaml")
	if err := os.WriteFile(other, []byte("deployments:\n  other: {provider: openai, endpoint: http://127.0.0.1:1/v1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"no subcommand", nil},
		{"an unknown subcommand", []string{"start"}},
		{"no worker config", []string{"run", "--config", f.pipeline, "--input", f.input}},
		{"a deployment no worker serves", []string{"run", "--config", f.pipeline, "--workers", other, "--input", f.input, "--out", f.out}},
		{"a bad run id", f.args("--run", "a.b")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errs bytes.Buffer
			if got := run(tt.args, &out, &errs); got != 2 {
				t.Errorf("exit %d, want 2; stderr: %s", got, errs.String())
			}
			if _, err := os.Stat(f.out); !os.IsNotExist(err) {
				t.Errorf("the output directory was created")
			}
		})
	}
}

// Issue 11, dry run: `multiquery run --dry-run` prints the estimate and starts
// nothing: no store, no output, no call.
func TestDryRunStartsNothing(t *testing.T) {
	sim, simURL, stop, err := llmsim.Start(llmsim.Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f := writeFiles(t, simURL, 5)
	var out, errs bytes.Buffer
	if got := run(f.args("--dry-run"), &out, &errs); got != 0 {
		t.Fatalf("exit %d, want 0; stderr: %s", got, errs.String())
	}
	for _, want := range []string{"dry run of run local-", "rows:                  5", "queries:               20 (4 per row)", "tokenizer o200k_base", "at most $"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := os.Stat(f.out); !os.IsNotExist(err) {
		t.Errorf("the output directory (and the store under it) was created: %v", err)
	}
	if n := sim.Stats().Requests; n != 0 {
		t.Errorf("llmsim answered %d requests", n)
	}
}

// Issue 11, local mode: the same command, run again after the run finished, calls
// nothing and reports the run; a run with error rows exits 3.
func TestARunFinishesAndRunningItAgainCallsNothing(t *testing.T) {
	sim, simURL, stop, err := llmsim.Start(llmsim.Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f := writeFiles(t, simURL, 20)
	in, err := os.OpenFile(f.input, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.WriteString("bad\n"); err != nil { // a malformed record: an error row
		t.Fatal(err)
	}
	in.Close()
	var out, errs bytes.Buffer
	if got := run(f.args("--csv"), &out, &errs); got != exitRowErrors {
		t.Fatalf("exit %d, want %d (an error row); stdout: %s\nstderr: %s", got, exitRowErrors, out.String(), errs.String())
	}
	dir := runDir(t, f.out)
	if n := len(rowIDs(t, filepath.Join(dir, sink.ResultsJSONL))); n != 20 {
		t.Errorf("%d result rows, want 20", n)
	}
	if n := len(rowIDs(t, filepath.Join(dir, sink.ErrorsJSONL))); n != 1 {
		t.Errorf("%d error rows, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(dir, sink.ResultsCSV)); err != nil {
		t.Errorf("--csv: %v", err)
	}
	calls := sim.Stats().Requests
	if calls != 80 {
		t.Errorf("llmsim answered %d requests, want 80", calls)
	}
	out.Reset()
	if got := run(f.args("--csv"), &out, &errs); got != exitRowErrors {
		t.Fatalf("rerun: exit %d, want %d; stderr: %s", got, exitRowErrors, errs.String())
	}
	if !strings.Contains(out.String(), "had already finished") || !strings.Contains(out.String(), "21 rows: 20 ok, 1 failed") {
		t.Errorf("rerun output:\n%s", out.String())
	}
	if n := sim.Stats().Requests; n != calls {
		t.Errorf("the rerun made %d calls", n-calls)
	}
}

// A finished run's id given again (--run) with another input or another pipeline
// config is refused with exit 2, as the producer refuses a reused run id: the run's
// files answer another question. The same command again only prints where they are.
func TestAFinishedRunsIDWithAnotherInputOrConfigIsRefused(t *testing.T) {
	const exitOK, exitUsage = 0, 2
	sim, simURL, stop, err := llmsim.Start(llmsim.Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f := writeFiles(t, simURL, 3)
	var out, errs bytes.Buffer
	if got := run(f.args("--run", "mine"), &out, &errs); got != exitOK {
		t.Fatalf("exit %d, want %d; stderr: %s", got, exitOK, errs.String())
	}
	calls := sim.Stats().Requests

	other := filepath.Join(f.dir, "other.csv")
	if err := os.WriteFile(other, []byte("id,text\nx1,another row\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	otherInput := []string{"run", "--config", f.pipeline, "--workers", f.workers, "--input", other, "--out", f.out, "--run", "mine"}
	out.Reset()
	errs.Reset()
	if got := run(otherInput, &out, &errs); got != exitUsage || !strings.Contains(errs.String(), "finished with another input") {
		t.Errorf("another input: exit %d, want %d naming the input; stdout: %s\nstderr: %s", got, exitUsage, out.String(), errs.String())
	}

	changed, err := os.ReadFile(f.pipeline)
	if err != nil {
		t.Fatal(err)
	}
	otherPipeline := filepath.Join(f.dir, "other.yaml")
	if err := os.WriteFile(otherPipeline, bytes.Replace(changed, []byte("Assess"), []byte("Judge"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	otherConfig := []string{"run", "--config", otherPipeline, "--workers", f.workers, "--input", f.input, "--out", f.out, "--run", "mine"}
	out.Reset()
	errs.Reset()
	if got := run(otherConfig, &out, &errs); got != exitUsage || !strings.Contains(errs.String(), "finished with another pipeline config") {
		t.Errorf("another config: exit %d, want %d naming the config; stdout: %s\nstderr: %s", got, exitUsage, out.String(), errs.String())
	}

	out.Reset()
	if got := run(f.args("--run", "mine"), &out, &errs); got != exitOK || !strings.Contains(out.String(), "had already finished") {
		t.Errorf("the same command again: exit %d, want %d and where the files are; stdout: %s", got, exitOK, out.String())
	}
	if n := sim.Stats().Requests; n != calls {
		t.Errorf("%d calls after the run finished, want none", n-calls)
	}
}

func TestVersionPrintsTheBuildAndExits0(t *testing.T) {
	var out, errOut strings.Builder
	if code := run([]string{"--version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "multiquery ") {
		t.Fatalf("--version: exit %d, stdout %q, stderr %q; want 0 and the version line", code, out.String(), errOut.String())
	}
}

// Issue 11, local mode: with the cache on in the pipeline, another run of the same
// input (another run id, the same --out and so the same store) takes every answer from
// the cache: no call, and each query's <query>_cached column says so.
func TestAnotherRunOfTheSameInputIsAnsweredFromTheCache(t *testing.T) {
	sim, simURL, stop, err := llmsim.Start(llmsim.Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	f := writeFiles(t, simURL, 10)
	p, err := os.OpenFile(f.pipeline, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteString("cache: {enabled: true, ttl: 24h}\n"); err != nil {
		t.Fatal(err)
	}
	p.Close()
	var out, errs bytes.Buffer
	if got := run(f.args("--run", "first"), &out, &errs); got != 0 {
		t.Fatalf("first run: exit %d; stderr: %s", got, errs.String())
	}
	calls := sim.Stats().Requests
	if calls != 40 {
		t.Fatalf("first run: llmsim answered %d requests, want 40", calls)
	}
	if got := run(f.args("--run", "second"), &out, &errs); got != 0 {
		t.Fatalf("second run: exit %d; stderr: %s", got, errs.String())
	}
	if n := sim.Stats().Requests; n != calls {
		t.Fatalf("the second run made %d calls, want none", n-calls)
	}
	data, err := os.ReadFile(filepath.Join(f.out, "second", sink.ResultsJSONL))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), `_cached":true`); n != 40 || strings.Contains(string(data), `_cached":false`) {
		t.Fatalf("second run's rows have %d cached queries, want all 40:\n%s", n, data)
	}
}

// The progress line of a blocked run says why its calls wait and what to do; without
// a breaker open it says nothing of it.
func TestTheProgressLineSaysWhyARunIsBlocked(t *testing.T) {
	s := local.Snapshot{Rows: 3, Blocked: "deployment default: status 401 invalid_api_key: Incorrect API key provided."}
	if line := describe(s); !strings.Contains(line, "BLOCKED: deployment default: status 401 invalid_api_key") || !strings.Contains(line, "run the command again") {
		t.Errorf("describe = %q", line)
	}
	s.Blocked = ""
	if line := describe(s); strings.Contains(line, "BLOCKED") {
		t.Errorf("describe of a run not blocked = %q", line)
	}
}
