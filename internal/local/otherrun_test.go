package local

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/worker"
)

// A local run is the run its command names, and only that one. A user whose first
// command had a typo in the model (every call a 404 "model not found") interrupts it,
// fixes the model and runs again: that is another run on the same store. The new
// command must not call the abandoned run's jobs (calls the user did not ask for; with
// an error the deployment waits on, such as a bad key, they also paused it under the new
// run) and must finish as fast as on an empty store.
func TestALocalRunCallsNoJobOfAnotherRunInItsStore(t *testing.T) {
	var typo, good atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(string(b), `"model":"gpt-4o-mni"`) {
			typo.Add(1)
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error":{"message":"The model gpt-4o-mni does not exist","type":"invalid_request_error","code":"model_not_found"}}`)
			return
		}
		good.Add(1)
		_, _ = io.WriteString(w, `{"model":"gpt-4o-mini","choices":[{"message":{"content":"{\"score\":3}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
	}))
	defer srv.Close()

	dir := t.TempDir()
	pipeline := func(model string) *config.Pipeline { return scorePipeline(t, dir, model) }
	deps := deploymentsAt(t, dir, srv.URL, "{start_rate: 200, min_rate: 50, max_pause: 2s}")
	var rows strings.Builder
	rows.WriteString("text\n")
	for i := range 40 {
		fmt.Fprintf(&rows, "row %d\n", i)
	}
	in := writeFile(t, dir, "rows.csv", rows.String())
	cfg := func(p *config.Pipeline) Config {
		return Config{Pipeline: p, Deployments: deps, InputPath: in, Format: input.CSV,
			OutDir: filepath.Join(dir, "out"), DrainTimeout: time.Second}
	}

	// The typo: interrupted once its calls have been refused.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for typo.Load() == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	if _, err := Run(ctx, cfg(pipeline("gpt-4o-mni")), zerolog.Nop()); err == nil {
		t.Fatal("the interrupted run returned no error")
	}
	cancel()
	refused := typo.Load()

	// The fix: another run on the same store.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel2()
	start := time.Now()
	res, err := Run(ctx2, cfg(pipeline("gpt-4o-mini")), zerolog.Nop())
	if err != nil {
		t.Fatalf("the second run: %v", err)
	}
	if res.Status.OK != 40 {
		t.Errorf("the second run wrote %d rows ok, want 40", res.Status.OK)
	}
	if n := typo.Load() - refused; n != 0 {
		t.Errorf("the second command called the abandoned run's jobs %d times (in %s)", n, time.Since(start).Round(time.Millisecond))
	}
}

// scorePipeline is a pipeline of one query q on deployment default asking model for an
// integer score.
func scorePipeline(t *testing.T, dir, model string) *config.Pipeline {
	t.Helper()
	p, err := config.LoadPipeline(writeFile(t, dir, model+".yaml", `llm: {deployment: default, model: `+model+`}
output_fields:
  score: {type: integer}
queries:
  - {name: q, template: "Assess {{ row.text }} in json"}
`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// deploymentsAt is deployment default on the OpenAI-compatible server at url, with the
// throttle given as a YAML flow map.
func deploymentsAt(t *testing.T, dir, url, throttle string) []worker.Deployment {
	t.Helper()
	wc, err := config.LoadWorker(writeFile(t, dir, "worker.yaml", fmt.Sprintf(`deployments:
  default:
    provider: openai
    endpoint: %s/v1
    timeout: 5s
    throttle: %s
`, url, throttle)))
	if err != nil {
		t.Fatal(err)
	}
	deps, err := worker.DeploymentsFromConfig(wc)
	if err != nil {
		t.Fatal(err)
	}
	return deps
}
