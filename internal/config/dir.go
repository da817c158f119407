package config

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// PipelineDir is what LoadPipelineDir found in a directory: the pipeline configs by
// name, and the other YAML files with why each is not a pipeline config.
type PipelineDir struct {
	Pipelines map[string]*Pipeline // by the file's name without .yaml
	Skipped   []SkippedFile        // sorted by path
}

// SkippedFile is a YAML file of a pipeline directory that is not a pipeline config.
type SkippedFile struct {
	Path, Why string
}

// LoadPipelineDir loads the pipeline configs of dir (producer --serve): every
// <name>.yaml whose top level has the keys a pipeline config defines its queries with
// (queries, or case_studies and criteria). Other YAML files (a worker config, a Compose
// file) are skipped and reported in Skipped. A file that is a pipeline config must
// load and validate, and its name must be one subject token ([A-Za-z0-9_-]+): it is the
// <pipeline> of submit subjects. A directory without any pipeline config is an error.
func LoadPipelineDir(dir string) (PipelineDir, error) {
	d := PipelineDir{Pipelines: map[string]*Pipeline{}}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return d, fmt.Errorf("pipeline directory %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		why, err := notPipeline(f)
		if err != nil {
			return d, err
		}
		if why != "" {
			d.Skipped = append(d.Skipped, SkippedFile{Path: f, Why: why})
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if !nameRE.MatchString(name) {
			return d, fmt.Errorf("pipeline config %s: its name %q is the <pipeline> of submit subjects: use only letters, digits, '-' and '_'", f, name)
		}
		p, err := LoadPipeline(f)
		if err != nil {
			return d, err
		}
		d.Pipelines[name] = p
	}
	if len(d.Pipelines) == 0 {
		return d, fmt.Errorf("pipeline directory %s: no pipeline config (<name>.yaml with queries, or case_studies and criteria)", dir)
	}
	return d, nil
}

// notPipeline says why the YAML file at path is not a pipeline config ("": it is one):
// its top level is not a mapping, or has none of the keys that define a pipeline's
// queries.
func notPipeline(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read pipeline config: %w", err)
	}
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(data, &top); err != nil {
		return "not a YAML mapping", nil
	}
	_, queries := top["queries"]
	_, cases := top["case_studies"]
	_, criteria := top["criteria"]
	if queries || cases || criteria {
		return "", nil
	}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return fmt.Sprintf("no queries, case_studies or criteria key (top-level keys: %s)", strings.Join(keys, ", ")), nil
}
