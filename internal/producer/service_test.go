package producer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/wire"
)

const servicePipeline = `llm: {deployment: default, model: sim-model}
output_fields:
  echo: {type: string}
case_studies:
  - {name: cs1, input_fields: [text]}
criteria:
  - {name: k1}
  - {name: k2}
template: |
  Assess {{ row.input_1 }} for {{ row.criterion.name }}.
`

func TestServiceMetrics(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	p, err := config.ParsePipeline([]byte(servicePipeline), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics()
	t.Run("every label value starts at 0", func(t *testing.T) {
		// 9 rejection reasons, 2 park causes, 3 record kinds, runs, rows, jobs.
		if n := testutil.CollectAndCount(m.rejected) + testutil.CollectAndCount(m.parked) + testutil.CollectAndCount(m.accepted); n != 14 {
			t.Errorf("%d labelled series before any submission, want 14", n)
		}
		for _, r := range []string{RejectInvalidRunID, RejectUnknownPipeline, RejectMalformedSubject, RejectUndecodableOpen,
			RejectUndecodableSeal, RejectFinishedRun, RejectReusedRunID, RejectRowBeyondSeal, RejectRunRejected} {
			if !hasLabel(t, m, r) {
				t.Errorf("rejection reason %s: no series at 0", r)
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, js, ServiceConfig{Pipelines: map[string]*config.Pipeline{"assess": p}, Metrics: m}, zerolog.Nop())
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	// The submit stream exists once Serve has set up the topology.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := js.Stream(ctx, wire.StreamSubmit); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the service did not create its stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	const run = "metrics-run"
	pub := func(subject, body string) {
		t.Helper()
		if _, err := js.Publish(ctx, subject, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	pub(wire.SubmitOpenSubject("assess", run), `{"v":1}`)
	for i := range 3 {
		pub(wire.SubmitRowSubject("assess", run, i), fmt.Sprintf(`{"v":1,"data":{"text":"row %d"}}`, i))
	}
	pub(wire.SubmitSealSubject("assess", run), `{"v":1,"rows":3}`)
	pub(wire.SubmitOpenSubject("nosuch", "other-run"), `{"v":1}`)

	t.Run("published runs, rows and jobs and accepted and rejected records are counted", func(t *testing.T) {
		want := map[string]float64{"open": 1, "row": 3, "seal": 1}
		deadline := time.Now().Add(20 * time.Second)
		for {
			ok := testutil.ToFloat64(m.rejected.WithLabelValues(RejectUnknownPipeline)) == 1
			for k, v := range want {
				ok = ok && testutil.ToFloat64(m.accepted.WithLabelValues(k)) == v
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("accepted open %v row %v seal %v, rejected unknown_pipeline %v",
					testutil.ToFloat64(m.accepted.WithLabelValues("open")), testutil.ToFloat64(m.accepted.WithLabelValues("row")),
					testutil.ToFloat64(m.accepted.WithLabelValues("seal")), testutil.ToFloat64(m.rejected.WithLabelValues(RejectUnknownPipeline)))
			}
			time.Sleep(10 * time.Millisecond)
		}
		if runs, rows, jobs := testutil.ToFloat64(m.runs), testutil.ToFloat64(m.rows), testutil.ToFloat64(m.jobs); runs != 1 || rows != 3 || jobs != 6 {
			t.Errorf("runs %v rows %v jobs %v published, want 1, 3, 6 (2 queries a row)", runs, rows, jobs)
		}
	})
}

// hasLabel says whether the rejected counter has a series for reason.
func hasLabel(t *testing.T, m *Metrics, reason string) bool {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	m.rejected.Collect(ch)
	close(ch)
	for mt := range ch {
		var d dto.Metric
		if err := mt.Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, l := range d.GetLabel() {
			if l.GetName() == "reason" && l.GetValue() == reason {
				return true
			}
		}
	}
	return false
}
