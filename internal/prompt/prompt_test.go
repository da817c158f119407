package prompt_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nikolalohinski/gonja/v2"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/prompt"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func sampleContext() map[string]any {
	return map[string]any{
		"row": map[string]any{
			"text":    "great product",
			"input_1": "chest pain",
			"tags":    []any{"a", "b", "c"},
			"empty":   "",
			"null":    nil,
			"html":    `<b>"Tom" & 'Jerry'</b>`,
			"count":   int64(3),
			"score":   2.5,
			"source_row": map[string]any{
				"title": "Case 7",
				"meta":  map[string]any{"lang": "en"},
			},
		},
		"lookup": map[string]any{
			"scale": map[string]any{"max": 5},
			"labels": []any{
				map[string]any{"name": "yes"},
				map[string]any{"name": "no"},
			},
		},
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"plain text passes through unchanged", "Respond in JSON.", "Respond in JSON."},
		{"pipe inside a string literal is not a filter", "{{ 'a|b' }}", "a|b"},
		{"substitutes a row field", "Classify: {{ row.text }}", "Classify: great product"},
		{"accesses attributes of nested maps", "{{ row.source_row.title }} ({{ row.source_row.meta.lang }})", "Case 7 (en)"},
		{"accesses items with subscripts", "{{ row['text'] }} / {{ row.tags[1] }}", "great product / b"},
		{"upper filter", "{{ row.text | upper }}", "GREAT PRODUCT"},
		{"join filter", "{{ row.tags | join(', ') }}", "a, b, c"},
		{"default filter replaces an undefined attribute", "{{ row.missing | default('n/a') }}", "n/a"},
		{"default filter keeps a defined value", "{{ row.text | default('n/a') }}", "great product"},
		{"default filter with boolean replaces an empty string", "{{ row.empty | default('none', true) }}", "none"},
		{"for loop", "{% for t in row.tags %}[{{ loop.index }}:{{ t }}]{% endfor %}", "[1:a][2:b][3:c]"},
		{"for loop over lookup list of maps", "{% for l in lookup.labels %}{{ l.name }}{% if not loop.last %}|{% endif %}{% endfor %}", "yes|no"},
		{"if else", "{% if row.count > 2 %}many{% else %}few{% endif %}", "many"},
		{"if is defined guards a missing attribute", "{% if row.missing is defined %}yes{% else %}no{% endif %}", "no"},
		{"numbers render plainly", "{{ row.count }} {{ row.score }} {{ lookup.scale.max }}", "3 2.5 5"},
		{"null renders empty", "[{{ row.null }}]", "[]"},
		{"autoescape is off", "{{ row.html }}", `<b>"Tom" & 'Jerry'</b>`},
		{"set and whitespace control", "{%- set x = row.input_1 -%}\n  {{ x }}", "chest pain"},
		{"multi-line template keeps lines", "a\n{{ row.input_1 }}\nb", "a\nchest pain\nb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tpl, err := prompt.Compile(tt.name, tt.src)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			got, err := tpl.Render(sampleContext())
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Render mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRenderUndefined(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		src      string
		wantVar  string
		wantLine int
	}{
		{"missing top-level variable", "{{ nope }}", "nope", 1},
		{"missing attribute of a top-level variable's missing parent", "{{ nope.x }}", "nope", 1},
		{"missing row attribute", "Hello {{ row.input_2 }}", "row.input_2", 1},
		{"missing nested attribute", "{{ row.source_row.title }} {{ row.source_row.subtitle }}", "row.source_row.subtitle", 1},
		{"missing intermediate attribute", "{{ row.nothing.deeper }}", "row.nothing", 1},
		{"missing attribute on a string", "{{ row.text.foo }}", "row.text.foo", 1},
		{"missing item by subscript", "{{ row['no such'] }}", "row['no such']", 1},
		{"list index out of range", "{{ row.tags[7] }}", "row.tags[7]", 1},
		{"missing lookup key", "{{ lookup.scale.min }}", "lookup.scale.min", 1},
		{"inside a filter chain", "{{ row.absent | upper }}", "row.absent", 1},
		{"right operand of a concatenation", "{{ row.text ~ row.absent }}", "row.absent", 1},
		{"if condition", "line 1\n{% if row.flag %}x{% endif %}", "row.flag", 2},
		{"for loop iterable", "{% for x in row.items %}{{ x }}{% endfor %}", "row.items", 1},
		{"inside a for loop body reports the inner line", "{% for t in row.tags %}\n\n{{ row.gone }}{% endfor %}", "row.gone", 3},
		{"set statement", "{% set v = row.gone %}{{ v }}", "row.gone", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tpl, err := prompt.Compile("q1", tt.src)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			_, err = tpl.Render(sampleContext())
			var ue *prompt.UndefinedError
			if !errors.As(err, &ue) {
				t.Fatalf("Render error = %v, want *UndefinedError", err)
			}
			want := &prompt.UndefinedError{Template: "q1", Var: tt.wantVar, Line: tt.wantLine}
			if diff := cmp.Diff(want, ue); diff != "" {
				t.Errorf("UndefinedError mismatch (-want +got):\n%s", diff)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.wantVar)) {
				t.Errorf("error %q does not name %q", err, tt.wantVar)
			}
		})
	}
}

func TestRenderOtherErrorsAreNotUndefined(t *testing.T) {
	t.Parallel()
	tpl, err := prompt.Compile("q1", "{{ row.tags | join(1, 2, 3) }}")
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	_, err = tpl.Render(sampleContext())
	if err == nil {
		t.Fatal("Render succeeded with a bad filter call")
	}
	var ue *prompt.UndefinedError
	if errors.As(err, &ue) {
		t.Errorf("bad filter call reported as undefined variable: %v", err)
	}
	if !strings.Contains(err.Error(), `"q1"`) || !strings.Contains(err.Error(), "join") {
		t.Errorf("error %q should name the template and the filter", err)
	}
}

func TestRenderIncludeIsNotSupported(t *testing.T) {
	t.Parallel()
	tpl, err := prompt.Compile("q1", `{% include "other.j2" %}`)
	if err == nil {
		_, err = tpl.Render(sampleContext())
	}
	if err == nil {
		t.Fatal("include succeeded, want an error")
	}
}

func TestCompileError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		src      string
		wantLine int
	}{
		{"unclosed for block reports its line", "line 1\nline 2\n{% for x in row.tags %}{{ x }}", 3},
		{"unknown tag", "ok\n{% frobnicate %}", 0},
		{"unbalanced expression", "{{ row.text( }}", 0},
		{"if without condition", "{% if %}x{% endif %}", 0},
		{"unknown filter is caught at compile time", "ok\n\n{{ row.text | nosuchfilter }}", 3},
		{"unknown filter after a filter chain", "{{ row.text | upper|shout }}", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := prompt.Compile("queries[0].template", tt.src)
			var ce *prompt.CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("Compile error = %v, want *CompileError", err)
			}
			if ce.Template != "queries[0].template" {
				t.Errorf("Template = %q", ce.Template)
			}
			if !strings.Contains(err.Error(), `template "queries[0].template"`) {
				t.Errorf("error %q does not name the template", err)
			}
			if tt.wantLine > 0 {
				if ce.Line != tt.wantLine {
					t.Errorf("Line = %d, want %d (%v)", ce.Line, tt.wantLine, err)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("line %d", tt.wantLine)) {
					t.Errorf("error %q does not name line %d", err, tt.wantLine)
				}
			}
			// gonja quotes the whole source in its own message; ours must not.
			if strings.Count(err.Error(), tt.src) > 0 && len(tt.src) > 20 {
				t.Errorf("error quotes the template source: %q", err)
			}
		})
	}
}

func TestCompileLeavesGonjaDefaultsAlone(t *testing.T) {
	t.Parallel()
	if _, err := prompt.Compile("q", "{{ row.x }}"); err != nil {
		t.Fatal(err)
	}
	if gonja.DefaultConfig.StrictUndefined {
		t.Error("gonja.DefaultConfig.StrictUndefined was changed")
	}
}

func TestTemplateAccessors(t *testing.T) {
	t.Parallel()
	tpl, err := prompt.Compile("name", "src {{ row.x }}")
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Name() != "name" || tpl.Source() != "src {{ row.x }}" {
		t.Errorf("Name() = %q, Source() = %q", tpl.Name(), tpl.Source())
	}
}

func TestRenderConcurrently(t *testing.T) {
	t.Parallel()
	tpl, err := prompt.Compile("concurrent", `{% for t in row.tags %}{{ t | upper }}{% endfor %}-{{ row.id }}-{{ lookup.k | default('d') }}`)
	if err != nil {
		t.Fatal(err)
	}
	shared := map[string]any{"k": "v"}
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			for j := range 20 {
				ctx := map[string]any{
					"row":    map[string]any{"id": i*100 + j, "tags": []any{"x", "y"}},
					"lookup": shared,
				}
				want := fmt.Sprintf("XY-%d-v", i*100+j)
				if i%4 == 0 {
					// Interleave failing renders with successful ones.
					if _, err := tpl.Render(map[string]any{"row": map[string]any{}}); err == nil {
						errs <- errors.New("render without row.tags succeeded")
						return
					}
				}
				got, err := tpl.Render(ctx)
				if err != nil {
					errs <- err
					return
				}
				if got != want {
					errs <- fmt.Errorf("got %q, want %q", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func ExampleTemplate_Render() {
	tpl, err := prompt.Compile("sentiment", "Classify the sentiment of: {{ row.text | upper }}. Respond in JSON.")
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := tpl.Render(map[string]any{"row": map[string]any{"text": "great product"}})
	fmt.Println(out, err)

	_, err = tpl.Render(map[string]any{"row": map[string]any{"title": "x"}})
	var ue *prompt.UndefinedError
	if errors.As(err, &ue) {
		fmt.Println("undefined:", ue.Var)
	}
	// Output:
	// Classify the sentiment of: GREAT PRODUCT. Respond in JSON. <nil>
	// undefined: row.text
}

func FuzzCompileAndRender(f *testing.F) {
	for _, s := range []string{
		"{{ row.text }}", "{% for t in row.tags %}{{ t }}{% endfor %}", "{{ row.x | default('d') | upper }}",
		"{% if row.count > 2 %}a{% elif row.score %}b{% else %}c{% endif %}", "{{ lookup.scale.max * 2 }}",
		"{% set x = row.tags | join(',') %}{{ x }}", "{{ row.tags[1:] }}", "{# c #}{{ 'a' ~ row.text }}", "{{ (",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tpl, err := prompt.Compile("fuzz", src)
		if err != nil {
			return
		}
		_, _ = tpl.Render(sampleContext())
	})
}
