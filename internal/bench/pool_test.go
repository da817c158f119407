package bench

import (
	"testing"

	"github.com/multiquery/multiquery/internal/config"
)

// The pool and token-budget scenarios' pipelines are valid, and the pool's names its
// members.
func TestPoolAndTokensPipelinesParse(t *testing.T) {
	p, err := config.ParsePipeline([]byte(poolBenchPipeline), t.TempDir())
	if err != nil {
		t.Fatalf("pool pipeline: %v", err)
	}
	if q := p.Queries()[0]; q.Deployment != "duo" || len(q.Pool) != 2 {
		t.Fatalf("pool query deployment %q with %d members, want duo with 2", q.Deployment, len(q.Pool))
	}
	if _, err := config.ParsePipeline([]byte(tokensBenchPipeline), t.TempDir()); err != nil {
		t.Fatalf("tokens pipeline: %v", err)
	}
}
