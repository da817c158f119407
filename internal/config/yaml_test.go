package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeEnv returns a lookup function over m.
func fakeEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestExpandEnv(t *testing.T) {
	t.Parallel()
	env := fakeEnv(map[string]string{"HOST": "api.example.com", "EMPTY": "", "N": "3"})
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr []string
	}{
		{name: "replaces a set variable", in: "https://${HOST}/v1", want: "https://api.example.com/v1"},
		{name: "replaces several variables", in: "${N}-${HOST}-${N}", want: "3-api.example.com-3"},
		{name: "keeps a set variable over its default", in: "${HOST:-other}", want: "api.example.com"},
		{name: "uses the default of an unset variable", in: "${UNSET:-fallback value}", want: "fallback value"},
		{name: "uses the default of an empty variable", in: "${EMPTY:-fallback}", want: "fallback"},
		{name: "allows an empty default", in: "[${UNSET:-}]", want: "[]"},
		{name: "expands a set empty variable to empty", in: "[${EMPTY}]", want: "[]"},
		{name: "$$ is a literal dollar", in: "costs $$5", want: "costs $5"},
		{name: "$${ is a literal ${", in: "$${HOST}", want: "${HOST}"},
		{name: "a lone dollar is kept", in: "costs $5 or $x", want: "costs $5 or $x"},
		{name: "a trailing dollar is kept", in: "a$", want: "a$"},
		{name: "text without dollars is unchanged", in: "plain {{ row.text }}", want: "plain {{ row.text }}"},
		{name: "an unset variable without default is an error naming it", in: "key ${API_TOKEN}", wantErr: []string{"${API_TOKEN}", "API_TOKEN is not set"}},
		{name: "every unset variable is named", in: "${A1} ${B2}", wantErr: []string{"A1 is not set", "B2 is not set"}},
		{name: "an invalid name is an error", in: "${1X}", wantErr: []string{"invalid variable name in ${1X}"}},
		{name: "an unterminated reference is an error", in: "x ${HOST", wantErr: []string{"unterminated", "${HOST"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := expandEnv(tt.in, env)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("expandEnv(%q) = %q, want an error", tt.in, got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("expandEnv(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("expandEnv(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecodeYAMLExpansion(t *testing.T) {
	t.Parallel()
	type target struct {
		Timeout  time.Duration  `yaml:"timeout"`
		Attempts int            `yaml:"attempts"`
		Rate     float64        `yaml:"rate"`
		On       bool           `yaml:"on"`
		Model    string         `yaml:"model"`
		Quoted   string         `yaml:"quoted"`
		Note     string         `yaml:"note"`
		Nested   map[string]any `yaml:"nested"`
	}
	env := fakeEnv(map[string]string{
		"T": "60s", "N": "7", "R": "0.25", "ON": "true", "NUM": "123",
		"EVIL": "x\nattempts: 99\nextra: [1", "HOST": "h",
	})
	src := `
# A comment may mention ${UNSET_IN_COMMENT} without failing.
timeout: ${T}
attempts: ${N}
rate: ${R:-1}
on: ${ON}
model: ${EVIL}
quoted: "${NUM}"
note: 'literal $$ and ${HOST}'
nested:
  ${HOST}_key:
    - ${NUM}
    - "${NUM}"
`
	var got target
	if err := decodeYAML([]byte(src), &got, env); err != nil {
		t.Fatalf("decodeYAML: %v", err)
	}
	want := target{
		Timeout:  60 * time.Second,
		Attempts: 7,
		Rate:     0.25,
		On:       true,
		Model:    "x\nattempts: 99\nextra: [1", // an environment value never changes the structure
		Quoted:   "123",
		Note:     "literal $ and h",
		Nested:   map[string]any{"h_key": []any{123, "123"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decoded mismatch (-want +got):\n%s", diff)
	}
}

func TestDecodeYAMLExpansionErrorNamesLineAndVariable(t *testing.T) {
	t.Parallel()
	var out struct {
		A string `yaml:"a"`
		B string `yaml:"b"`
	}
	err := decodeYAML([]byte("a: ok\nb: ${MISSING_VAR}\n"), &out, fakeEnv(nil))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, w := range []string{"line 2", "MISSING_VAR"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestDecodeYAMLHintsAtQuotingInFlowCollections(t *testing.T) {
	t.Parallel()
	var out struct {
		Cost map[string]string `yaml:"cost"`
	}
	err := decodeYAML([]byte("cost: {prompt: ${P}}\n"), &out, fakeEnv(map[string]string{"P": "1"}))
	if err == nil || !strings.Contains(err.Error(), "quote values that use ${VAR}") {
		t.Errorf("error = %v, want a hint to quote", err)
	}
	if err := decodeYAML([]byte("cost: {prompt: \"${P}\"}\n"), &out, fakeEnv(map[string]string{"P": "1"})); err != nil {
		t.Errorf("quoted flow value: %v", err)
	}
	if out.Cost["prompt"] != "1" {
		t.Errorf("cost.prompt = %q, want 1", out.Cost["prompt"])
	}
}

func TestDecodeYAMLRejectsUnknownFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"top level", "llm: {deployment: d, model: m}\nqeuries: []\n", `line 2: unknown field "qeuries"`},
		{"nested struct", "llm:\n  deployment: d\n  tempreature: 0.2\n", `line 3: unknown field "tempreature" in llm`},
		{"in a list item", "queries:\n  - name: a\n    templte: x\n", `line 3: unknown field "templte" in queries[0]`},
		{"in an output field", "output_fields:\n  score: {type: integer, suffx: s}\n", `unknown field "suffx" in output_fields.score`},
		{"in a query's output field", "queries:\n  - name: a\n    output_fields:\n      s: {tpye: string}\n", `unknown field "tpye" in queries[0].output_fields.s`},
		{"merged in from an anchor", "cost: &b {x: 1}\nllm:\n  <<: *b\n  model: m\n", `unknown field "x" in llm`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var p Pipeline
			err := decodeYAML([]byte(tt.src), &p, fakeEnv(nil))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestDecodeYAMLAcceptsOpenMappings(t *testing.T) {
	t.Parallel()
	src := `
lookup: {anything: {goes: [1, 2]}}
case_studies:
  - {name: cs, input_fields: [a], description: free text, tags: [x]}
criteria:
  - {name: c, question: "why?"}
`
	var p Pipeline
	if err := decodeYAML([]byte(src), &p, fakeEnv(nil)); err != nil {
		t.Fatalf("decodeYAML: %v", err)
	}
	want := []CaseStudy{{Name: "cs", InputFields: []string{"a"}, Extra: map[string]any{"description": "free text", "tags": []any{"x"}}}}
	if diff := cmp.Diff(want, p.CaseStudies); diff != "" {
		t.Errorf("case studies mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Criterion{{Name: "c", Extra: map[string]any{"question": "why?"}}}, p.Criteria); diff != "" {
		t.Errorf("criteria mismatch (-want +got):\n%s", diff)
	}
}

func FuzzExpandEnv(f *testing.F) {
	for _, s := range []string{"", "plain", "${A}", "${A:-d}", "$$", "$${A}", "a$", "${", "${A", "${1}", "$x ${B:-}"} {
		f.Add(s)
	}
	env := fakeEnv(map[string]string{"A": "va", "B": ""})
	f.Fuzz(func(t *testing.T, s string) {
		got, err := expandEnv(s, env)
		if !strings.Contains(s, "$") && (err != nil || got != s) {
			t.Errorf("expandEnv(%q) = %q, %v; text without $ must be unchanged", s, got, err)
		}
		if err == nil && !strings.Contains(s, "${") && got != strings.ReplaceAll(s, "$$", "$") {
			// Without references only $$ changes. (ReplaceAll pairs $$ left to right, as expandEnv does.)
			t.Errorf("expandEnv(%q) = %q", s, got)
		}
	})
}
