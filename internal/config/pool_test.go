package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/wire"
)

const poolQueries = `
output_fields:
  score: {type: integer}
queries:
  - {name: q, template: "Rate {{ row.text }} in json."}
`

func TestDeploymentPoolConfig(t *testing.T) {
	t.Parallel()
	t.Run("llm.deployments makes every query a job of the pool, weights default to 1", func(t *testing.T) {
		p := mustParse(t, "llm: {model: m, deployments: [{alias: east}, {alias: west, weight: 4}]}\n"+poolQueries)
		q := p.Queries()[0]
		want := []wire.PoolMember{{Alias: "east", Weight: 1}, {Alias: "west", Weight: 4}}
		if q.Deployment != "pool-east-west" || !cmp.Equal(q.Pool, want) {
			t.Fatalf("query deployment %q pool %v, want pool-east-west %v", q.Deployment, q.Pool, want)
		}
		if cols := p.OutputColumns(); !cmp.Equal(cols, []string{"q_score", "q_usage", "q_model", "q_deployment"}) {
			t.Fatalf("output columns %v, want the member column last", cols)
		}
		if err := p.CheckInputColumns([]string{"q_deployment"}); err == nil {
			t.Fatal("an input column q_deployment was accepted")
		}
	})
	t.Run("llm.pool names the pool", func(t *testing.T) {
		p := mustParse(t, "llm: {model: m, pool: eu, deployments: [{alias: east}]}\n"+poolQueries)
		if d := p.Queries()[0].Deployment; d != "eu" {
			t.Fatalf("deployment %q, want eu", d)
		}
	})
	t.Run("a single deployment has no member column", func(t *testing.T) {
		p := mustParse(t, llmBlock+poolQueries)
		if q := p.Queries()[0]; q.Pool != nil || strings.Contains(strings.Join(p.OutputColumns(), ","), "q_deployment") {
			t.Fatalf("pool %v, columns %v: want neither", q.Pool, p.OutputColumns())
		}
	})
	for _, tc := range []struct {
		name, llm, want string
	}{
		{"both deployment and deployments", "{model: m, deployment: a, deployments: [{alias: b}]}", "llm.deployments: mutually exclusive with llm.deployment"},
		{"neither", "{model: m}", "llm.deployment: required"},
		{"a pool name without members", "{model: m, deployment: a, pool: p}", "llm.pool: needs llm.deployments"},
		{"an invalid alias", "{model: m, deployments: [{alias: 'a.b'}]}", "llm.deployments[0].alias: must match"},
		{"a duplicate alias", "{model: m, deployments: [{alias: a}, {alias: a}]}", "llm.deployments[1].alias: duplicate"},
		{"a negative weight", "{model: m, deployments: [{alias: a, weight: -1}]}", "llm.deployments[0].weight: must be in"},
		{"an explicit weight of 0 (not a way to switch a member off)", "{model: m, deployments: [{alias: a}, {alias: b, weight: 0}]}", "llm.deployments[1].weight: must be > 0, got 0"},
		{"a pool named as a member", "{model: m, pool: a, deployments: [{alias: a}]}", "llm.pool: \"a\" is also a member's alias"},
		{"an invalid pool name", "{model: m, pool: 'p.q', deployments: [{alias: a}]}", "llm.pool: must match"},
	} {
		t.Run("rejects "+tc.name+", naming the field", func(t *testing.T) {
			_, err := parse(t, "llm: "+tc.llm+"\n"+poolQueries)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	t.Run("the suffix deployment is reserved", func(t *testing.T) {
		_, err := parse(t, llmBlock+"output_fields:\n  deployment: {type: string}\nqueries:\n  - {name: q, template: \"x in json\"}\n")
		if err == nil || !strings.Contains(err.Error(), `"deployment" is reserved`) {
			t.Fatalf("error %v, want the reserved suffix named", err)
		}
	})
}
