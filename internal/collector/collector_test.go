package collector

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// bundle is one test's world: a NATS server, the topology, a running collector.
type bundle struct {
	t    *testing.T
	srv  *natstest.Server
	js   jetstream.JetStream
	cfg  Config
	c    *Collector
	log  *syncBuffer
	stop func()
	// fault is the fault hook of the collectors start runs (nil: none); exited is
	// closed when the running one's Run has returned.
	fault  func(point string) error
	exited chan struct{}
}

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

func setup(t *testing.T, cfg Config) *bundle {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	if cfg.OutDir == "" {
		cfg.OutDir = t.TempDir()
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 20 * time.Millisecond
	}
	cfg.Name = "test"
	if err := queue.Ensure(context.Background(), js, cfg.Topology); err != nil {
		t.Fatal(err)
	}
	b := &bundle{t: t, srv: srv, js: js, cfg: cfg, log: &syncBuffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("collector log:\n%s", b.log.String())
		}
	})
	b.start()
	return b
}

// start runs a fresh collector; stop cancels it and waits until Run has returned.
func (b *bundle) start() {
	b.t.Helper()
	c, err := New(b.js, b.cfg, zerolog.New(b.log))
	if err != nil {
		b.t.Fatal(err)
	}
	c.fault = b.fault
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { done <- c.Run(ctx); close(exited) }()
	var once sync.Once
	b.c, b.exited = c, exited
	b.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errFault) {
				b.t.Errorf("collector: %v", err)
			}
		})
	}
	b.t.Cleanup(b.stop)
}

func (b *bundle) publish(subject string, v any) {
	b.t.Helper()
	data, ok := v.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(v); err != nil {
			b.t.Fatal(err)
		}
	}
	if _, err := b.js.Publish(context.Background(), subject, data); err != nil {
		b.t.Fatalf("publish %s: %v", subject, err)
	}
}

// open publishes a run's open record with one query q1 writing column q1_answer.
func (b *bundle) open(run, order string, inputColumns ...string) {
	b.publish(wire.InputOpenSubject(run), wire.Open{V: 1, Run: run, Order: order, InputColumns: inputColumns, Deployments: []string{"default"},
		Queries: []wire.QueryInfo{{Name: "q1", Columns: []string{"q1_answer"}}}, Created: time.Now()})
}

func (b *bundle) row(run string, i int, data string) {
	b.publish(wire.InputRowSubject(run, i), wire.Row{V: 1, Run: run, Row: i, Data: json.RawMessage(data)})
}

func (b *bundle) malformedRow(run string, i int) {
	b.publish(wire.InputRowSubject(run, i), wire.Row{V: 1, Run: run, Row: i, Error: &wire.Error{Reason: wire.ReasonMalformedRecord, Message: "bad quoting"}})
}

func (b *bundle) result(run string, i int, fields string) {
	var f map[string]json.RawMessage
	if err := json.Unmarshal([]byte(fields), &f); err != nil {
		b.t.Fatal(err)
	}
	b.publish(wire.ResultSubject(run, i, "q1"), wire.Result{V: 1, Run: run, Row: i, Query: "q1", OK: true, Fields: f, Attempt: 1,
		Usage: &wire.Usage{PromptTokens: 10, CompletionTokens: 2, TotalTokens: 12}, Model: "m"})
}

func (b *bundle) seal(run string, rows int) {
	b.publish(wire.InputSealSubject(run), wire.Seal{V: 1, Run: run, Rows: rows})
}

// waitFor polls cond until it holds or the timeout passes.
func (b *bundle) waitFor(what string, timeout time.Duration, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("waited %s for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (b *bundle) summary(run string, timeout time.Duration) Summary {
	b.t.Helper()
	var s Summary
	b.waitFor("the summary of run "+run, timeout, func() bool {
		data, err := os.ReadFile(filepath.Join(b.cfg.OutDir, run, sink.Summary))
		return err == nil && json.Unmarshal(data, &s) == nil
	})
	return s
}

func (b *bundle) status(run string) (wire.RunStatus, bool) {
	kv, err := b.js.KeyValue(context.Background(), wire.BucketRuns)
	if err != nil {
		b.t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), run)
	if err != nil {
		return wire.RunStatus{}, false
	}
	var st wire.RunStatus
	return st, json.Unmarshal(e.Value(), &st) == nil
}

// lines reads a run's output file as JSON objects.
func (b *bundle) lines(run, name string) []map[string]any {
	b.t.Helper()
	f, err := os.Open(filepath.Join(b.cfg.OutDir, run, name))
	if err != nil {
		b.t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			b.t.Fatalf("%s: line %q is not one JSON object: %v", name, sc.Text(), err)
		}
		if n := len(strings.Split(sc.Text(), `"q1_answer"`)) - 1; n > 1 {
			b.t.Fatalf("%s: line %q repeats key q1_answer", name, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func ids(lines []map[string]any) []string {
	var out []string
	for _, l := range lines {
		id, _ := l["id"].(string)
		out = append(out, id)
	}
	return out
}

func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return recs
}

// Issue 8, item 4: completion order finishes a run when every row of [0, sealed) is
// out, not when as many rows as sealed are; a row numbered past the seal is rejected.
func TestCompletionOrderWaitsForEverySealedRow(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	const run = "completion-gap"
	b.open(run, wire.OrderCompletion)
	b.row(run, 0, `{"id":"r0"}`)
	b.row(run, 1, `{"id":"r1"}`)
	b.row(run, 3, `{"id":"r3"}`)
	b.seal(run, 3)
	b.waitFor("the seal to be read", 10*time.Second, func() bool { st, ok := b.status(run); return ok && st.State != "open" })
	for _, i := range []int{1, 0, 3} {
		b.result(run, i, fmt.Sprintf(`{"q1_answer":"a%d"}`, i))
	}
	b.waitFor("rows 0 and 1 written", 10*time.Second, func() bool { st, _ := b.status(run); return st.Emitted >= 2 })
	if st, _ := b.status(run); st.Finished {
		t.Fatalf("run finished with row 2 missing: %+v", st)
	}
	b.row(run, 2, `{"id":"r2"}`)
	b.result(run, 2, `{"q1_answer":"a2"}`)
	sum := b.summary(run, 10*time.Second)
	got := ids(b.lines(run, sink.ResultsJSONL))
	if diff := cmp.Diff([]string{"r0", "r1", "r2"}, sortStrings(got)); diff != "" {
		t.Fatalf("rows written (-want +got):\n%s", diff)
	}
	if sum.Rows != 3 || sum.Stats.RowsOK != 3 {
		t.Fatalf("summary: %+v", sum)
	}
	if n := b.c.m.rejectedCount(rejectRowBeyondSeal); n < 1 {
		t.Fatalf("rows beyond the seal rejected: %v, want >= 1", n)
	}
}

func sortStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// Issue 8, item 4: rows read before the seal but numbered past it must not stay counted
// as waiting once their run is finished, or input reading stops for every run.
func TestFinishedRunsReleaseTheirWaitingRows(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxPendingRows: 3})
	for _, run := range []string{"extra-a", "extra-b"} {
		b.open(run, wire.OrderInput)
		b.row(run, 0, `{"id":"r0"}`)
		b.row(run, 1, `{"id":"beyond1"}`)
		b.row(run, 2, `{"id":"beyond2"}`)
		b.seal(run, 1)
		b.result(run, 0, `{"q1_answer":"x"}`)
		b.summary(run, 15*time.Second)
	}
	const run = "after"
	b.open(run, wire.OrderInput)
	for i := range 3 {
		b.row(run, i, fmt.Sprintf(`{"id":"r%d"}`, i))
		b.result(run, i, `{"q1_answer":"x"}`)
	}
	b.seal(run, 3)
	if s := b.summary(run, 15*time.Second); s.Stats.RowsOK != 3 {
		t.Fatalf("summary: %+v", s)
	}
}

// Issue 8, item 10: a run without input columns in its open record (a submitted run)
// takes its CSV header from its first well-formed row, not from a malformed first row.
func TestCSVHeaderComesFromFirstWellFormedRow(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{CSV: true})
	const run = "csv-header"
	b.open(run, wire.OrderInput)
	b.malformedRow(run, 0)
	b.waitFor("the malformed row written", 10*time.Second, func() bool { st, _ := b.status(run); return st.Emitted >= 1 })
	b.row(run, 1, `{"id":"r1","text":"hello"}`)
	b.result(run, 1, `{"q1_answer":"yes"}`)
	b.seal(run, 2)
	b.summary(run, 10*time.Second)
	dir := filepath.Join(b.cfg.OutDir, run)
	ok := readCSV(t, filepath.Join(dir, sink.ResultsCSV))
	if diff := cmp.Diff([][]string{{"id", "text", "q1_answer", "q1_usage", "q1_model"}}, ok[:1]); diff != "" {
		t.Fatalf("results.csv header (-want +got):\n%s", diff)
	}
	if len(ok) != 2 || ok[1][0] != "r1" || ok[1][2] != "yes" {
		t.Fatalf("results.csv rows: %q", ok)
	}
	bad := readCSV(t, filepath.Join(dir, sink.ErrorsCSV))
	if diff := cmp.Diff([]string{"id", "text", "_error"}, bad[0]); diff != "" {
		t.Fatalf("errors.csv header (-want +got):\n%s", diff)
	}
	if len(bad) != 2 || !strings.Contains(bad[1][2], wire.ReasonMalformedRecord) {
		t.Fatalf("errors.csv rows: %q", bad)
	}
}

// A collector restarted after it wrote the CSV header of a run without input columns
// keeps that header's columns: a later row whose keys come in another order, or with a
// key the header lacks, is written under the header's columns, not under its own keys.
func TestCSVHeaderOfARunWithoutInputColumnsHoldsAcrossARestart(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		row2 string
		// older: the checkpoint has no csv_input (written by an earlier build): the
		// columns are read back from errors.csv's header, formula escaping undone.
		older bool
		want  [][]string
	}{
		"same keys": {row2: `{"id":"r2","-text":"c"}`, want: [][]string{
			{"id", "'-text", "q1_answer"}, {"r0", "a", "yes"}, {"r1", "b", "no"}, {"r2", "c", "maybe"}}},
		"a key the header lacks": {row2: `{"extra":"e","id":"r2","-text":"c"}`, want: [][]string{
			{"id", "'-text", "extra", "q1_answer"}, {"r0", "a", "", "yes"}, {"r1", "b", "", "no"}, {"r2", "c", "e", "maybe"}}},
		"an older checkpoint": {row2: `{"id":"r2","-text":"c"}`, older: true, want: [][]string{
			{"id", "'-text", "q1_answer"}, {"r0", "a", "yes"}, {"r1", "b", "no"}, {"r2", "c", "maybe"}}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{CSV: true})
			const run = "csv-restart"
			b.open(run, wire.OrderInput)
			b.row(run, 0, `{"id":"r0","-text":"a"}`)
			b.result(run, 0, `{"q1_answer":"yes"}`)
			b.waitFor("row 0 written", 10*time.Second, func() bool { st, _ := b.status(run); return st.Emitted >= 1 })
			b.stop()
			if tc.older {
				dropCheckpointKey(t, filepath.Join(b.cfg.OutDir, run), "csv_input")
			}
			b.start()
			b.row(run, 1, `{"-text":"b","id":"r1"}`)
			b.result(run, 1, `{"q1_answer":"no"}`)
			b.row(run, 2, tc.row2)
			b.result(run, 2, `{"q1_answer":"maybe"}`)
			b.seal(run, 3)
			b.summary(run, 15*time.Second)
			ok := readCSV(t, filepath.Join(b.cfg.OutDir, run, sink.ResultsCSV))
			if len(ok) != len(tc.want) {
				t.Fatalf("results.csv: %q", ok)
			}
			for i, w := range tc.want {
				if diff := cmp.Diff(w, ok[i][:len(w)]); diff != "" {
					t.Errorf("results.csv line %d (-want +got):\n%s", i+1, diff)
				}
			}
		})
	}
}

// dropCheckpointKey removes key from the checkpoint in dir, as an earlier build wrote it.
func dropCheckpointKey(t *testing.T, dir, key string) {
	t.Helper()
	p := filepath.Join(dir, sink.Checkpoint)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m[key]; !ok {
		t.Fatalf("the checkpoint has no %s: %s", key, b)
	}
	delete(m, key)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A JSONL input's later rows may have keys its first well-formed row (the open record's
// input columns) had not: results.csv and errors.csv get a column for each, after the
// input columns, as results.jsonl keeps them; nothing is dropped.
func TestCSVHasAColumnForEveryInputKeyOfAnyRow(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{CSV: true})
	const run = "csv-extra"
	b.open(run, wire.OrderInput, "id", "text")
	b.row(run, 0, `{"id":"r0","text":"a"}`)
	b.result(run, 0, `{"q1_answer":"yes"}`)
	b.row(run, 1, `{"id":"r1","text":"b","extra":"new col"}`)
	b.result(run, 1, `{"q1_answer":"no"}`)
	b.row(run, 2, `{"id":"r2","note":"n","text":"c"}`)
	b.publish(wire.ResultSubject(run, 2, "q1"), wire.Result{V: 1, Run: run, Row: 2, Query: "q1", Attempt: 1,
		Error: &wire.Error{Reason: wire.ReasonRetryExhausted, Message: "gave up"}})
	b.seal(run, 3)
	b.summary(run, 10*time.Second)
	dir := filepath.Join(b.cfg.OutDir, run)
	ok := readCSV(t, filepath.Join(dir, sink.ResultsCSV))
	wantOK := [][]string{
		{"id", "text", "extra", "note", "q1_answer", "q1_usage", "q1_model"},
		{"r0", "a", "", "", "yes"},
		{"r1", "b", "new col", "", "no"},
	}
	if len(ok) != len(wantOK) {
		t.Fatalf("results.csv: %q", ok)
	}
	if diff := cmp.Diff(wantOK[0], ok[0]); diff != "" {
		t.Fatalf("results.csv header (-want +got):\n%s", diff)
	}
	for i, w := range wantOK {
		if diff := cmp.Diff(w, ok[i][:len(w)]); diff != "" {
			t.Errorf("results.csv line %d (-want +got):\n%s", i+1, diff)
		}
	}
	bad := readCSV(t, filepath.Join(dir, sink.ErrorsCSV))
	if len(bad) != 2 {
		t.Fatalf("errors.csv: %q", bad)
	}
	if diff := cmp.Diff([]string{"id", "text", "extra", "note", "_error"}, bad[0]); diff != "" {
		t.Fatalf("errors.csv header (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"r2", "c", "", "n"}, bad[1][:4]); diff != "" {
		t.Errorf("errors.csv row (-want +got):\n%s", diff)
	}
}

// Issue 11: a run opened with the cache on has a q_cached column after q_model in every
// success row (JSONL and CSV), true for a result answered from the cache; the summary
// counts those; an input key of that name is refused at the door.
func TestCachedColumnWithTheCacheOn(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{CSV: true})
	const run = "cached-col"
	b.publish(wire.InputOpenSubject(run), wire.Open{V: 1, Run: run, Order: wire.OrderInput, InputColumns: []string{"id"}, Deployments: []string{"default"},
		Queries: []wire.QueryInfo{{Name: "q1", Columns: []string{"q1_answer"}}}, Created: time.Now(), Cache: true})
	for i, cached := range []bool{false, true} {
		b.row(run, i, fmt.Sprintf(`{"id":"r%d"}`, i))
		b.publish(wire.ResultSubject(run, i, "q1"), wire.Result{V: 1, Run: run, Row: i, Query: "q1", OK: true,
			Fields: map[string]json.RawMessage{"q1_answer": json.RawMessage(`"yes"`)}, Usage: &wire.Usage{TotalTokens: 12}, Model: "m", Cached: cached})
	}
	b.row(run, 2, `{"id":"r2","q1_cached":"x"}`)
	b.seal(run, 3)
	sum := b.summary(run, 10*time.Second)
	if sum.Stats.Cached != 1 || sum.Stats.RowsOK != 2 || sum.Stats.RowsFailed != 1 {
		t.Fatalf("summary stats %+v: want 1 cached, 2 ok, 1 failed", sum.Stats)
	}
	lines := b.lines(run, sink.ResultsJSONL)
	if len(lines) != 2 || lines[0]["q1_cached"] != false || lines[1]["q1_cached"] != true {
		t.Fatalf("results.jsonl: %v; want q1_cached false then true", lines)
	}
	csvRows := readCSV(t, filepath.Join(b.cfg.OutDir, run, sink.ResultsCSV))
	if diff := cmp.Diff([][]string{{"id", "q1_answer", "q1_usage", "q1_model", "q1_cached"}}, csvRows[:1]); diff != "" {
		t.Fatalf("results.csv header (-want +got):\n%s", diff)
	}
	if len(csvRows) != 3 || csvRows[1][4] != "false" || csvRows[2][4] != "true" {
		t.Fatalf("results.csv rows: %q", csvRows)
	}
	bad := b.lines(run, sink.ErrorsJSONL)
	if len(bad) != 1 || !strings.Contains(fmt.Sprint(bad[0]["_error"]), "q1_cached") {
		t.Fatalf("errors.jsonl: %v; want the row with an input key q1_cached refused", bad)
	}
}

// Issue 8, item 11: bodies from upstream are checked at the door; what does not fit
// becomes an error row naming the query or field, never a half row.
func TestUntrustedBodiesBecomeErrorRows(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	cases := []struct {
		name, row, fields string
		wantReason        string // of _error, or of failed_queries[0].error
		wantField         string
	}{
		{name: "a success result missing an output column", row: `{"id":"r0"}`, fields: `{"other":"x"}`, wantReason: wire.ReasonInvalidResult, wantField: "q1_answer"},
		{name: "input data that is not an object", row: `["r0"]`, fields: `{"q1_answer":"x"}`, wantReason: wire.ReasonMalformedRecord},
		{name: "input data that is a string", row: `"r0"`, fields: `{"q1_answer":"x"}`, wantReason: wire.ReasonMalformedRecord},
		{name: "an input key equal to an output column", row: `{"id":"r0","q1_answer":"mine"}`, fields: `{"q1_answer":"x"}`, wantReason: wire.ReasonMalformedRecord, wantField: "q1_answer"},
		{name: "an input key equal to a usage column", row: `{"id":"r0","q1_usage":1}`, fields: `{"q1_answer":"x"}`, wantReason: wire.ReasonMalformedRecord, wantField: "q1_usage"},
		{name: "an input key repeated", row: `{"id":"r0","id":"r1"}`, fields: `{"q1_answer":"x"}`, wantReason: wire.ReasonMalformedRecord, wantField: "id"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := fmt.Sprintf("untrusted-%d", i)
			b.open(run, wire.OrderInput)
			b.row(run, 0, tc.row)
			b.result(run, 0, tc.fields)
			b.seal(run, 1)
			b.summary(run, 10*time.Second)
			if ok := b.lines(run, sink.ResultsJSONL); len(ok) != 0 {
				t.Fatalf("success rows: %v", ok)
			}
			bad := b.lines(run, sink.ErrorsJSONL)
			if len(bad) != 1 {
				t.Fatalf("error rows: %v", bad)
			}
			e, _ := bad[0]["_error"].(map[string]any)
			if fq, ok := e["failed_queries"].([]any); ok && len(fq) == 1 {
				q, _ := fq[0].(map[string]any)
				if q["query"] != "q1" {
					t.Fatalf("failed query not named: %v", e)
				}
				e, _ = q["error"].(map[string]any)
			}
			if e["reason"] != tc.wantReason || (tc.wantField != "" && e["field"] != tc.wantField) {
				t.Fatalf("_error %v: want reason %s, field %q", bad[0]["_error"], tc.wantReason, tc.wantField)
			}
			if tc.wantReason == wire.ReasonMalformedRecord && e["raw"] != tc.row {
				t.Fatalf("_error %v: want the refused data kept as raw %s", bad[0]["_error"], tc.row)
			}
			if _, ok := bad[0]["q1_answer"]; ok && tc.wantField != "q1_answer" {
				t.Fatalf("error row carries an output: %v", bad[0])
			}
		})
	}
}

// Issue 8, item 11: CSV cells that a spreadsheet would run as a formula are escaped.
func TestCSVEscapesFormulaCells(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{CSV: true})
	const run = "csv-formula"
	b.open(run, wire.OrderInput, "id", "text")
	b.row(run, 0, `{"id":"=1+1","text":"@SUM(A1)"}`)
	b.result(run, 0, `{"q1_answer":"-2+3"}`)
	b.row(run, 1, `{"id":"+cmd","text":"\tx"}`)
	b.result(run, 1, `{"q1_answer":"plain"}`)
	b.seal(run, 2)
	b.summary(run, 10*time.Second)
	got := readCSV(t, filepath.Join(b.cfg.OutDir, run, sink.ResultsCSV))
	want := [][]string{{"'=1+1", "'@SUM(A1)", "'-2+3"}, {"'+cmd", "'\tx", "plain"}}
	for i, w := range want {
		if diff := cmp.Diff(w, got[i+1][:3]); diff != "" {
			t.Fatalf("row %d (-want +got):\n%s", i, diff)
		}
	}
}

// Issue 8, item 13: events of runs with an invalid id are dropped, and events of runs
// whose open record is unknown are kept without their bodies, within the memory limit;
// they are read back when the open record comes.
func TestOrphanEventsAreBoundedAndReadBack(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MemoryLimit: 256 << 10})
	big := strings.Repeat("x", 8<<10)
	invalid := strings.Repeat("a", 65)
	for i := range 40 {
		b.publish(wire.ResultSubject(invalid, i, "q1"), wire.Result{V: 1, Run: invalid, Row: i, Query: "q1", OK: true,
			Fields: map[string]json.RawMessage{"q1_answer": json.RawMessage(`"` + big + `"`)}})
	}
	const late = "open-comes-late"
	const rows = 60
	for i := range rows {
		b.result(late, i, `{"q1_answer":"`+big+`"}`)
		b.row(late, i, fmt.Sprintf(`{"id":"r%d"}`, i))
	}
	// A run after them on both streams: once it is done, every orphan was read.
	const marker = "marker"
	b.open(marker, wire.OrderInput)
	b.row(marker, 0, `{"id":"m"}`)
	b.result(marker, 0, `{"q1_answer":"x"}`)
	b.seal(marker, 1)
	b.summary(marker, 15*time.Second)
	b.stop()
	var bodies, events int
	for id, evs := range b.c.orphans {
		if id == invalid {
			t.Errorf("events of invalid run id %q kept", id)
		}
		for _, ev := range evs {
			events++
			bodies += len(ev.data)
		}
	}
	if bodies > 0 || events > 2*rows {
		t.Fatalf("orphans: %d events holding %d bytes of bodies", events, bodies)
	}
	// A second collector replays the streams: the late run's events come before its open
	// record again; once a later run is done, they were all read (as body-less events).
	b.start()
	const marker2 = "marker-2"
	b.open(marker2, wire.OrderInput)
	b.row(marker2, 0, `{"id":"m"}`)
	b.result(marker2, 0, `{"q1_answer":"x"}`)
	b.seal(marker2, 1)
	b.summary(marker2, 15*time.Second)
	b.open(late, wire.OrderInput)
	b.seal(late, rows)
	if s := b.summary(late, 15*time.Second); s.Stats.RowsOK != rows {
		t.Fatalf("late-opened run: %+v", s)
	}
	for _, l := range b.lines(late, sink.ResultsJSONL) {
		if l["q1_answer"] != big {
			t.Fatalf("row read back without its result: %v", l["id"])
		}
	}
}

// leftovers lists what is left of a run on the bus: stream subjects (audit and dead
// letters aside: documented retention), consumers and KV keys but its final status.
func leftovers(t *testing.T, js jetstream.JetStream, run string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for name := range js.StreamNames(ctx).Name() {
		if name == wire.StreamAudit || name == wire.StreamDead || strings.HasPrefix(name, "KV_") {
			continue
		}
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			t.Fatal(err)
		}
		for subj := range info.State.Subjects {
			if strings.Contains("."+subj+".", "."+run+".") {
				out = append(out, name+" "+subj)
			}
		}
		for ci := range s.ListConsumers(ctx).Info() {
			if strings.Contains(ci.Name, run) || strings.Contains(ci.Config.FilterSubject, run) {
				out = append(out, name+" consumer "+ci.Name)
			}
		}
	}
	for _, bucket := range []string{wire.BucketRuns, wire.BucketRetry} {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		s, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter("$KV."+bucket+"."+run+".>"))
		if err != nil {
			t.Fatal(err)
		}
		for subj := range info.State.Subjects {
			if strings.HasPrefix(subj, "$KV."+bucket+"."+run+".") {
				out = append(out, "KV_"+bucket+" "+subj)
			}
		}
		if bucket == wire.BucketRuns {
			if _, err := kv.Get(ctx, run); err != nil {
				out = append(out, "the final status record is missing: "+err.Error())
			}
		}
	}
	return out
}

// Issue 8, item 14: a finished run leaves only its final status record; a run whose
// checkpoint says finished but whose data is still on the bus (a crash between the two)
// is purged again when the collector starts; the collector forgets the run.
func TestFinishedRunLeavesOnlyItsStatusAlsoAfterACrash(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ctx := context.Background()
	const run = "leftovers"
	runsKV, _ := b.js.KeyValue(ctx, wire.BucketRuns)
	retryKV, _ := b.js.KeyValue(ctx, wire.BucketRetry)
	put := func() {
		for _, k := range []string{run + ".control", run + ".producer"} {
			if _, err := runsKV.Put(ctx, k, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := retryKV.Put(ctx, wire.JobKey(run, 0, "q1"), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	publishRun := func() {
		put()
		b.open(run, wire.OrderInput)
		b.row(run, 0, `{"id":"r0"}`)
		b.result(run, 0, `{"q1_answer":"x"}`)
		b.seal(run, 1)
	}
	publishRun()
	b.summary(run, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for l := leftovers(t, b.js, run); len(l) > 0; l = leftovers(t, b.js, run) {
		if time.Now().After(deadline) {
			t.Fatalf("left of a finished run: %q", l)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.stop()
	for id := range b.c.runs {
		if id == run {
			t.Errorf("finished run %s still in the collector's memory", id)
		}
	}
	// As if the collector had died between its finished checkpoint and the purge.
	publishRun()
	b.start()
	deadline = time.Now().Add(15 * time.Second)
	for l := leftovers(t, b.js, run); len(l) > 0; l = leftovers(t, b.js, run) {
		if time.Now().After(deadline) {
			t.Fatalf("left of a finished run after a restart: %q", l)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(b.lines(run, sink.ResultsJSONL)); n != 1 {
		t.Fatalf("results.jsonl has %d rows after the restart, want 1", n)
	}
}

// TestResultsOfEmittedRowsArePurgedBeforeTheRunEnds pins the purge per checkpoint: the
// results of rows durably out go, the results of rows waiting (2 and 3 behind row 1)
// stay until their rows are out.
func TestResultsOfEmittedRowsArePurgedBeforeTheRunEnds(t *testing.T) {
	b := setup(t, Config{})
	ctx := context.Background()
	results, err := b.js.Stream(ctx, wire.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	held := func() []string {
		var subs []string
		info, err := results.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			t.Fatal(err)
		}
		for s := range info.State.Subjects {
			subs = append(subs, s)
		}
		return subs
	}
	run := "purge-run"
	b.open(run, "", "id")
	for i := range 4 {
		b.row(run, i, fmt.Sprintf(`{"id":"r%d"}`, i))
	}
	b.result(run, 0, `{"q1_answer":"a"}`)
	b.result(run, 2, `{"q1_answer":"c"}`) // waits for row 1
	b.result(run, 3, `{"q1_answer":"d"}`) // waits for row 1
	// Row 0 is out: its result goes with the next checkpoint, the waiting ones stay.
	b.waitFor("row 0's result purged, rows 2 and 3 kept", 5*time.Second, func() bool { return len(held()) == 2 })
	for _, s := range held() {
		if s == wire.ResultSubject(run, 0, "q1") {
			t.Fatalf("results held %v", held())
		}
	}
	b.result(run, 1, `{"q1_answer":"b"}`)
	b.waitFor("every emitted row's result purged", 5*time.Second, func() bool { return len(held()) == 0 })
	b.seal(run, 4)
	if s := b.summary(run, 5*time.Second); s.Stats.RowsOK != 4 {
		t.Fatalf("rows ok %d", s.Stats.RowsOK)
	}
}

// With PublishRows, every emitted row's line also goes to the rows stream once, on
// rows.<run>.<row>, with its outcome in a header: downstream consumers get the same
// line the files hold. Without it, nothing is published there.
func TestPublishRowsPutsEachEmittedLineOnTheRowsStream(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{true, false} {
		b := setup(t, Config{PublishRows: on})
		run := fmt.Sprintf("published-%v", on)
		b.open(run, wire.OrderInput)
		b.row(run, 0, `{"id":"r0"}`)
		b.malformedRow(run, 1)
		b.row(run, 2, `{"id":"r2"}`)
		b.seal(run, 3)
		b.result(run, 0, `{"q1_answer":"a0"}`)
		b.result(run, 2, `{"q1_answer":"a2"}`)
		b.summary(run, 10*time.Second)
		ctx := context.Background()
		s, err := b.js.Stream(ctx, wire.StreamRows)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !on {
			if info.State.Msgs != 0 {
				t.Fatalf("PublishRows off: %d messages on %s, want none", info.State.Msgs, wire.StreamRows)
			}
			continue
		}
		if info.State.Msgs != 3 {
			t.Fatalf("%d messages on %s, want one per row (3)", info.State.Msgs, wire.StreamRows)
		}
		files := map[string]string{}
		for _, name := range []string{sink.ResultsJSONL, sink.ErrorsJSONL} {
			data, err := os.ReadFile(filepath.Join(b.cfg.OutDir, run, name))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				files[l] = name
			}
		}
		for i, want := range []string{wire.RowOK, wire.RowError, wire.RowOK} {
			m, err := s.GetLastMsgForSubject(ctx, wire.RowSubject(run, i))
			if err != nil {
				t.Fatalf("row %d: %v", i, err)
			}
			if got := m.Header.Get(wire.HeaderRowOutcome); got != want {
				t.Errorf("row %d outcome header %q, want %q", i, got, want)
			}
			if _, ok := files[string(m.Data)]; !ok {
				t.Errorf("row %d published %s: not a line of the run's files", i, m.Data)
			}
		}
	}
}
