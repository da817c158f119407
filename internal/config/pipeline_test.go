package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/multiquery/multiquery/internal/prompt"
	"github.com/multiquery/multiquery/internal/wire"
)

// parse parses src with no environment and t.TempDir-less base directory.
func parse(t *testing.T, src string) (*Pipeline, error) {
	t.Helper()
	return parsePipeline([]byte(src), t.TempDir(), fakeEnv(nil))
}

func mustParse(t *testing.T, src string) *Pipeline {
	t.Helper()
	p, err := parse(t, src)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

const llmBlock = "llm: {deployment: default, model: gpt-4o-mini}\n"

// explicit is a valid pipeline with two explicit queries.
const explicit = llmBlock + `
output_fields:
  score: {type: integer}
queries:
  - name: a
    template: "Rate {{ row.text }}"
  - name: b
    template: "Summarise {{ row.text }}"
`

// matrix returns a valid matrix pipeline.
func matrix(cases, criteria []string) string {
	var b strings.Builder
	b.WriteString(llmBlock)
	b.WriteString("output_fields:\n  score: {type: integer}\ntemplate: \"{{ row.input_1 }}\"\ncase_studies:\n")
	for _, c := range cases {
		fmt.Fprintf(&b, "  - {name: %s, input_fields: [x]}\n", c)
	}
	b.WriteString("criteria:\n")
	for _, c := range criteria {
		fmt.Fprintf(&b, "  - {name: %s}\n", c)
	}
	return b.String()
}

func TestPipelineValidation(t *testing.T) {
	t.Parallel()
	const out = "output_fields:\n  score: {type: integer}\n"
	const oneQuery = out + "queries:\n  - {name: a, template: \"x\"}\n"
	tests := []struct {
		name string
		src  string
		want []string
	}{
		// llm
		{"llm.deployment is required", "llm: {model: m}\n" + oneQuery, []string{"llm.deployment: required"}},
		{"llm.deployment must be a token", "llm: {deployment: a.b, model: m}\n" + oneQuery, []string{`llm.deployment: must match ^[A-Za-z0-9_-]+$, got "a.b"`}},
		{"llm.model is required", "llm: {deployment: d}\n" + oneQuery, []string{"llm.model: required"}},
		{"temperature above 2", "llm: {deployment: d, model: m, temperature: 2.5}\n" + oneQuery, []string{"llm.temperature: must be in [0,2], got 2.5"}},
		{"negative temperature", "llm: {deployment: d, model: m, temperature: -0.1}\n" + oneQuery, []string{"llm.temperature: must be in [0,2], got -0.1"}},
		{"negative llm.max_completion_tokens", "llm: {deployment: d, model: m, max_completion_tokens: -1}\n" + oneQuery, []string{"llm.max_completion_tokens: must be >= 0, got -1"}},

		// run parameters
		{"unknown response_format", llmBlock + "response_format: xml\n" + oneQuery, []string{`response_format: must be "standard" or "structured", got "xml"`}},
		{"non-positive max_capacity_retry_seconds", llmBlock + "max_capacity_retry_seconds: -5\n" + oneQuery, []string{"max_capacity_retry_seconds: must be > 0, got -5"}},
		{"max_attempts below 1", llmBlock + "max_attempts: -1\n" + oneQuery, []string{"max_attempts: must be >= 1, got -1"}},
		{"negative max_answer_retries", llmBlock + "max_answer_retries: -1\n" + oneQuery, []string{"max_answer_retries: must be in [0,10], got -1"}},
		{"max_answer_retries above its limit", llmBlock + "max_answer_retries: 11\n" + oneQuery, []string{"max_answer_retries: must be in [0,10], got 11"}},
		{"unknown order", llmBlock + "order: random\n" + oneQuery, []string{`order: must be "input" or "completion", got "random"`}},
		{"negative cost", llmBlock + "cost: {prompt_per_1k: -1}\n" + oneQuery, []string{"cost.prompt_per_1k: must be >= 0, got -1"}},
		{"cache ttl below a second", llmBlock + "cache: {enabled: true, ttl: 10ms}\n" + oneQuery, []string{"cache.ttl: must be at least 1s, got 10ms"}},
		{"negative cache ttl", llmBlock + "cache: {ttl: -1h}\n" + oneQuery, []string{"cache.ttl: must be at least 1s, got -1h0m0s"}},
		{"cache ttl not a duration", llmBlock + "cache: {enabled: true, ttl: a week}\n" + oneQuery, []string{"cannot unmarshal", "a week"}},
		{"unknown cache key", llmBlock + "cache: {enabled: true, max_age: 1h}\n" + oneQuery, []string{`unknown field "max_age"`}},
		{"the cached suffix is reserved", llmBlock + "output_fields:\n  cached: {type: boolean}\nqueries:\n  - {name: a, template: \"x\"}\n", []string{`output_fields.cached.suffix: "cached" is reserved`}},
		{"lookup and lookup_file together", llmBlock + "lookup: {a: 1}\nlookup_file: l.yaml\n" + oneQuery, []string{"lookup_file: mutually exclusive with lookup"}},
		{"missing lookup file", llmBlock + "lookup_file: nope.yaml\n" + oneQuery, []string{"lookup_file:", "nope.yaml"}},

		// query forms
		{"neither queries nor matrix", llmBlock + out, []string{"queries: required (or case_studies, criteria and template)"}},
		{"queries and matrix together", llmBlock + oneQuery + "template: x\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{"queries: mutually exclusive with case_studies and criteria"}},
		{"top-level template with explicit queries", llmBlock + oneQuery + "template: x\n", []string{"template: only used with case_studies and criteria"}},
		{"case studies without criteria", llmBlock + out + "template: x\ncase_studies: [{name: c, input_fields: [x]}]\n", []string{"criteria: required with case_studies"}},
		{"criteria without case studies", llmBlock + out + "template: x\ncriteria: [{name: k}]\n", []string{"case_studies: required with criteria"}},
		{"matrix without template", llmBlock + out + "case_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{"template: required (or template_file)"}},
		{"matrix with template and template_file", llmBlock + out + "template: x\ntemplate_file: t.j2\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{"template: mutually exclusive with template_file"}},
		{"matrix template file missing", llmBlock + out + "template_file: prompts/missing.j2\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{`template_file: read template "prompts/missing.j2"`, "no such file"}},
		{"query without template", llmBlock + out + "queries:\n  - {name: a}\n", []string{"queries[0].template: required (or template_file)"}},
		{"query with template and template_file", llmBlock + out + "queries:\n  - {name: a, template: x, template_file: y.j2}\n", []string{"queries[0].template: mutually exclusive with template_file"}},
		{"query template file missing", llmBlock + out + "queries:\n  - {name: a, template_file: nope.j2}\n", []string{`queries[0].template_file: read template "nope.j2"`}},

		// names
		{"query name required", llmBlock + out + "queries:\n  - {template: x}\n", []string{"queries[0].name: required"}},
		{"query name with a dot", llmBlock + out + "queries:\n  - {name: a.b, template: x}\n", []string{`queries[0].name: query name must match ^[A-Za-z0-9_-]+$ (it becomes a NATS subject token), got "a.b"`}},
		{"query name with a space", llmBlock + out + "queries:\n  - {name: a b, template: x}\n", []string{`queries[0].name: query name must match`}},
		{"duplicate query name", llmBlock + out + "queries:\n  - {name: a, template: x}\n  - {name: b, template: x}\n  - {name: a, template: x}\n", []string{`queries[2].name: duplicate query name "a" (also queries[0])`}},
		{"case study name with a wildcard", llmBlock + out + "template: x\ncase_studies: [{name: \"c*\", input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{`case_studies[0].name: case study name must match`}},
		{"duplicate case study", matrix([]string{"cs", "cs"}, []string{"k"}), []string{`case_studies[1].name: duplicate case study name "cs" (also case_studies[0])`}},
		{"criterion name required", llmBlock + out + "template: x\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{question: q}]\n", []string{"criteria[0].name: required"}},
		{"criterion name with a dot", matrix([]string{"cs"}, []string{"k.1"}), []string{`criteria[0].name: criterion name must match`}},
		{"duplicate criterion", matrix([]string{"cs"}, []string{"k", "j", "k"}), []string{`criteria[2].name: duplicate criterion name "k" (also criteria[0])`}},
		{"ambiguous matrix query names", matrix([]string{"a", "a_b"}, []string{"b_c", "c"}), []string{`case_studies[1].name: query name "a_b_c" (with criteria[1]) duplicates the query of case_studies[0] x criteria[0]`}},
		{"case study without input fields", llmBlock + out + "template: x\ncase_studies: [{name: c}]\ncriteria: [{name: k}]\n", []string{"case_studies[0].input_fields: empty"}},
		{"case study with an empty input field", llmBlock + out + "template: x\ncase_studies: [{name: c, input_fields: [a, \"\"]}]\ncriteria: [{name: k}]\n", []string{"case_studies[0].input_fields[1]: empty"}},
		{"query with an empty input field", llmBlock + out + "queries:\n  - {name: a, template: x, input_fields: [\"\"]}\n", []string{"queries[0].input_fields[0]: empty"}},
		{"negative query max_completion_tokens", llmBlock + out + "queries:\n  - {name: a, template: x, max_completion_tokens: -3}\n", []string{"queries[0].max_completion_tokens: must be >= 0, got -3"}},

		// output fields
		{"no output fields for a query", llmBlock + "queries:\n  - {name: a, template: x}\n", []string{"queries[0].output_fields: at least one output field required (here or in the top-level output_fields)"}},
		{"no output fields for the matrix", llmBlock + "template: x\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{"output_fields: at least one output field required"}},
		{"unknown type", llmBlock + "output_fields:\n  score: {type: int}\nqueries:\n  - {name: a, template: x}\n", []string{`output_fields.score.type: unknown type "int" (want string, integer, number, boolean or enum)`}},
		{"missing type", llmBlock + "output_fields:\n  score: {suffix: s}\nqueries:\n  - {name: a, template: x}\n", []string{"output_fields.score.type: required"}},
		{"null output field", llmBlock + "output_fields:\n  score:\nqueries:\n  - {name: a, template: x}\n", []string{"output_fields.score.type: required"}},
		{"enum without values", llmBlock + "output_fields:\n  label: {type: enum}\nqueries:\n  - {name: a, template: x}\n", []string{"output_fields.label.values: enum needs at least one value"}},
		{"enum with duplicate values", llmBlock + "output_fields:\n  label: {type: enum, values: [a, b, a]}\nqueries:\n  - {name: a, template: x}\n", []string{`output_fields.label.values: duplicate value "a"`}},
		{"values without enum", llmBlock + "output_fields:\n  score: {type: integer, values: [\"1\"]}\nqueries:\n  - {name: a, template: x}\n", []string{"output_fields.score.values: only allowed with type enum"}},
		{"field name with a hyphen", llmBlock + "output_fields:\n  my-field: {type: string}\nqueries:\n  - {name: a, template: x}\n", []string{"output_fields.my-field: field name must match ^[A-Za-z0-9_]+$"}},
		{"suffix with a dot", llmBlock + "output_fields:\n  score: {type: integer, suffix: s.x}\nqueries:\n  - {name: a, template: x}\n", []string{`output_fields.score.suffix: must match ^[A-Za-z0-9_]+$, got "s.x"`}},
		{"reserved suffix usage by default", llmBlock + "output_fields:\n  usage: {type: string}\nqueries:\n  - {name: a, template: x}\n", []string{`output_fields.usage.suffix: "usage" is reserved`}},
		{"reserved suffix model", llmBlock + "output_fields:\n  m: {type: string, suffix: model}\nqueries:\n  - {name: a, template: x}\n", []string{`output_fields.m.suffix: "model" is reserved`}},
		{"duplicate suffix in a query", llmBlock + "output_fields:\n  a: {type: string, suffix: x}\n  b: {type: string, suffix: x}\nqueries:\n  - {name: q, template: x}\n", []string{`output_fields.b.suffix: duplicate suffix "x" (also used by output_fields.a)`}},
		{"suffix equal to another field's name", llmBlock + "output_fields:\n  a: {type: string}\n  b: {type: string, suffix: a}\nqueries:\n  - {name: q, template: x}\n", []string{`output_fields.b.suffix: duplicate suffix "a"`}},
		{"duplicate field in an output mapping", llmBlock + "output_fields:\n  a: {type: string}\n  a: {type: integer, suffix: b}\nqueries:\n  - {name: q, template: x}\n", []string{`output_fields.a: duplicate field "a"`}},
		{"query override names its path", llmBlock + "queries:\n  - name: a\n    template: x\n    output_fields:\n      s: {type: float}\n", []string{`queries[0].output_fields.s.type: unknown type "float"`}},
		{"an explicit zero max_attempts is refused, not defaulted", llmBlock + "max_attempts: 0\noutput_fields:\n  s: {type: string}\nqueries:\n  - {name: a, template: x}\n", []string{"max_attempts: must be > 0, got 0 (leave it out for the default)"}},
		{"an explicit zero capacity budget is refused, not defaulted", llmBlock + "max_capacity_retry_seconds: 0\noutput_fields:\n  s: {type: string}\nqueries:\n  - {name: a, template: x}\n", []string{"max_capacity_retry_seconds: must be > 0, got 0"}},
		{"an explicit zero cache ttl is refused, not defaulted", llmBlock + "cache: {enabled: true, ttl: 0s}\noutput_fields:\n  s: {type: string}\nqueries:\n  - {name: a, template: x}\n", []string{"cache.ttl: must be > 0, got 0s"}},
		{"output_fields not a mapping", llmBlock + "output_fields: [score]\nqueries:\n  - {name: a, template: x}\n", []string{"output_fields must be a mapping"}},

		// column collisions across queries
		{
			"ambiguous columns across queries",
			llmBlock + "queries:\n  - name: a_b\n    template: x\n    output_fields: {c: {type: string}}\n  - name: a\n    template: x\n    output_fields: {b_c: {type: string}}\n",
			[]string{`queries[1].output_fields: column "a_b_c" of query "a" collides with the same column of query "a_b"`},
		},
		{
			"a suffix colliding with another query's usage column",
			llmBlock + "queries:\n  - name: a_b\n    template: x\n    output_fields: {s: {type: string}}\n  - name: a\n    template: x\n    output_fields: {x: {type: string, suffix: b_usage}}\n",
			[]string{`column "a_b_usage" of query "a" collides with the same column of query "a_b"`},
		},
		{
			// k_a: k_a_c, k_a_d; k_a_c: k_a_c_c, k_a_c_d. Similar, all distinct.
			"similar but distinct matrix columns pass",
			llmBlock + "output_fields:\n  c: {type: string}\n  d: {type: string}\ntemplate: x\ncase_studies: [{name: k, input_fields: [x]}]\ncriteria: [{name: a_c}, {name: a}]\n",
			nil,
		},
		{
			"matrix query colliding through a suffix",
			llmBlock + "output_fields:\n  x: {type: string, suffix: b_usage}\ntemplate: x\ncase_studies: [{name: k, input_fields: [x]}]\ncriteria: [{name: a}, {name: a_b}]\n",
			[]string{`output_fields: column "k_a_b_usage" of query "k_a_b" collides with the same column of query "k_a"`},
		},

		// "json" in standard mode
		{
			"standard mode without json anywhere",
			llmBlock + "append_format_instructions: false\n" + out + "queries:\n  - {name: a, template: \"Rate {{ row.text }}\"}\n  - {name: b, template: \"Answer in JSON\"}\n",
			[]string{`queries[0].template: response_format "standard" needs the word "json" in the system prompt or the template`},
		},
		{
			"standard mode matrix without json",
			llmBlock + "append_format_instructions: false\n" + out + "template: x\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}, {name: j}]\n",
			[]string{`template: response_format "standard" needs the word "json"`},
		},

		// templates
		{"query template that does not compile", llmBlock + out + "queries:\n  - name: a\n    template: \"ok\\n{% for x in row.y %}\"\n", []string{`queries[0].template: query "a": template "a" line 2`, "endfor"}},
		{"query template with an unknown filter", llmBlock + out + "queries:\n  - name: a\n    template: \"{{ row.y | shout }}\"\n", []string{`queries[0].template: query "a": template "a" line 1`, `unknown filter "shout"`}},
		{"system prompt that does not compile", llmBlock + "system_prompt: \"{% if %}\"\n" + oneQuery, []string{`system_prompt: template "system_prompt"`}},
		{"matrix template that does not compile", llmBlock + out + "template: \"{{ row.x \"\ncase_studies: [{name: c, input_fields: [x]}]\ncriteria: [{name: k}]\n", []string{`template: template "template"`}},

		// decoding
		{"unknown key", explicit + "temperature: 0.2\n", []string{`unknown field "temperature"`}},
		{"unset variable", "llm: {deployment: d, model: \"${MQ_UNSET_MODEL}\"}\n" + oneQuery, []string{"MQ_UNSET_MODEL is not set"}},
		{"wrong type", llmBlock + "max_attempts: many\n" + oneQuery, []string{"cannot unmarshal", "many"}},

		{
			"every problem is reported at once",
			"llm: {model: m, temperature: 3}\norder: x\n" + out + "queries:\n  - {name: a.b, template: x}\n",
			[]string{"llm.deployment: required", "llm.temperature", "order:", "queries[0].name"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse(t, tt.src)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("parse succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestPipelineJSONMentionPasses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
	}{
		{"format instructions appended by default", llmBlock + "output_fields: {s: string}\nqueries: [{name: a, template: x}]\n"},
		{"json in the system prompt", llmBlock + "append_format_instructions: false\nsystem_prompt: Reply in Json.\noutput_fields: {s: string}\nqueries: [{name: a, template: x}]\n"},
		{"json in every template", llmBlock + "append_format_instructions: false\noutput_fields: {s: string}\nqueries: [{name: a, template: JSON please}, {name: b, template: as json}]\n"},
		{"structured mode needs no mention", llmBlock + "response_format: structured\nappend_format_instructions: false\noutput_fields: {s: string}\nqueries: [{name: a, template: x}]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := parse(t, tt.src); err != nil {
				t.Errorf("parse: %v", err)
			}
		})
	}
}

func TestPipelineDefaults(t *testing.T) {
	t.Parallel()
	p := mustParse(t, explicit)
	if p.ResponseFormat != wire.FormatStandard || p.MaxCapacityRetrySeconds != 3600 || p.MaxAttempts != 5 ||
		p.Order != wire.OrderInput || p.AppendFormatInstructions == nil || !*p.AppendFormatInstructions {
		t.Errorf("defaults not applied: %+v", p)
	}
	if got := p.MaxCapacityRetry(); got != time.Hour {
		t.Errorf("MaxCapacityRetry() = %v, want 1h", got)
	}
	if p.Cache.Enabled || p.Cache.TTL != 168*time.Hour {
		t.Errorf("cache defaults = %+v, want off with a ttl of 168h", p.Cache)
	}
	if got := p.AnswerRetries(); got != 1 || p.ReaskWithError {
		t.Errorf("AnswerRetries() = %d, ReaskWithError %v; want 1, false", got, p.ReaskWithError)
	}
	t.Run("max_answer_retries 0 turns re-asking off", func(t *testing.T) {
		if got := mustParse(t, explicit+"max_answer_retries: 0\n").AnswerRetries(); got != 0 {
			t.Errorf("AnswerRetries() = %d, want 0", got)
		}
	})
}

func TestPipelineCache(t *testing.T) {
	t.Parallel()
	p := mustParse(t, llmBlock+"cache: {enabled: true, ttl: 48h}\n"+strings.TrimPrefix(explicit, llmBlock))
	if !p.Cache.Enabled || p.Cache.TTL != 48*time.Hour {
		t.Fatalf("cache = %+v, want enabled with a ttl of 48h", p.Cache)
	}
	t.Run("every query gets a cached column after its model column", func(t *testing.T) {
		want := []string{"a_score", "a_usage", "a_model", "a_cached", "b_score", "b_usage", "b_model", "b_cached"}
		if diff := cmp.Diff(want, p.OutputColumns()); diff != "" {
			t.Errorf("OutputColumns (-want +got):\n%s", diff)
		}
	})
	t.Run("an input column named like it collides", func(t *testing.T) {
		if err := p.CheckInputColumns([]string{"id", "a_cached"}); err == nil || !strings.Contains(err.Error(), `"a_cached"`) {
			t.Errorf("CheckInputColumns(a_cached) = %v, want a collision", err)
		}
		if err := mustParse(t, explicit).CheckInputColumns([]string{"a_cached"}); err != nil {
			t.Errorf("with the cache off, a_cached is an ordinary input column: %v", err)
		}
	})
}

func TestMatrixQueries(t *testing.T) {
	t.Parallel()
	src := llmBlock + `
output_fields: {score: {type: integer}}
template: "{{ row.case_study.name }}/{{ row.criterion.name }}: {{ row.input_1 }} {{ row.input_2 }}"
case_studies:
  - {name: cs1, input_fields: [background, symptoms], description: first}
  - {name: cs2, input_fields: [history], description: second}
criteria:
  - {name: diagnosis, question: "Is it right?"}
  - {name: workup}
  - {name: safety}
  - {name: communication}
  - {name: followup}
`
	p := mustParse(t, src)
	qs := p.Queries()
	var names []string
	for i, q := range qs {
		names = append(names, q.Name)
		if q.Index != i {
			t.Errorf("queries[%d].Index = %d", i, q.Index)
		}
	}
	want := []string{
		"cs1_diagnosis", "cs1_workup", "cs1_safety", "cs1_communication", "cs1_followup",
		"cs2_diagnosis", "cs2_workup", "cs2_safety", "cs2_communication", "cs2_followup",
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("query names (-want +got):\n%s", diff)
	}

	q := qs[0]
	if diff := cmp.Diff([]string{"background", "symptoms"}, q.InputFields); diff != "" {
		t.Errorf("InputFields (-want +got):\n%s", diff)
	}
	wantCS := map[string]any{"name": "cs1", "input_fields": []string{"background", "symptoms"}, "description": "first"}
	if diff := cmp.Diff(wantCS, q.CaseStudy); diff != "" {
		t.Errorf("CaseStudy (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"name": "diagnosis", "question": "Is it right?"}, q.Criterion); diff != "" {
		t.Errorf("Criterion (-want +got):\n%s", diff)
	}
	if qs[5].InputFields[0] != "history" {
		t.Errorf("cs2 input fields = %v", qs[5].InputFields)
	}
}

func TestQueryRenderContext(t *testing.T) {
	t.Parallel()
	src := llmBlock + `
system_prompt: "Grade on {{ lookup.scale.max }} points for {{ row.case_study.name }}."
output_fields:
  score: {type: integer}
template: |-
  input_1={{ row.input_1 }} input_2={{ row.input_2 }}
  criterion={{ row.criterion.name }} ({{ row.criterion.question }})
  case={{ row.case_study.name }}: {{ row.case_study.description }}
  direct={{ row.title }} source={{ row.source_row.title }} symptoms={{ row.source_row.symptoms }}
  rubric={{ lookup.rubric[row.criterion.name] | default("none") }}
case_studies:
  - {name: cs1, input_fields: [background, symptoms], description: chest pain}
criteria:
  - {name: diagnosis, question: "Is it right?"}
`
	p := mustParse(t, src)
	row := map[string]any{"title": "Case 7", "background": "smoker, 54", "symptoms": "pain on exertion"}
	lookup := map[string]any{"scale": map[string]any{"max": 5}, "rubric": map[string]any{"diagnosis": "5 = supported"}}
	msgs, err := p.Queries()[0].Render(row, lookup)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	want := []Message{
		{Role: "system", Content: "Grade on 5 points for cs1.\n" + `Respond with a JSON object with these fields: {"score":"integer"}`},
		{Role: "user", Content: "input_1=smoker, 54 input_2=pain on exertion\n" +
			"criterion=diagnosis (Is it right?)\n" +
			"case=cs1: chest pain\n" +
			"direct=Case 7 source=Case 7 symptoms=pain on exertion\n" +
			"rubric=5 = supported"},
	}
	if diff := cmp.Diff(want, msgs); diff != "" {
		t.Errorf("messages (-want +got):\n%s", diff)
	}
	if _, ok := row["input_1"]; ok {
		t.Error("Render modified the caller's row")
	}
}

// A JSONL record's numbers arrive as json.Number (their text kept for the output row);
// templates see them as numbers, at any depth, as Jinja does over parsed JSON.
func TestTemplatesSeeJSONLNumbersAsNumbers(t *testing.T) {
	t.Parallel()
	src := llmBlock + `
output_fields:
  score: {type: integer}
template: |-
  big={% if row.amount > 10 %}yes{% else %}no{% endif %} double={{ row.amount * 2 }} plus={{ row.amount + 1 }} type={{ row.amount is number }}
  price={{ row.price }} half={{ row.price / 2 }} nested={{ row.meta.n + 1 }} list={{ row.list[1] * 10 }} huge={{ row.huge }}
case_studies:
  - {name: cs1, input_fields: [amount]}
criteria:
  - {name: c}
`
	p := mustParse(t, src)
	row := map[string]any{
		"amount": json.Number("5"), "price": json.Number("2.5"), "huge": json.Number("1e400"),
		"meta": map[string]any{"n": json.Number("3")}, "list": []any{json.Number("1"), json.Number("7")},
	}
	msgs, err := p.Queries()[0].Render(row, nil)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	want := "big=no double=10 plus=6 type=True\nprice=2.5 half=1.25 nested=4 list=70 huge=1e400"
	if got := msgs[len(msgs)-1].Content; got != want {
		t.Errorf("user message:\n got %q\nwant %q", got, want)
	}
	if row["amount"] != json.Number("5") || row["meta"].(map[string]any)["n"] != json.Number("3") {
		t.Error("Render changed the caller's row: the output row keeps the numbers' text")
	}
}

func TestQueryRenderExplicitQueries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		head string
		want []Message
	}{
		{
			name: "format instruction alone is the system message",
			head: "",
			want: []Message{
				{Role: "system", Content: `Respond with a JSON object with these fields: {"label":"enum:pos|neg"}`},
				{Role: "user", Content: "Text: good; no criterion"},
			},
		},
		{
			name: "no system message without system prompt or format instruction",
			head: "response_format: structured\nappend_format_instructions: false\n",
			want: []Message{{Role: "user", Content: "Text: good; no criterion"}},
		},
		{
			name: "system prompt alone",
			head: "append_format_instructions: false\nsystem_prompt: \"Reply in JSON.\"\n",
			want: []Message{{Role: "system", Content: "Reply in JSON."}, {Role: "user", Content: "Text: good; no criterion"}},
		},
		{
			name: "system prompt ending with a newline then the format instruction",
			head: "system_prompt: \"Be brief.\\n\"\n",
			want: []Message{
				{Role: "system", Content: "Be brief.\n" + `Respond with a JSON object with these fields: {"label":"enum:pos|neg"}`},
				{Role: "user", Content: "Text: good; no criterion"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := llmBlock + tt.head + `
output_fields: {label: {type: enum, values: [pos, neg]}}
queries:
  - name: sentiment
    input_fields: [text]
    template: "Text: {{ row.input_1 }}; {% if row.criterion is defined %}criterion{% else %}no criterion{% endif %}"
`
			p := mustParse(t, src)
			q := p.Queries()[0]
			if q.CaseStudy != nil || q.Criterion != nil {
				t.Errorf("explicit query has matrix entries: %v %v", q.CaseStudy, q.Criterion)
			}
			msgs, err := q.Render(map[string]any{"text": "good"}, nil)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if diff := cmp.Diff(tt.want, msgs); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
}

func TestQueryRenderErrors(t *testing.T) {
	t.Parallel()
	src := llmBlock + `
output_fields: {score: {type: integer}}
template: "{{ row.input_1 }} {{ row.input_2 }} {{ row.source_row.title }}"
case_studies:
  - {name: cs1, input_fields: [background, symptoms]}
criteria:
  - {name: diagnosis}
`
	q := mustParse(t, src).Queries()[0]
	tests := []struct {
		name      string
		row       map[string]any
		wantField string
		wantText  string
		wantIs    error
	}{
		{
			name:      "missing input column",
			row:       map[string]any{"background": "b", "title": "t"},
			wantField: "symptoms",
			wantText:  `query "cs1_diagnosis": missing field "symptoms": not in the input row`,
			wantIs:    ErrMissingField,
		},
		{
			name:      "undefined template variable",
			row:       map[string]any{"background": "b", "symptoms": "s"},
			wantField: "row.source_row.title",
			wantText:  `query "cs1_diagnosis": missing field "row.source_row.title": template "template" line 1: undefined variable "row.source_row.title"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := q.Render(tt.row, nil)
			var re *RenderError
			if !errors.As(err, &re) {
				t.Fatalf("Render error = %v, want *RenderError", err)
			}
			if re.Query != "cs1_diagnosis" || re.Field != tt.wantField {
				t.Errorf("RenderError = {Query: %q, Field: %q}, want {cs1_diagnosis, %q}", re.Query, re.Field, tt.wantField)
			}
			if err.Error() != tt.wantText {
				t.Errorf("Error() = %q, want %q", err, tt.wantText)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.wantIs)
			}
		})
	}
	t.Run("undefined variable unwraps to prompt.UndefinedError", func(t *testing.T) {
		t.Parallel()
		_, err := q.Render(map[string]any{"background": "b", "symptoms": "s"}, nil)
		var ue *prompt.UndefinedError
		if !errors.As(err, &ue) || ue.Var != "row.source_row.title" {
			t.Errorf("errors.As UndefinedError: %v", err)
		}
	})
	t.Run("undefined variable in the system prompt", func(t *testing.T) {
		t.Parallel()
		p := mustParse(t, llmBlock+"system_prompt: \"{{ lookup.persona }}\"\noutput_fields: {s: string}\nqueries: [{name: a, template: x}]\n")
		_, err := p.Queries()[0].Render(map[string]any{}, map[string]any{})
		var re *RenderError
		if !errors.As(err, &re) || re.Field != "lookup.persona" {
			t.Errorf("Render error = %v, want a RenderError for lookup.persona", err)
		}
	})
	t.Run("other template failures name the query", func(t *testing.T) {
		t.Parallel()
		p := mustParse(t, llmBlock+"output_fields: {s: string}\nqueries: [{name: a, template: \"{{ row.x | join(1, 2, 3) }}\"}]\n")
		_, err := p.Queries()[0].Render(map[string]any{"x": []any{"p"}}, nil)
		var re *RenderError
		if !errors.As(err, &re) || re.Field != "" || !strings.HasPrefix(err.Error(), `query "a": render: `) {
			t.Errorf("Render error = %v", err)
		}
	})
	t.Run("a zero Query cannot render", func(t *testing.T) {
		t.Parallel()
		if _, err := (Query{Name: "x"}).Render(nil, nil); err == nil {
			t.Error("want an error")
		}
	})
}

func TestQueryRenderConcurrently(t *testing.T) {
	t.Parallel()
	p := mustParse(t, matrix([]string{"a", "b"}, []string{"c", "d"}))
	qs := p.Queries()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			q := qs[i%len(qs)]
			want := fmt.Sprint("v", i)
			msgs, err := q.Render(map[string]any{"x": want}, nil)
			if err != nil {
				errs <- err
				return
			}
			if got := msgs[len(msgs)-1].Content; got != want {
				errs <- fmt.Errorf("got %q, want %q", got, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestOutputFieldsKeepOrder(t *testing.T) {
	t.Parallel()
	src := llmBlock + `
output_fields:
  zeta: {type: string}
  alpha: integer
  mid: {type: enum, values: ["yes", "no"], suffix: m}
  beta: {type: boolean}
  num: {type: number}
queries:
  - {name: q, template: x}
`
	p := mustParse(t, src)
	want := OutputFields{
		{Field: "zeta", Suffix: "zeta", Type: "string"},
		{Field: "alpha", Suffix: "alpha", Type: "integer"},
		{Field: "mid", Suffix: "m", Type: "enum", Values: []string{"yes", "no"}},
		{Field: "beta", Suffix: "beta", Type: "boolean"},
		{Field: "num", Suffix: "num", Type: "number"},
	}
	if diff := cmp.Diff(want, p.OutputFields); diff != "" {
		t.Errorf("OutputFields (-want +got):\n%s", diff)
	}
	wantOut := []Output{
		{Field: "zeta", Suffix: "zeta", Column: "q_zeta", Type: "string"},
		{Field: "alpha", Suffix: "alpha", Column: "q_alpha", Type: "integer"},
		{Field: "mid", Suffix: "m", Column: "q_m", Type: "enum", Values: []string{"yes", "no"}},
		{Field: "beta", Suffix: "beta", Column: "q_beta", Type: "boolean"},
		{Field: "num", Suffix: "num", Column: "q_num", Type: "number"},
	}
	if diff := cmp.Diff(wantOut, p.Queries()[0].Outputs); diff != "" {
		t.Errorf("Outputs (-want +got):\n%s", diff)
	}
}

func TestQueryOverrides(t *testing.T) {
	t.Parallel()
	src := `
llm: {deployment: gpt4, model: gpt-4o, temperature: 0.3, max_completion_tokens: 400}
response_format: structured
output_fields: {score: {type: integer}}
queries:
  - {name: a, template: x}
  - name: b
    template: y
    max_completion_tokens: 50
    output_fields: {text: {type: string, suffix: t}}
`
	qs := mustParse(t, src).Queries()
	temp := 0.3
	want := []Query{
		{Index: 0, Name: "a", Deployment: "gpt4", Model: "gpt-4o", Temperature: &temp, MaxCompletionTokens: 400, ResponseFormat: "structured",
			Outputs: []Output{{Field: "score", Suffix: "score", Column: "a_score", Type: "integer"}}},
		{Index: 1, Name: "b", Deployment: "gpt4", Model: "gpt-4o", Temperature: &temp, MaxCompletionTokens: 50, ResponseFormat: "structured",
			Outputs: []Output{{Field: "text", Suffix: "t", Column: "b_t", Type: "string"}}},
	}
	if diff := cmp.Diff(want, qs, cmpopts.IgnoreUnexported(Query{}), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("queries (-want +got):\n%s", diff)
	}
}

func TestOutputColumns(t *testing.T) {
	t.Parallel()
	src := llmBlock + `
output_fields:
  score: {type: integer}
  rationale: {type: string, suffix: why}
queries:
  - {name: first, template: x}
  - name: second
    template: y
    output_fields: {label: {type: enum, values: [a]}}
`
	p := mustParse(t, src)
	want := []string{
		"first_score", "first_why", "first_usage", "first_model",
		"second_label", "second_usage", "second_model",
	}
	if diff := cmp.Diff(want, p.OutputColumns()); diff != "" {
		t.Errorf("OutputColumns (-want +got):\n%s", diff)
	}
}

func TestCheckInputColumns(t *testing.T) {
	t.Parallel()
	p := mustParse(t, explicit)
	tests := []struct {
		name string
		cols []string
		want []string
	}{
		{"distinct columns pass", []string{"id", "text", "a", "b_usage_x"}, nil},
		{"an output column collides", []string{"id", "a_score"}, []string{`input column "a_score": collides with an output column of query "a"`}},
		{"a usage column collides", []string{"b_usage"}, []string{`input column "b_usage": collides with an output column of query "b"`}},
		{"the error column is reserved", []string{"_error"}, []string{`input column "_error": reserved for error rows`}},
		{"every collision is named", []string{"a_model", "_error", "b_score"}, []string{`"a_model"`, `"_error"`, `"b_score"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := p.CheckInputColumns(tt.cols)
			if tt.want == nil {
				if err != nil {
					t.Errorf("CheckInputColumns: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckInputColumns succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestFormatInstruction(t *testing.T) {
	t.Parallel()
	q := Query{Outputs: []Output{
		{Field: "score", Type: "integer"},
		{Field: "rationale", Type: "string"},
		{Field: "ratio", Type: "number"},
		{Field: "ok", Type: "boolean"},
		{Field: "label", Type: "enum", Values: []string{"a", "b", "c"}},
	}}
	want := `Respond with a JSON object with these fields: {"score":"integer","rationale":"string","ratio":"number","ok":"boolean","label":"enum:a|b|c"}`
	if got := q.FormatInstruction(); got != want {
		t.Errorf("FormatInstruction() =\n%s\nwant\n%s", got, want)
	}
	two := Query{Outputs: q.Outputs[:2]}
	if got := two.FormatInstruction(); got != `Respond with a JSON object with these fields: {"score":"integer","rationale":"string"}` {
		t.Errorf("FormatInstruction() = %s", got)
	}
}

func TestJSONSchema(t *testing.T) {
	t.Parallel()
	q := Query{Outputs: []Output{
		{Field: "score", Type: "integer"},
		{Field: "why", Type: "string"},
		{Field: "label", Type: "enum", Values: []string{"yes", "no"}},
		{Field: "ok", Type: "boolean"},
		{Field: "p", Type: "number"},
	}}
	want := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"score": map[string]any{"type": "integer"},
			"why":   map[string]any{"type": "string"},
			"label": map[string]any{"type": "string", "enum": []string{"yes", "no"}},
			"ok":    map[string]any{"type": "boolean"},
			"p":     map[string]any{"type": "number"},
		},
		"required":             []string{"score", "why", "label", "ok", "p"},
		"additionalProperties": false,
	}
	if diff := cmp.Diff(want, q.JSONSchema()); diff != "" {
		t.Errorf("JSONSchema (-want +got):\n%s", diff)
	}

	wantJSON := `{"type":"object","properties":{"score":{"type":"integer"},"why":{"type":"string"},"label":{"enum":["yes","no"],"type":"string"},"ok":{"type":"boolean"},"p":{"type":"number"}},"required":["score","why","label","ok","p"],"additionalProperties":false}`
	if got := string(q.SchemaJSON()); got != wantJSON {
		t.Errorf("SchemaJSON() =\n%s\nwant\n%s", got, wantJSON)
	}
	var a, b any
	if err := json.Unmarshal(q.SchemaJSON(), &a); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(q.JSONSchema())
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b, a); diff != "" {
		t.Errorf("SchemaJSON and JSONSchema disagree (-JSONSchema +SchemaJSON):\n%s", diff)
	}
}

func TestHash(t *testing.T) {
	t.Parallel()
	base := llmBlock + `
cost: {prompt_per_1k: 0.1}
max_attempts: 5
lookup: {scale: {max: 5, min: 1}, words: [a, b]}
output_fields: {score: {type: integer}}
template: "{{ row.input_1 }} on {{ lookup.scale.max }}"
case_studies: [{name: c, input_fields: [x], note: n}]
criteria: [{name: k}, {name: j}]
`
	h := mustParse(t, base).Hash()
	if len(h) != 64 {
		t.Fatalf("Hash() = %q, want 64 hex digits", h)
	}
	reordered := strings.Replace(base, "{max: 5, min: 1}", "{min: 1, max: 5}", 1)
	tests := []struct {
		name string
		src  string
		same bool
	}{
		{"stable across parses", base, true},
		{"stable across lookup key order", reordered, true},
		{"ignores operational settings", strings.Replace(strings.Replace(base, "0.1}", "0.2}", 1), "max_attempts: 5", "max_attempts: 9", 1), true},
		{"changes with the template", strings.Replace(base, " on ", " of ", 1), false},
		{"changes with the model", strings.Replace(base, "gpt-4o-mini", "gpt-4o", 1), false},
		{"changes with the lookup", strings.Replace(base, "words: [a, b]", "words: [a, c]", 1), false},
		{"changes with the outputs", strings.Replace(base, "type: integer", "type: number", 1), false},
		{"changes with criterion order", strings.Replace(base, "[{name: k}, {name: j}]", "[{name: j}, {name: k}]", 1), false},
		{"changes with case study extras", strings.Replace(base, "note: n", "note: m", 1), false},
		{"changes with the order", base + "order: completion\n", false},
		{"changes with format instructions", base + "append_format_instructions: false\nsystem_prompt: json\n", false},
		{"ignores the cache off", base + "cache: {enabled: false, ttl: 1h}\n", true},
		{"changes with the cache on (a column more)", base + "cache: {enabled: true}\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := mustParse(t, tt.src).Hash()
			if (got == h) != tt.same {
				t.Errorf("Hash() = %s, base %s, want same=%v", got, h, tt.same)
			}
		})
	}
	t.Run("ignores the cache's ttl", func(t *testing.T) {
		t.Parallel()
		if a, b := mustParse(t, base+"cache: {enabled: true, ttl: 1h}\n").Hash(), mustParse(t, base+"cache: {enabled: true}\n").Hash(); a != b {
			t.Errorf("Hash() with ttl 1h %s, with the default %s: want the same", a, b)
		}
	})
}

func TestHashFollowsTemplateFileContent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "q.j2")
	src := []byte(llmBlock + "output_fields: {s: string}\nqueries: [{name: a, template_file: q.j2}]\n")
	write := func(s string) {
		if err := os.WriteFile(tmpl, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("v1 {{ row.x }}")
	p1, err := parsePipeline(src, dir, fakeEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	write("v2 {{ row.x }}")
	p2, err := parsePipeline(src, dir, fakeEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if p1.Hash() == p2.Hash() {
		t.Error("Hash() did not change with the template file's content")
	}
}

func TestPipelineEnvExpansion(t *testing.T) {
	t.Setenv("MQ_TEST_MODEL", "gpt-4.1")
	t.Setenv("MQ_TEST_TEMP", "0.7")
	src := `
llm:
  deployment: ${MQ_TEST_DEPLOYMENT:-azure_eu}
  model: ${MQ_TEST_MODEL}
  temperature: ${MQ_TEST_TEMP}
output_fields: {s: string}
queries:
  - {name: a, template: "Price in $$: {{ row.x }}"}
`
	p, err := ParsePipeline([]byte(src), t.TempDir())
	if err != nil {
		t.Fatalf("ParsePipeline: %v", err)
	}
	q := p.Queries()[0]
	if q.Deployment != "azure_eu" || q.Model != "gpt-4.1" || q.Temperature == nil || *q.Temperature != 0.7 {
		t.Errorf("query = %+v", q)
	}
	msgs, err := q.Render(map[string]any{"x": "5"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[len(msgs)-1].Content; got != "Price in $: 5" {
		t.Errorf("user message = %q", got)
	}
}

func TestLookupWithNonStringKeys(t *testing.T) {
	t.Parallel()
	p := mustParse(t, llmBlock+`
lookup:
  grades: {1: poor, 2: fair}
  levels: [{3: high}]
output_fields: {s: string}
queries: [{name: a, template: "{{ lookup.grades['1'] }}/{{ lookup.levels[0]['3'] }}"}]
`)
	want := map[string]any{
		"grades": map[string]any{"1": "poor", "2": "fair"},
		"levels": []any{map[string]any{"3": "high"}},
	}
	if diff := cmp.Diff(want, p.Lookup); diff != "" {
		t.Errorf("Lookup (-want +got):\n%s", diff)
	}
	msgs, err := p.Queries()[0].Render(map[string]any{}, p.Lookup)
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[len(msgs)-1].Content; got != "poor/high" {
		t.Errorf("user message = %q", got)
	}
}

func TestLoadPipelineExample(t *testing.T) {
	t.Parallel()
	p, err := LoadPipeline("testdata/pipeline.yaml")
	if err != nil {
		t.Fatalf("LoadPipeline: %v", err)
	}
	if len(p.Queries()) != 6 {
		t.Fatalf("got %d queries, want 6", len(p.Queries()))
	}
	wantLookup := map[string]any{
		"scale": map[string]any{"min": 1, "max": 5},
		"rubric": map[string]any{
			"diagnosis": "5 = fully supported and differential considered; 1 = unsupported.",
			"safety":    "5 = every red flag named with an action; 1 = none.",
		},
	}
	if diff := cmp.Diff(wantLookup, p.Lookup); diff != "" {
		t.Errorf("Lookup from lookup_file (-want +got):\n%s", diff)
	}
	if p.Cost != (Cost{PromptPer1K: 0.00015, CompletionPer1K: 0.0006}) {
		t.Errorf("Cost = %+v", p.Cost)
	}
	row := map[string]any{
		"student_id": "s-17", "cardio_history": "h", "cardio_findings": "f",
		"neuro_history": "nh", "neuro_findings": "nf",
	}
	// workup has no rubric entry: the template's `is defined` guard skips it.
	msgs, err := p.Queries()[1].Render(row, p.Lookup)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	if strings.Contains(msgs[1].Content, "Rubric:") {
		t.Errorf("workup prompt has a rubric:\n%s", msgs[1].Content)
	}
	if _, err := LoadPipeline("testdata/nope.yaml"); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("LoadPipeline(missing) = %v", err)
	}
}
