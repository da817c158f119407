package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// Issue 5, acceptance 1: a run submitted by an upstream system with plain NATS publishes
// (what `nats pub` sends, following docs/WIRE.md) produces the same output as the file
// producer on the same rows.
func TestASubmittedRunMatchesTheFileProducer(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 2, ""))
	rows := csvRows(20, nil)
	rep, err := e.produce(p, rows, input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	want, err := os.ReadFile(filepath.Join(e.out, rep.Run, sink.ResultsJSONL))
	if err != nil {
		t.Fatal(err)
	}

	e.run("producer-service", func(ctx context.Context) error {
		return producer.Serve(ctx, e.js, producer.ServiceConfig{Pipelines: map[string]*config.Pipeline{"assess": p}, Topology: e.topo}, e.log)
	})
	nc, _ := e.nats.Connect(t)
	const run = "submitted-run"
	pub := func(subject, body string) {
		if err := nc.Publish(subject, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	pub(wire.SubmitOpenSubject("assess", run), `{"v":1}`)
	for i := range 20 {
		pub(wire.SubmitRowSubject("assess", run, i), fmt.Sprintf(`{"v":1,"data":{"id":"r%d","text":"text of row %d, with a comma","fault":"","fault_query":""}}`, i, i))
	}
	pub(wire.SubmitSealSubject("assess", run), `{"v":1,"rows":20}`)
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.waitSummary(run, 60*time.Second)
	got, err := os.ReadFile(filepath.Join(e.out, run, sink.ResultsJSONL))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("submitted run output differs from the file producer's:\n got %.300s\nwant %.300s", got, want)
	}
}
