package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// PoolConfig is the deployment-pool scenario (issue 11, acceptance 5): two llmsim
// instances, east and west, limited to EastRPS and WestRPS, serve one pool through
// Workers workers of Slots slots; goodput and the 429 share are measured over Measure
// after Warmup (from the first request); then east is killed and the run must still
// complete on west.
type PoolConfig struct {
	Bin, Dir          string
	EastRPS, WestRPS  float64
	Burst             int
	Latency           time.Duration
	Workers, Slots    int
	Warmup, Measure   time.Duration
	Log               io.Writer
	KillAfterMeasure  bool
	CompletionTimeout time.Duration
}

// PoolResult is what the pool scenario measured.
type PoolResult struct {
	OK, Limited, Total   int // answers in the window, both members
	EastOK, WestOK       int
	Goodput, Share429    float64 // OK / ((east + west limit) x window); 429s / answers
	Completed            bool    // the run completed after east was killed
	Rows, RowsAfterKill  int
	WestOKAfterKill      int
	Wall                 time.Duration
	EastFirst, WestFirst time.Time
}

const poolBenchPipeline = `llm:
  model: bench
  pool: duo
  deployments:
    - {alias: east, weight: 1}
    - {alias: west, weight: 4}
max_capacity_retry_seconds: 600
output_fields:
  answer: {type: string}
queries:
  - name: q
    template: "Answer about {{ row.text }}; reply in json."
`

// Pool runs the deployment-pool scenario.
func Pool(ctx context.Context, c PoolConfig) (PoolResult, error) {
	var res PoolResult
	s, err := StartStack(c.Bin, c.Dir, simArgs(c.EastRPS, c.Burst, c.Latency))
	if err != nil {
		return res, err
	}
	defer s.Stop()
	westURL, err := s.StartSim("llmsim-west", simArgs(c.WestRPS, c.Burst, c.Latency))
	if err != nil {
		return res, err
	}
	cfg := filepath.Join(c.Dir, "worker-pool.yaml")
	yaml := fmt.Sprintf("deployments:\n  east:\n    provider: openai\n    endpoint: %s/v1\n    timeout: 30s\n  west:\n    provider: openai\n    endpoint: %s/v1\n    timeout: 30s\n", s.SimURL, westURL)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return res, err
	}
	for range c.Workers {
		if err := s.StartWorker(cfg, "--concurrency", fmt.Sprint(c.Slots)); err != nil {
			return res, err
		}
	}
	if err := s.StartCollector(); err != nil {
		return res, err
	}
	limit := c.EastRPS + c.WestRPS
	// Enough rows for the warm-up, the window and half as long again after the kill.
	res.Rows = int(limit * (c.Warmup + c.Measure + c.Measure/2).Seconds())
	pipeline, input, err := writeInput(c.Dir, poolBenchPipeline, res.Rows)
	if err != nil {
		return res, err
	}
	start := time.Now()
	produced := s.produceAsync(ctx, pipeline, input)
	from, to, err := s.waitWindow(ctx, c.Warmup, c.Measure)
	if err != nil {
		return res, err
	}
	east, err := s.Requests()
	if err != nil {
		return res, err
	}
	west, err := requestsAt(westURL)
	if err != nil {
		return res, err
	}
	eo, el, et := window(east, from, to)
	wo, wl, wt := window(west, from, to)
	res.EastOK, res.WestOK = eo, wo
	res.OK, res.Limited, res.Total = eo+wo, el+wl, et+wt
	res.Goodput = float64(res.OK) / (limit * c.Measure.Seconds())
	if res.Total > 0 {
		res.Share429 = float64(res.Limited) / float64(res.Total)
	}
	fmt.Fprintf(c.Log, "pool window: east %d ok / %d answers, west %d ok / %d answers\n", eo, et, wo, wt)
	if !c.KillAfterMeasure {
		return res, nil
	}
	eastOK := countOK(east)
	if err := s.Kill9("llmsim"); err != nil {
		return res, err
	}
	killed := time.Now()
	fmt.Fprintf(c.Log, "east killed after %d answers; waiting for the run to complete on west\n", eastOK)
	run, completed, err := s.waitProduced(ctx, produced, c.CompletionTimeout)
	res.Completed, res.Wall = completed, time.Since(start)
	if err != nil {
		return res, fmt.Errorf("run %s: %w", run, err)
	}
	if west, err = requestsAt(westURL); err == nil {
		res.WestOKAfterKill, _, _ = window(west, killed, time.Now())
	}
	return res, nil
}

// StartSim starts another llmsim process named name (llmsim-...) with args on a free
// port and returns its URL.
func (s *Stack) StartSim(name string, args []string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, err := s.start(name, append([]string{"--addr", addr}, args...)...); err != nil {
		return "", err
	}
	return "http://" + addr, waitPort(addr, 10*time.Second)
}

func countOK(reqs []llmsim.RequestLog) int {
	n := 0
	for _, r := range reqs {
		if r.Status == 200 && r.Fault == "" {
			n++
		}
	}
	return n
}

// requestsAt reads the request log of the llmsim at url.
func requestsAt(url string) ([]llmsim.RequestLog, error) {
	var out []llmsim.RequestLog
	err := getJSON(url+"/requests?since=0", &out)
	return out, err
}

// TokensConfig is the token-budget scenario (issue 11, acceptance 6): llmsim limits
// tokens per minute only (TPM); Workers workers of Slots slots either know the budget
// (throttle.tokens_per_minute) or learn it from llmsim's x-ratelimit-limit-tokens
// header (Learned: llmsim runs with --ratelimit-headers openai).
type TokensConfig struct {
	Bin, Dir        string
	TPM             int
	Latency         time.Duration
	Workers, Slots  int
	Warmup, Measure time.Duration
	Learned         bool
	Log             io.Writer
}

// TokensResult is what the token-budget scenario measured.
type TokensResult struct {
	OK, Limited, Total int
	// Tokens is what llmsim's limiter counted for the answers in the window (each
	// request's prompt + max_completion_tokens); Goodput is Tokens / (TPM x window).
	Tokens            int
	Goodput, Share429 float64
}

// tokensMaxCompletion is the scenario's max_completion_tokens: what llmsim's limiter
// counts besides the prompt.
const tokensMaxCompletion = 20

var tokensBenchPipeline = fmt.Sprintf(`llm: {deployment: default, model: bench, max_completion_tokens: %d}
max_capacity_retry_seconds: 600
output_fields:
  answer: {type: string}
queries:
  - name: q
    template: "Answer about {{ row.text }}; reply in json."
`, tokensMaxCompletion)

// Tokens runs the token-budget scenario.
func Tokens(ctx context.Context, c TokensConfig) (TokensResult, error) {
	var res TokensResult
	sim := []string{"--tpm", fmt.Sprint(c.TPM), "--latency", c.Latency.String()}
	throttle := fmt.Sprintf("    throttle:\n      tokens_per_minute: %d\n", c.TPM)
	if c.Learned {
		sim = append(sim, "--ratelimit-headers", llmsim.RateLimitHeadersOpenAI)
		throttle = ""
	}
	s, err := StartStack(c.Bin, c.Dir, sim)
	if err != nil {
		return res, err
	}
	defer s.Stop()
	if _, err := s.StartWorkers(c.Workers, throttle, "--concurrency", fmt.Sprint(c.Slots)); err != nil {
		return res, err
	}
	if err := s.StartCollector(); err != nil {
		return res, err
	}
	// About 30 tokens a call: rows for the warm-up and the window at the limit, and more.
	rows := int(float64(c.TPM) / 60 / 25 * (c.Warmup + c.Measure).Seconds() * 1.5)
	pipeline, input, err := writeInput(c.Dir, tokensBenchPipeline, rows)
	if err != nil {
		return res, err
	}
	s.produceAsync(ctx, pipeline, input)
	from, to, err := s.waitWindow(ctx, c.Warmup, c.Measure)
	if err != nil {
		return res, err
	}
	reqs, err := s.Requests()
	if err != nil {
		return res, err
	}
	res.OK, res.Limited, res.Total = window(reqs, from, to)
	for _, r := range reqs {
		if !r.Received.Before(from) && r.Received.Before(to) && r.Status == 200 && r.Fault == "" {
			res.Tokens += r.PromptTokens + tokensMaxCompletion
		}
	}
	res.Goodput = float64(res.Tokens) / (float64(c.TPM) / 60 * c.Measure.Seconds())
	if res.Total > 0 {
		res.Share429 = float64(res.Limited) / float64(res.Total)
	}
	return res, nil
}

// waitWindow waits for llmsim's first request, then until a second past the window of
// length measure that starts warmup after it, and returns the window.
func (s *Stack) waitWindow(ctx context.Context, warmup, measure time.Duration) (from, to time.Time, err error) {
	first, err := s.waitFirstRequest(ctx, 60*time.Second)
	if err != nil {
		return from, to, err
	}
	from = first.Add(warmup)
	to = from.Add(measure)
	sleepUntil(ctx, to.Add(time.Second))
	return from, to, nil
}
