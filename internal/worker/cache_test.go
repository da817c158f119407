package worker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// cacheBundle is a prompt cache on a fresh server, with a clock the test moves.
type cacheBundle struct {
	c   *promptCache
	now time.Time
}

func setupCache(t *testing.T) *cacheBundle {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	b := &cacheBundle{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	b.c = &promptCache{now: func() time.Time { return b.now }, m: newCacheMetrics()}
	b.c.m.init("default")
	if err := b.c.open(ctx, js, wire.BucketCache); err != nil {
		t.Fatal(err)
	}
	return b
}

func cacheJob(content string, ttl time.Duration) *wire.Job {
	return &wire.Job{V: 1, Run: "r", Query: "q", Deployment: "default",
		Request: wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: content}}, ResponseFormat: wire.FormatStandard},
		Outputs: []wire.OutputField{{Field: "score", Column: "q_score", Type: wire.TypeInteger}},
		Cache:   &wire.JobCache{TTLSeconds: int64(ttl / time.Second)}}
}

func count(v *prometheus.CounterVec) float64 {
	var m dto.Metric
	if err := v.WithLabelValues("default").Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func TestPromptCache(t *testing.T) {
	ctx, log := context.Background(), zerolog.Nop()
	answer := &llm.Answer{Content: `{"score": 4}`, FinishReason: "stop", Model: "m-2025", Usage: wire.Usage{PromptTokens: 10, CompletionTokens: 3, TotalTokens: 13}}

	t.Run("a stored answer answers the same request within its ttl, parsed into the job's outputs", func(t *testing.T) {
		b := setupCache(t)
		job := cacheJob("rate it", time.Hour)
		b.c.store(ctx, "default", "m", job, answer, log)
		b.now = b.now.Add(59 * time.Minute)
		e, fields, ok := b.c.lookup(ctx, "default", "m", job, log)
		if !ok || string(fields["q_score"]) != "4" || e.Model != "m-2025" || e.Usage != answer.Usage || e.FinishReason != "stop" {
			t.Fatalf("lookup = %+v, %s, %v; want the stored answer", e, fields, ok)
		}
		if count(b.c.m.stores) != 1 || count(b.c.m.hits) != 1 || count(b.c.m.misses) != 0 {
			t.Fatalf("stores %v, hits %v, misses %v; want 1, 1, 0", count(b.c.m.stores), count(b.c.m.hits), count(b.c.m.misses))
		}
	})
	t.Run("an answer older than the job's ttl is a miss", func(t *testing.T) {
		b := setupCache(t)
		job := cacheJob("rate it", time.Hour)
		b.c.store(ctx, "default", "m", job, answer, log)
		b.now = b.now.Add(61 * time.Minute)
		if _, _, ok := b.c.lookup(ctx, "default", "m", job, log); ok {
			t.Fatal("an answer stored 61 minutes ago answered a job with a ttl of 1 h")
		}
		if _, _, ok := b.c.lookup(ctx, "default", "m", cacheJob("rate it", 2*time.Hour), log); !ok {
			t.Fatal("the same answer did not answer a job with a ttl of 2 h")
		}
		if count(b.c.m.misses) != 1 || count(b.c.m.hits) != 1 {
			t.Fatalf("misses %v, hits %v; want 1 and 1", count(b.c.m.misses), count(b.c.m.hits))
		}
	})
	t.Run("another prompt, or another model sent, is a miss", func(t *testing.T) {
		b := setupCache(t)
		b.c.store(ctx, "default", "m", cacheJob("rate it", time.Hour), answer, log)
		if _, _, ok := b.c.lookup(ctx, "default", "m", cacheJob("rate it!", time.Hour), log); ok {
			t.Fatal("another prompt took the answer")
		}
		if _, _, ok := b.c.lookup(ctx, "default", "azure-deployment", cacheJob("rate it", time.Hour), log); ok {
			t.Fatal("another model sent took the answer")
		}
	})
	t.Run("an answer that does not parse into the job's outputs is a miss", func(t *testing.T) {
		b := setupCache(t)
		b.c.store(ctx, "default", "m", cacheJob("rate it", time.Hour), answer, log)
		other := cacheJob("rate it", time.Hour)
		other.Outputs = []wire.OutputField{{Field: "label", Column: "q_label", Type: wire.TypeString}}
		if _, _, ok := b.c.lookup(ctx, "default", "m", other, log); ok {
			t.Fatal("an answer without the job's field answered it")
		}
	})
	t.Run("an answer larger than a message allows is not stored, and counted", func(t *testing.T) {
		b := setupCache(t)
		big := *answer
		big.Content = `{"score": 4, "pad": "` + strings.Repeat("x", b.c.maxValue) + `"}`
		job := cacheJob("rate it", time.Hour)
		b.c.store(ctx, "default", "m", job, &big, log)
		if count(b.c.m.tooLarge) != 1 || count(b.c.m.stores) != 0 {
			t.Fatalf("too large %v, stores %v; want 1 and 0", count(b.c.m.tooLarge), count(b.c.m.stores))
		}
		if _, err := b.c.kv.Get(ctx, wire.CacheKey("m", job.Request)); err == nil {
			t.Fatal("the large answer was stored")
		}
	})
	t.Run("a failed store is counted and nothing else", func(t *testing.T) {
		b := setupCache(t)
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		b.c.store(cancelled, "default", "m", cacheJob("rate it", time.Hour), answer, log)
		if count(b.c.m.storeFailures) != 1 || count(b.c.m.stores) != 0 {
			t.Fatalf("store failures %v, stores %v; want 1 and 0", count(b.c.m.storeFailures), count(b.c.m.stores))
		}
	})
}
