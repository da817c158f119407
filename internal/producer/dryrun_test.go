package producer

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/pkoukk/tiktoken-go"
	tiktokenloader "github.com/pkoukk/tiktoken-go-loader"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/estimate"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

const dryPipeline = `llm: {deployment: default, model: gpt-4o-mini, max_completion_tokens: 120}
system_prompt: "You are a careful reviewer of {{ row.case_study.name }}."
output_fields:
  score: {type: integer}
  why: {type: string}
case_studies:
  - {name: history, input_fields: [history]}
  - {name: plan, input_fields: [plan]}
criteria:
  - {name: accuracy, description: "is it correct?"}
  - {name: clarity, description: "could a colleague act on it?"}
  - {name: safety}
template: |
  Case {{ row.source_row.id }}: {{ row.input_1 }}
  Criterion: {{ row.criterion.name }} {{ row.criterion.description | default("") }}
`

// dryInput has 3 good rows and one malformed record (a missing field).
const dryInput = `id,history,plan
c1,"shortness of breath, ""worse at night""",diuretics
c2,chest pain on exertion — 3 weeks,"aspirin, statin; follow-up in 2 weeks"
c3
c4,Ünïcödé text with emoji 🙂 and numbers 12345,"rest"
`

func dryConfig(t *testing.T) Config {
	t.Helper()
	p, err := config.ParsePipeline([]byte(dryPipeline), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return Config{Pipeline: p, Input: strings.NewReader(dryInput), Format: input.CSV}
}

// streamCounts is the message count of every stream.
func streamCounts(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	l := js.ListStreams(context.Background())
	for info := range l.Info() {
		out[info.Config.Name] = info.State.Msgs
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Issue 11, dry run: the dry run plans every row as a run would and publishes
// nothing.
func TestDryRun(t *testing.T) {
	t.Run("plans every row and renders every prompt", func(t *testing.T) {
		var rows []wire.Row
		var jobs []wire.Job
		rep, err := DryRun(dryConfig(t), func(r wire.Row, js []wire.Job) {
			rows = append(rows, r)
			jobs = append(jobs, js...)
		})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Rows != 4 || rep.Jobs != 18 || rep.RowErrors != 1 {
			t.Fatalf("report %+v, want 4 rows, 18 jobs, 1 row error", rep)
		}
		if len(rows) != 4 || rows[2].Error == nil || rows[2].Error.Reason != wire.ReasonMalformedRecord {
			t.Fatalf("row 2 = %+v, want a malformed record", rows[2])
		}
		if len(jobs) != 18 || jobs[0].Request.MaxCompletionTokens != 120 || len(jobs[0].Request.Messages) != 2 {
			t.Fatalf("first job %+v: want 2 messages and max_completion_tokens 120", jobs[0])
		}
		if got := jobs[0].Request.Messages[1].Content; !strings.Contains(got, `shortness of breath, "worse at night"`) {
			t.Errorf("first prompt %q does not carry its row", got)
		}
	})
	t.Run("refuses an input header that collides with an output column", func(t *testing.T) {
		cfg := dryConfig(t)
		cfg.Input = strings.NewReader("id,history,plan,history_accuracy_score\nc1,a,b,c\n")
		_, err := DryRun(cfg, nil)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Fatalf("err = %v, want a usage error", err)
		}
	})
	t.Run("publishes nothing", func(t *testing.T) {
		srv := natstest.Start(t)
		_, js := srv.Connect(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
			t.Fatal(err)
		}
		cfg := dryConfig(t)
		if _, err := Run(ctx, js, cfg, zerolog.Nop()); err != nil { // a real run first: the streams hold messages
			t.Fatal(err)
		}
		before := streamCounts(t, js)
		cfg = dryConfig(t)
		if _, err := DryRun(cfg, func(wire.Row, []wire.Job) {}); err != nil {
			t.Fatal(err)
		}
		after := streamCounts(t, js)
		if len(before) == 0 {
			t.Fatal("no streams")
		}
		for name, n := range before {
			if after[name] != n {
				t.Errorf("stream %s: %d messages after the dry run, %d before", name, after[name], n)
			}
		}
	})
}

// Issue 11, dry run: its prompt tokens are within 2 % of the tokenizer's count of the
// rendered messages (here exactly equal: the same encoding, o200k_base for
// gpt-4o-mini, and OpenAI's rule of 3 tokens a message and 3 a request).
func TestDryRunPromptTokensMatchTheTokenizer(t *testing.T) {
	tally := estimate.NewTally()
	if _, err := DryRun(dryConfig(t), tally.Add); err != nil {
		t.Fatal(err)
	}
	// The same prompts rendered directly from the config, tokenized directly.
	tiktoken.SetBpeLoader(tiktokenloader.NewOfflineLoader())
	enc, err := tiktoken.GetEncoding("o200k_base")
	if err != nil {
		t.Fatal(err)
	}
	p := dryConfig(t).Pipeline
	rd, err := input.NewReader(strings.NewReader(dryInput), input.CSV)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Err != nil {
			continue
		}
		for _, q := range p.Queries() {
			msgs, err := q.Render(rec.Map(), p.Lookup)
			if err != nil {
				t.Fatal(err)
			}
			want += 3 // the reply's priming
			for _, m := range msgs {
				want += 3 + len(enc.EncodeOrdinary(m.Role)) + len(enc.EncodeOrdinary(m.Content))
			}
		}
	}
	got := tally.PromptTokens()
	if diff := float64(got-int64(want)) / float64(want); diff > 0.02 || diff < -0.02 {
		t.Fatalf("dry run counted %d prompt tokens, the tokenizer %d: %.1f %% apart, want within 2 %%", got, want, 100*diff)
	}
	if len(tally.Models) != 1 || tally.Models[0].Encoding != "o200k_base" {
		t.Fatalf("models %+v, want gpt-4o-mini counted with o200k_base", tally.Models)
	}
	if m := tally.Models[0]; m.MaxCompletionTokens != 18*120 || m.Unbounded != 0 {
		t.Errorf("max completion tokens %d (unbounded %d), want 18 x 120", m.MaxCompletionTokens, m.Unbounded)
	}
}
