package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/docs"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// section returns the code blocks of one "## " section of a document.
func section(t *testing.T, path, heading string) []docs.Block {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	i := strings.Index(md, "\n## "+heading)
	if i < 0 {
		t.Fatalf("%s has no section %q", path, heading)
	}
	md = md[i+1:]
	if j := strings.Index(md[3:], "\n## "); j >= 0 {
		md = md[:j+3]
	}
	return docs.Blocks(md)
}

// natsCLI is the nats CLI to run documented commands with: $NATS_CLI, bin/nats (`make
// nats-cli`), or nats on the PATH; "" when there is none.
func natsCLI() string {
	if p := os.Getenv("NATS_CLI"); p != "" {
		return p
	}
	if p, err := filepath.Abs("../../bin/nats"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	return ""
}

// shell runs a documented shell block in dir against the test's NATS and returns its
// standard output. With the nats CLI the block runs verbatim under bash, its `nats`
// pointed at the test's server (a shim adds --server, over the block's NATS_URL);
// without it, the block's commands are carried out in Go the way the CLI would (nats
// pub [-J] [-H K:V]..., the until-loop on nats kv get, cat).
func (e *env) shell(script, dir string, timeout time.Duration) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if cli := natsCLI(); cli != "" {
		e.t.Logf("running the block with the nats CLI %s", cli)
		shim := e.t.TempDir()
		body := fmt.Sprintf("#!/bin/sh\nexec %q --server %q \"$@\"\n", cli, e.nats.URL())
		if err := os.WriteFile(filepath.Join(shim, "nats"), []byte(body), 0o755); err != nil {
			e.t.Fatal(err)
		}
		home := e.t.TempDir()
		cmd := exec.CommandContext(ctx, "bash", "-e", "-c", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+shim+":"+os.Getenv("PATH"), "HOME="+home, "XDG_CONFIG_HOME="+home, "NATS_CONTEXT=")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			e.t.Fatalf("the documented block failed: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
		return stdout.String()
	}
	e.t.Log("no nats CLI (make nats-cli, or NATS_CLI): carrying the block's commands out in Go")
	nc, js := e.nats.Connect(e.t)
	var out bytes.Buffer
	line := -1
	for _, c := range docs.Commands(script, nil) {
		if c.Line == line {
			continue // the rest of an until-loop's line
		}
		switch {
		case len(c.Args) > 1 && c.Args[0] == "nats" && c.Args[1] == "pub":
			e.natsPub(ctx, nc, js, c.Args[2:])
		case len(c.Args) > 5 && c.Args[0] == "until" && strings.Join(c.Args[1:5], " ") == "nats kv get mq_runs":
			line = c.Line
			run := c.Args[5]
			waitFor(e.t, timeout, "run "+run+" to say finished, as the until-loop does", func() bool {
				st, ok := e.runStatus(run)
				return ok && st.Finished
			})
		case c.Args[0] == "cat":
			for _, f := range c.Args[1:] {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					e.t.Fatalf("cat: %v", err)
				}
				out.Write(b)
			}
		default:
			e.t.Fatalf("line %d: %q: this test runs only nats pub, the until-loop and cat without the nats CLI", c.Line, c.Args)
		}
	}
	return out.String()
}

// natsPub does what `nats pub [-J] [-H K:V]... SUBJECT [BODY]` does.
func (e *env) natsPub(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, args []string) {
	e.t.Helper()
	var jetStream bool
	var rest []string
	hdr := nats.Header{}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-J" || a == "--jetstream":
			jetStream = true
		case a == "-H" || a == "--header":
			i++
			k, v, _ := strings.Cut(args[i], ":")
			hdr.Add(k, v)
		case strings.HasPrefix(a, "-"):
			e.t.Fatalf("nats pub %s: this test does not know the flag", a)
		default:
			rest = append(rest, a)
		}
	}
	if len(rest) != 2 {
		e.t.Fatalf("nats pub %q: want SUBJECT BODY", args)
	}
	m := &nats.Msg{Subject: rest[0], Data: []byte(rest[1]), Header: hdr}
	if !jetStream {
		if err := nc.PublishMsg(m); err != nil {
			e.t.Fatal(err)
		}
		if err := nc.FlushTimeout(10 * time.Second); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		e.t.Fatalf("nats pub -J %s: %v", rest[0], err)
	}
}

// Issue 10, B2: the worked example of docs/WIRE.md, its shell block as written, runs
// against a real worker and collector (llmsim as deployment default), and the output
// rows are exactly the ones the document shows.
func TestTheWorkedExampleOfWireMDRunsAsDocumented(t *testing.T) {
	blocks := section(t, "../../docs/WIRE.md", "Worked example with the nats CLI")
	if len(blocks) < 2 || blocks[0].Lang != "sh" || blocks[1].Lang != "json" {
		t.Fatalf("the worked example has %d blocks, want its sh block then the json output", len(blocks))
	}
	script, want := blocks[0].Text, strings.Split(strings.TrimSpace(blocks[1].Text), "\n")
	run := ""
	for _, c := range docs.Commands(script, nil) {
		if c.Args[0] == "cat" {
			run = filepath.Base(filepath.Dir(c.Args[1]))
		}
	}
	if run == "" {
		t.Fatal("the worked example reads no output file")
	}
	// The example follows the rules it documents (Ordering and idempotency): a row's
	// jobs before the row, every body naming the run of its subject, and the run id
	// written once, in $RUN.
	if strings.Contains(script, `"run":"`+run+`"`) {
		t.Fatalf("the worked example hard-codes its run id %s in a body; use $RUN", run)
	}
	jobs := map[string]int{} // published jobs by "<run>.<row>"
	for _, c := range docs.Commands(script, nil) {
		if len(c.Args) < 2 || c.Args[0] != "nats" || c.Args[1] != "pub" {
			continue
		}
		subject, body := c.Args[len(c.Args)-2], c.Args[len(c.Args)-1]
		var rec struct {
			Run string `json:"run"`
			Row int    `json:"row"`
		}
		if err := json.Unmarshal([]byte(body), &rec); err != nil || rec.Run != run {
			t.Fatalf("line %d: body %.60s... names run %q (%v), want %s", c.Line, body, rec.Run, err, run)
		}
		if strings.HasPrefix(subject, "jobs.") {
			jobs[fmt.Sprintf("%s.%d", rec.Run, rec.Row)]++
			continue
		}
		if _, kind, row, err := wire.ParseInputSubject(subject); err == nil && kind == wire.InputRow && jobs[fmt.Sprintf("%s.%d", run, row)] == 0 {
			t.Fatalf("line %d: row %d is published before its jobs", c.Line, row)
		}
	}

	e := setup(t, llmsim.Config{})
	dir := t.TempDir()
	e.out = filepath.Join(dir, "out") // the collector's --out, as the example's cat reads it
	e.startWorker(workerOpts{})
	e.startCollector("")
	waitFor(t, 60*time.Second, "the worker and collector to create the streams and buckets", func() bool {
		_, err := e.js.Stream(context.Background(), wire.StreamResults)
		_, kerr := e.js.KeyValue(context.Background(), wire.BucketRuns)
		return err == nil && kerr == nil
	})
	stdout := e.shell(script, dir, 90*time.Second)

	got := e.lines(run, sink.ResultsJSONL)
	if len(got) != len(want) {
		t.Fatalf("results.jsonl has %d rows, the document shows %d", len(got), len(want))
	}
	raw, err := os.ReadFile(filepath.Join(e.out, run, sink.ResultsJSONL))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(raw)) != strings.Join(want, "\n") {
		t.Fatalf("results.jsonl differs from docs/WIRE.md:\n got:\n%s\nwant:\n%s", raw, strings.Join(want, "\n"))
	}
	if bad := e.lines(run, sink.ErrorsJSONL); len(bad) != 0 {
		t.Fatalf("errors.jsonl has %d rows, want none", len(bad))
	}
	for _, l := range want {
		if !strings.Contains(stdout, l) {
			t.Fatalf("the example's cat did not print %s; it printed:\n%s", l, stdout)
		}
	}
}

// Issue 10, B1 and B2: `producer --serve examples/assessment` serves the example's
// pipeline (the worker configs beside it are skipped), and the submission example of
// docs/WIRE.md, run as written, completes on it.
func TestTheSubmitExampleOfWireMDRunsOnTheServedExampleDirectory(t *testing.T) {
	d, err := config.LoadPipelineDir("../../examples/assessment")
	if err != nil {
		t.Fatal(err)
	}
	var script string
	for _, b := range section(t, "../../docs/WIRE.md", "Submitting a run to the producer service") {
		if b.Lang == "sh" {
			script = b.Text
		}
	}
	cmds := docs.Commands(script, nil)
	if len(cmds) == 0 {
		t.Fatal("no submission example in docs/WIRE.md")
	}
	name, run, _, _, err := wire.ParseSubmitSubject(cmds[0].Args[2])
	if err != nil {
		t.Fatal(err)
	}
	p := d.Pipelines[name]
	if p == nil {
		t.Fatalf("the example submits to pipeline %q; producer --serve examples/assessment serves %v", name, d.Pipelines)
	}
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	e.run("producer-service", func(ctx context.Context) error {
		return producer.Serve(ctx, e.js, producer.ServiceConfig{Pipelines: d.Pipelines, Topology: e.topo}, e.log)
	})
	waitFor(t, 60*time.Second, "the service's consumer", func() bool {
		_, err := e.js.Consumer(context.Background(), wire.StreamSubmit, producer.ServiceConsumer)
		return err == nil
	})
	e.shell(script, t.TempDir(), 60*time.Second)
	sum := e.waitSummary(run, 60*time.Second)
	if sum.Stats.RowsOK != 1 {
		t.Fatalf("run %s: %d rows ok, want the 1 submitted row", run, sum.Stats.RowsOK)
	}
	ok := e.lines(run, sink.ResultsJSONL)
	var row map[string]any
	if err := json.Unmarshal([]byte(cmds[1].Args[3]), &struct {
		Data *map[string]any `json:"data"`
	}{&row}); err != nil {
		t.Fatal(err)
	}
	for k, v := range row {
		if ok[0][k] != v {
			t.Fatalf("output column %s = %v, want the submitted %v", k, ok[0][k], v)
		}
	}
	if got := len(p.Queries()); ok[0][p.Queries()[got-1].Name+"_model"] == nil {
		t.Fatalf("output row %v lacks the pipeline's last query", ok[0])
	}
}
