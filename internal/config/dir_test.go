package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadPipelineDir(t *testing.T) {
	t.Run("the example directory serves its pipeline and skips the worker configs", func(t *testing.T) {
		d, err := LoadPipelineDir("../../examples/assessment")
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Pipelines) != 1 || d.Pipelines["pipeline"] == nil {
			t.Fatalf("pipelines %v, want only \"pipeline\"", d.Pipelines)
		}
		var skipped []string
		for _, s := range d.Skipped {
			skipped = append(skipped, filepath.Base(s.Path))
			if !strings.Contains(s.Why, "deployments") {
				t.Errorf("%s skipped because %q, want the reason to list its keys", s.Path, s.Why)
			}
		}
		if strings.Join(skipped, ",") != "worker.compose.yaml,worker.yaml" {
			t.Fatalf("skipped %v, want the two worker configs", skipped)
		}
	})
	write := func(t *testing.T, files map[string]string) string {
		dir := t.TempDir()
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	const valid = "llm: {deployment: default, model: m}\noutput_fields: {a: {type: string}}\nqueries:\n  - {name: q, template: \"x {{ row.id }}\"}\n"
	for _, tt := range []struct {
		name, want string
		files      map[string]string
	}{
		{"an invalid pipeline config is an error, not skipped", "queries[0].name", map[string]string{
			"bad.yaml": "llm: {deployment: default, model: m}\noutput_fields: {a: {type: string}}\nqueries:\n  - {name: \"a b\", template: x}\n"}},
		{"a pipeline named with a dot is an error", "letters, digits", map[string]string{"a.b.yaml": valid}},
		{"a directory without a pipeline config is an error", "no pipeline config", map[string]string{"worker.yaml": "deployments: {}\n"}},
		{"an empty directory is an error", "no pipeline config", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadPipelineDir(write(t, tt.files))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	t.Run("a file that is not YAML mapping is skipped beside a pipeline", func(t *testing.T) {
		d, err := LoadPipelineDir(write(t, map[string]string{"ok.yaml": valid, "list.yaml": "- a\n- b\n"}))
		if err != nil {
			t.Fatal(err)
		}
		if d.Pipelines["ok"] == nil || len(d.Skipped) != 1 || d.Skipped[0].Why != "not a YAML mapping" {
			t.Fatalf("pipelines %v, skipped %v", d.Pipelines, d.Skipped)
		}
	})
}
