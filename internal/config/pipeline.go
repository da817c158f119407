package config

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/multiquery/multiquery/internal/wire"
)

// The response formats, output orders and output field types a pipeline names are the
// contract's: wire.Format*, wire.Order* and wire.Type*.

// Pipeline defaults.
const (
	DefaultMaxCapacityRetrySeconds = 3600
	DefaultMaxAttempts             = 5
	// DefaultMaxAnswerRetries is how many times a query whose answer is not usable
	// (invalid JSON, a missing output field, a wrong type) is asked again.
	DefaultMaxAnswerRetries = 1
	// MaxAnswerRetriesLimit bounds max_answer_retries.
	MaxAnswerRetriesLimit = 10
)

// Pipeline is the producer's configuration: what to ask for every input row.
//
// After ParsePipeline or LoadPipeline (or a successful Validate) it resolves to
// Queries, in order.
type Pipeline struct {
	// LLM holds the model parameters shared by every query.
	LLM LLM `yaml:"llm"`
	// ResponseFormat is "standard" (JSON object, default) or "structured" (strict
	// JSON schema).
	ResponseFormat string `yaml:"response_format"`
	// MaxCapacityRetrySeconds is the capacity-retry budget of a query job, counted
	// from its first capacity error, default 3600.
	MaxCapacityRetrySeconds int `yaml:"max_capacity_retry_seconds" zero:"refused"`
	// MaxAttempts bounds transient retries per query, default 5.
	MaxAttempts int `yaml:"max_attempts" zero:"refused"`
	// MaxAnswerRetries is how many times a query whose answer is not usable (not one
	// JSON object, a mapped field missing or of the wrong type) is asked again before
	// it fails with that reason; nil means DefaultMaxAnswerRetries, 0 never asks again.
	MaxAnswerRetries *int `yaml:"max_answer_retries"`
	// ReaskWithError appends the reason the previous answer was not usable to the
	// messages of a query asked again (default false: the same request again).
	ReaskWithError bool `yaml:"reask_with_error"`
	// Order is "input" (default) or "completion".
	Order string `yaml:"order"`
	// SystemPrompt is an optional Jinja2 template sent as the system message of
	// every query.
	SystemPrompt string `yaml:"system_prompt"`
	// AppendFormatInstructions appends Query.FormatInstruction to the system
	// message; nil means true.
	AppendFormatInstructions *bool `yaml:"append_format_instructions"`
	// Lookup is side data available to templates as `lookup`; loaded from
	// LookupFile when that is set.
	Lookup map[string]any `yaml:"lookup"`
	// LookupFile is a YAML file holding Lookup, relative to the config file. It is
	// not ${VAR}-expanded: it is data, not configuration.
	LookupFile string `yaml:"lookup_file"`
	// Cost prices tokens for run summaries.
	Cost Cost `yaml:"cost"`
	// Cache answers a query from the prompt cache when the same request was answered
	// before (in any run), default off.
	Cache Cache `yaml:"cache"`
	// OutputFields are the default output fields of every query, in order.
	OutputFields OutputFields `yaml:"output_fields"`
	// QuerySpecs is the explicit query list (YAML `queries`). It is named apart
	// from the Queries method, which returns the resolved queries.
	QuerySpecs []QuerySpec `yaml:"queries"`
	// CaseStudies and Criteria are the matrix form: one query per case study and
	// criterion, case study outer, named <case>_<criterion>.
	CaseStudies []CaseStudy `yaml:"case_studies"`
	Criteria    []Criterion `yaml:"criteria"`
	// Template or TemplateFile is the template shared by all matrix queries.
	Template     string `yaml:"template"`
	TemplateFile string `yaml:"template_file"`

	baseDir      string
	lookupLoaded bool // Lookup came from LookupFile.
	queries      []Query
	hash         string
}

// LLM holds the model parameters.
type LLM struct {
	// Deployment is the worker deployment alias to send calls to (required, unless
	// Deployments is set).
	Deployment string `yaml:"deployment"`
	// Deployments, instead of Deployment, is a pool of deployment aliases: each call
	// goes to a member with spare capacity, and fails over to another when one is
	// throttled, paused by its breaker or down.
	Deployments []PoolDeployment `yaml:"deployments"`
	// Pool names the pool (a subject token); default "pool-" + the aliases joined
	// with "-".
	Pool string `yaml:"pool"`
	// Model is the model name (required).
	Model string `yaml:"model"`
	// Temperature is optional, in [0,2].
	Temperature *float64 `yaml:"temperature"`
	// MaxCompletionTokens is the default for queries; 0 means unset.
	MaxCompletionTokens int `yaml:"max_completion_tokens"`
}

// Cost prices tokens, per 1000.
type Cost struct {
	PromptPer1K     float64 `yaml:"prompt_per_1k"`
	CompletionPer1K float64 `yaml:"completion_per_1k"`
}

// Cache is the pipeline's use of the prompt cache (KV bucket mq_cache): an answer is
// stored after a call whose answer parsed into the query's output fields, and a query
// whose request (model, messages, temperature, max_completion_tokens, response format
// and schema) was answered less than TTL ago takes that answer without a call. With
// Enabled every query also has a <query>_cached column.
type Cache struct {
	Enabled bool `yaml:"enabled"`
	// TTL is the oldest cached answer a query accepts, default DefaultCacheTTL. The
	// bucket keeps answers at most its own max age (30 days unless the operator chose
	// otherwise), whatever TTL says.
	TTL time.Duration `yaml:"ttl" zero:"refused"`
}

// DefaultCacheTTL is the oldest cached answer a query accepts when cache.ttl is not set.
const DefaultCacheTTL = 7 * 24 * time.Hour

// QuerySpec is one explicit query as written in the configuration.
type QuerySpec struct {
	// Name names the query and prefixes its output columns.
	Name string `yaml:"name"`
	// Template (inline) or TemplateFile (relative to the config file) is the
	// query's Jinja2 template; exactly one is required.
	Template     string `yaml:"template"`
	TemplateFile string `yaml:"template_file"`
	// InputFields are exposed to the template as row.input_1..N.
	InputFields []string `yaml:"input_fields"`
	// OutputFields overrides the pipeline's default output fields.
	OutputFields OutputFields `yaml:"output_fields"`
	// MaxCompletionTokens overrides llm.max_completion_tokens when > 0.
	MaxCompletionTokens int `yaml:"max_completion_tokens"`
}

// CaseStudy is the outer loop of the matrix form. Keys other than name and
// input_fields are kept in Extra and visible to templates as row.case_study.<key>.
type CaseStudy struct {
	Name string
	// InputFields name the row columns exposed as row.input_1..N.
	InputFields []string
	Extra       map[string]any
}

// UnmarshalYAML decodes a case study mapping, keeping unknown keys in Extra.
func (c *CaseStudy) UnmarshalYAML(n *yaml.Node) error {
	extra, err := decodeOpen(n, "case study", map[string]any{"name": &c.Name, "input_fields": &c.InputFields})
	c.Extra = extra
	return err
}

// Criterion is the inner loop of the matrix form. Keys other than name are kept in
// Extra and visible to templates as row.criterion.<key>.
type Criterion struct {
	Name  string
	Extra map[string]any
}

// UnmarshalYAML decodes a criterion mapping, keeping unknown keys in Extra.
func (c *Criterion) UnmarshalYAML(n *yaml.Node) error {
	extra, err := decodeOpen(n, "criterion", map[string]any{"name": &c.Name})
	c.Extra = extra
	return err
}

// decodeOpen decodes the known keys of mapping n into their targets and returns
// the others.
func decodeOpen(n *yaml.Node, what string, known map[string]any) (map[string]any, error) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: %s must be a mapping", n.Line, what)
	}
	var extra map[string]any
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if target, ok := known[k.Value]; ok {
			if err := v.Decode(target); err != nil {
				return nil, fmt.Errorf("%s %s: %w", what, k.Value, err)
			}
			continue
		}
		var val any
		if err := v.Decode(&val); err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, k.Value, err)
		}
		if extra == nil {
			extra = map[string]any{}
		}
		extra[k.Value] = normalize(val)
	}
	return extra, nil
}

// OutputField is one field of the JSON answer mapped to an output column.
type OutputField struct {
	// Field is the JSON field name.
	Field string
	// Suffix names the column <query>_<suffix>; default Field.
	Suffix string
	// Type is string, integer, number, boolean or enum.
	Type string
	// Values are the allowed values of an enum.
	Values []string
}

// OutputFields is an ordered list of output fields, written in YAML as a mapping
// from JSON field name to {type, suffix, values} (or just the type:
// `score: integer`). The mapping's order is kept: it orders the columns, the
// format instruction and the schema.
type OutputFields []OutputField

// outputFieldSpec is the YAML shape of one output field's value.
type outputFieldSpec struct {
	Type   string   `yaml:"type"`
	Suffix string   `yaml:"suffix"`
	Values []string `yaml:"values"`
}

// UnmarshalYAML decodes a mapping node, preserving its order.
func (o *OutputFields) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: output_fields must be a mapping of JSON field name to {type, suffix, values}", n.Line)
	}
	fields := make(OutputFields, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f := OutputField{Field: k.Value}
		switch {
		case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null":
		case v.Kind == yaml.ScalarNode:
			f.Type = v.Value // Shorthand: `score: integer`.
		default:
			var spec outputFieldSpec
			if err := v.Decode(&spec); err != nil {
				return fmt.Errorf("output field %q: %w", k.Value, err)
			}
			f.Type, f.Suffix, f.Values = spec.Type, spec.Suffix, spec.Values
		}
		fields = append(fields, f)
	}
	*o = fields
	return nil
}

// LoadPipeline reads, expands, parses, defaults, validates and compiles the
// pipeline configuration at path. Template and lookup files are resolved against
// path's directory.
func LoadPipeline(path string) (*Pipeline, error) {
	return loadFile(path, "pipeline", ParsePipeline)
}

// loadFile reads the configuration file at path and parses it with parse, which
// resolves relative paths against path's directory; errors name the kind of
// configuration and the file.
func loadFile[T any](path, kind string, parse func(data []byte, baseDir string) (T, error)) (T, error) {
	var zero T
	data, err := os.ReadFile(path)
	if err != nil {
		return zero, fmt.Errorf("read %s config: %w", kind, err)
	}
	v, err := parse(data, filepath.Dir(path))
	if err != nil {
		return zero, fmt.Errorf("%s config %s: %w", kind, path, err)
	}
	return v, nil
}

// ParsePipeline parses, defaults, validates and compiles a pipeline
// configuration. baseDir resolves template_file and lookup_file.
func ParsePipeline(data []byte, baseDir string) (*Pipeline, error) {
	return parsePipeline(data, baseDir, os.LookupEnv)
}

func parsePipeline(data []byte, baseDir string, lookupEnv func(string) (string, bool)) (*Pipeline, error) {
	var p Pipeline
	if err := decodeYAML(data, &p, lookupEnv); err != nil {
		return nil, err
	}
	p.baseDir = baseDir
	p.Lookup, _ = normalize(p.Lookup).(map[string]any)
	if p.LookupFile != "" && p.Lookup == nil {
		lookup, err := readLookup(p.path(p.LookupFile))
		if err != nil {
			return nil, fmt.Errorf("lookup_file: %w", err)
		}
		p.Lookup, p.lookupLoaded = lookup, true
	}
	p.setDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

func readLookup(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m, _ = normalize(m).(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	return m, nil
}

// path resolves a file named in the configuration.
func (p *Pipeline) path(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(p.baseDir, name)
}

func (p *Pipeline) setDefaults() {
	p.LLM.setPoolDefaults()
	setZero(&p.ResponseFormat, wire.FormatStandard)
	setZero(&p.MaxCapacityRetrySeconds, DefaultMaxCapacityRetrySeconds)
	setZero(&p.MaxAttempts, DefaultMaxAttempts)
	if p.MaxAnswerRetries == nil {
		n := DefaultMaxAnswerRetries
		p.MaxAnswerRetries = &n
	}
	setZero(&p.Order, wire.OrderInput)
	setZero(&p.Cache.TTL, DefaultCacheTTL)
	if p.AppendFormatInstructions == nil {
		t := true
		p.AppendFormatInstructions = &t
	}
	p.OutputFields.setDefaults()
	for i := range p.QuerySpecs {
		p.QuerySpecs[i].OutputFields.setDefaults()
	}
}

func (o OutputFields) setDefaults() {
	for i := range o {
		setZero(&o[i].Suffix, o[i].Field)
	}
}

// MaxCapacityRetry returns the capacity-retry budget as a duration.
func (p *Pipeline) MaxCapacityRetry() time.Duration {
	return time.Duration(p.MaxCapacityRetrySeconds) * time.Second
}

// AnswerRetries returns max_answer_retries (its default when unset).
func (p *Pipeline) AnswerRetries() int {
	if p.MaxAnswerRetries == nil {
		return DefaultMaxAnswerRetries
	}
	return *p.MaxAnswerRetries
}

// appendFormat reports whether format instructions are appended (default true).
func (p *Pipeline) appendFormat() bool {
	return p.AppendFormatInstructions == nil || *p.AppendFormatInstructions
}
