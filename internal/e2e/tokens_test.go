package e2e

import (
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
)

// Acceptance 6 (behaviour; the goodput figure is mqbench --tokens'): llmsim limits
// tokens per minute, not requests. The request throttle is held far above what the
// token limit allows (its floor is 100 req/s, the token limit ~15 calls/s), so without
// the token gate most calls would be refused; with it, the run completes with few 429s,
// whether the budget is configured (throttle.tokens_per_minute) or stated by the
// provider's x-ratelimit-limit-tokens header.
func TestTokenBudgetPacesCalls(t *testing.T) {
	const tpm = 60000 // ~1000 tokens/s; a call counts ~65
	for _, tc := range []struct {
		name       string
		headers    string
		configured float64
	}{
		{"a configured tokens_per_minute paces the calls", llmsim.RateLimitHeadersAzure, tpm},
		{"a budget stated by x-ratelimit-limit-tokens paces the calls", llmsim.RateLimitHeadersOpenAI, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, llmsim.Config{Latency: 20 * time.Millisecond, TPM: tpm, RateLimitHeaders: tc.headers})
			tp := fastThrottle()
			tp.StartRate, tp.MinRate = 200, 100
			tp.TokensPerMinute = tc.configured
			e.startWorker(workerOpts{concurrency: 32, throttle: &tp})
			e.startCollector("")
			p := e.pipeline(`llm: {deployment: default, model: sim-model, max_completion_tokens: 20}
output_fields:
  echo: {type: string}
queries:
  - name: q
    input_fields: [text]
    template: "Answer about {{ row.input_1 }}. [[mark:{{ row.source_row.id }}]]"
`)
			rep, err := e.produce(p, csvRows(300, nil), input.CSV)
			if err != nil {
				t.Fatalf("produce: %v", err)
			}
			sum := e.waitSummary(rep.Run, 120*time.Second)
			if sum.Stats.RowsOK != 300 || sum.Stats.RowsFailed != 0 {
				t.Fatalf("rows ok/failed = %d/%d, want 300/0", sum.Stats.RowsOK, sum.Stats.RowsFailed)
			}
			st := e.sim.Stats()
			if st.Requests == 0 || float64(st.Limited) > 0.1*float64(st.Requests) {
				t.Fatalf("llmsim refused %d of %d calls by its token limit, want at most 10 %%", st.Limited, st.Requests)
			}
		})
	}
}
