package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// Acceptance 6: whole-run problems stop before anything is published and name the field;
// per-row problems become error rows and every other row is processed.
func TestBadInputIsReportedAndNothingIsLost(t *testing.T) {
	t.Run("an invalid config names the field", func(t *testing.T) {
		_, err := config.ParsePipeline([]byte("llm: {deployment: default, model: m}\noutput_fields: {x: {type: enum}}\nqueries: [{name: q, template: 'json {{ row.a }}'}]\n"), t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "output_fields") {
			t.Fatalf("err = %v, want an error naming output_fields", err)
		}
	})
	t.Run("a header colliding with an output column publishes nothing", func(t *testing.T) {
		e := setup(t, llmsim.Config{})
		p := e.pipeline(matrixPipeline(1, 2, ""))
		_, err := e.produce(p, "id,text,cs1_k1_echo\nr0,t,x\n", input.CSV)
		var ue *producer.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "cs1_k1_echo") {
			t.Fatalf("err = %v, want a UsageError naming cs1_k1_echo", err)
		}
		for _, name := range []string{wire.StreamInput, wire.StreamJobs} {
			s, err := e.js.Stream(context.Background(), name)
			if err != nil {
				continue // never created: nothing published
			}
			info, err := s.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != 0 {
				t.Fatalf("%s holds %d messages, want 0", name, info.State.Msgs)
			}
		}
	})
	t.Run("a row missing a column and an unparseable record become error rows", func(t *testing.T) {
		e := setup(t, llmsim.Config{})
		e.startWorker(workerOpts{})
		e.startCollector("")
		p := e.pipeline(matrixPipeline(1, 2, ""))
		data := `{"id":"r0","text":"a","fault":"","fault_query":""}
{"id":"r1","fault":"","fault_query":""}
{"id":"r2","text":
{"id":"r3","text":"d","fault":"","fault_query":""}
`
		rep, err := e.produce(p, data, input.JSONL)
		if err != nil {
			t.Fatalf("produce: %v", err)
		}
		if rep.Rows != 4 || rep.RowErrors != 2 || rep.Jobs != 4 {
			t.Fatalf("report = %+v, want 4 rows, 2 row errors (exit 3), 4 jobs", rep)
		}
		e.waitSummary(rep.Run, 60*time.Second)
		ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
		if len(ok) != 2 || len(bad) != 2 {
			t.Fatalf("got %d ok and %d error rows, want 2 and 2", len(ok), len(bad))
		}
		render := errorOf(t, bad[0])
		if render["reason"] != wire.ReasonTemplateRendering || bad[0]["id"] != "r1" || render["field"] != "text" || render["query"] != "cs1_k1" {
			t.Fatalf("row r1 error = %v, want template_rendering_failed naming query cs1_k1 and field text", render)
		}
		mal := errorOf(t, bad[1])
		if mal["reason"] != wire.ReasonMalformedRecord || mal["line"] != float64(3) || !strings.Contains(fmt.Sprint(mal["raw"]), `"r2"`) {
			t.Fatalf("malformed error = %v, want malformed_record with line 3 and the raw text", mal)
		}
	})
	t.Run("a later record with an output key is an error row naming the key and keeping the record", func(t *testing.T) {
		e := setup(t, llmsim.Config{})
		e.startWorker(workerOpts{})
		e.startCollector("")
		p := e.pipeline(matrixPipeline(1, 2, ""))
		data := `{"id":"r0","text":"a","fault":"","fault_query":""}
{"id":"r1","text":"b","fault":"","fault_query":"","cs1_k1_echo":"mine","tags":{"z":1,"a":2}}
{"id":"r2","_error":"mine","text":"c","fault":"","fault_query":""}
`
		rep, err := e.produce(p, data, input.JSONL)
		if err != nil {
			t.Fatalf("produce: %v", err)
		}
		if rep.Rows != 3 || rep.RowErrors != 2 {
			t.Fatalf("report = %+v, want 3 rows, 2 row errors", rep)
		}
		e.waitSummary(rep.Run, 60*time.Second)
		bad := e.lines(rep.Run, sink.ErrorsJSONL)
		if len(bad) != 2 {
			t.Fatalf("got %d error rows, want 2", len(bad))
		}
		for i, want := range []struct {
			field, raw string
		}{
			{"cs1_k1_echo", `{"id":"r1","text":"b","fault":"","fault_query":"","cs1_k1_echo":"mine","tags":{"z":1,"a":2}}`},
			{"_error", `{"id":"r2","_error":"mine","text":"c","fault":"","fault_query":""}`},
		} {
			e := errorOf(t, bad[i])
			if e["reason"] != wire.ReasonMalformedRecord || e["field"] != want.field || e["raw"] != want.raw || e["line"] != float64(i+2) {
				t.Errorf("error row %d: _error = %v, want malformed_record at line %d naming %s with the record %s", i, e, i+2, want.field, want.raw)
			}
		}
	})
}

// Malformed CSV records (a wrong field count, a stray quote) become error rows naming
// their line, and the records around them are processed.
func TestMalformedCSVRecordsBecomeErrorRows(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	p := e.pipeline(matrixPipeline(1, 1, ""))
	data := "id,text,fault,fault_query\nr0,a,,\nr1,b,,,extra\nr2,\"c\",,\nr3,d\"x,,\nr4,e,,\n"
	rep, err := e.produce(p, data, input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	if rep.Rows != 5 || rep.RowErrors != 2 {
		t.Fatalf("report = %+v, want 5 rows with 2 row errors", rep)
	}
	e.waitSummary(rep.Run, 60*time.Second)
	ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
	if len(ok) != 3 || len(bad) != 2 {
		t.Fatalf("got %d ok and %d error rows, want 3 and 2", len(ok), len(bad))
	}
	for i, wantLine := range []float64{3, 5} {
		e := errorOf(t, bad[i])
		if e["reason"] != wire.ReasonMalformedRecord || e["line"] != wantLine || e["raw"] == "" {
			t.Errorf("error row %d = %v, want malformed_record on line %v with its raw text", i, e, wantLine)
		}
	}
}

// Acceptance 7: under random seeded fault mixes every input row comes out exactly once,
// either with all M x fields or as an error row with none of them.
func TestRowsAreAtomicUnderRandomFaults(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(uint64(seed), 7))
			faults := llmsim.Faults{}
			for _, k := range []string{"429", "503", "500", "502", "invalid_json", "missing_field", "wrong_type", "truncated", "empty_body"} {
				faults[k] = float64(rnd.IntN(5))
			}
			e := setup(t, llmsim.Config{Faults: faults, InjectedRetryAfter: 5 * time.Millisecond, Seed: seed})
			e.startWorker(workerOpts{concurrency: 32})
			e.startCollector("")
			const rows, cases, crit = 40, 2, 2
			p := e.pipeline(matrixPipeline(cases, crit, "max_attempts: 3\n"))
			rep, err := e.produce(p, csvRows(rows, nil), input.CSV)
			if err != nil {
				t.Fatalf("produce: %v", err)
			}
			e.waitSummary(rep.Run, 90*time.Second)
			ok, bad := e.lines(rep.Run, sink.ResultsJSONL), e.lines(rep.Run, sink.ErrorsJSONL)
			seen := map[string]int{}
			for _, r := range append(append([]map[string]any{}, ok...), bad...) {
				seen[r["id"].(string)]++
			}
			for i := range rows {
				if n := seen[fmt.Sprintf("r%d", i)]; n != 1 {
					t.Fatalf("row r%d appears %d times, want exactly 1", i, n)
				}
			}
			if len(seen) != rows {
				t.Fatalf("%d distinct rows out, want %d", len(seen), rows)
			}
			cols := func(r map[string]any) int {
				n := 0
				for _, q := range queryNames(cases, crit) {
					for _, c := range []string{"_echo", "_why", "_usage", "_model"} {
						if _, has := r[q+c]; has {
							n++
						}
					}
				}
				return n
			}
			for _, r := range ok {
				if n := cols(r); n != cases*crit*4 {
					t.Fatalf("success row %v has %d output columns, want %d", r["id"], n, cases*crit*4)
				}
				if _, has := r["_error"]; has {
					t.Fatalf("success row %v has _error", r["id"])
				}
			}
			for _, r := range bad {
				if n := cols(r); n != 0 {
					t.Fatalf("error row %v has %d output columns, want 0 (partial row)", r["id"], n)
				}
				e := errorOf(t, r)
				fq, _ := e["failed_queries"].([]any)
				if len(fq) == 0 || e["succeeded_count"].(float64)+float64(len(fq)) != e["total_count"].(float64) {
					t.Fatalf("error row %v: inconsistent _error %v", r["id"], e)
				}
			}
			t.Logf("seed %d: faults %v: %d ok, %d error rows", seed, faults, len(ok), len(bad))
		})
	}
}
