package config

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/prompt"
	"github.com/multiquery/multiquery/internal/wire"
)

// ErrorColumn is the output column of error rows.
const ErrorColumn = "_error"

// Reserved suffixes: every query also has the columns <query>_usage and
// <query>_model, <query>_cached when the pipeline's cache is enabled, and
// <query>_deployment (the member that answered) for a query of a deployment pool; each
// is reserved always, so that turning the cache on or using a pool never makes a
// column collide.
const (
	SuffixUsage      = "usage"
	SuffixModel      = "model"
	SuffixCached     = "cached"
	SuffixDeployment = "deployment"
)

var fieldRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// problems collects validation errors, each prefixed with its field path.
type problems []error

func (ps *problems) add(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	*ps = append(*ps, errors.New(msg))
}

// Validate checks the pipeline, reads and compiles its templates and resolves its
// queries. It returns every problem joined (errors.Join), each naming its field
// path. On success Queries, OutputColumns and Hash reflect the pipeline.
// ParsePipeline applies the defaults before validating; a Pipeline built in Go
// must set them itself.
func (p *Pipeline) Validate() error {
	p.queries, p.hash = nil, ""
	var ps problems
	p.validateScalars(&ps)

	var system *prompt.Template
	if p.SystemPrompt != "" {
		t, err := prompt.Compile("system_prompt", p.SystemPrompt)
		if err != nil {
			ps.add("system_prompt", "%v", err)
		}
		system = t
	}

	if errs := p.OutputFields.problems("output_fields"); len(errs) > 0 {
		ps = append(ps, errs...)
	}

	var qs []resolvedQuery
	matrix := len(p.CaseStudies) > 0 || len(p.Criteria) > 0
	switch {
	case len(p.QuerySpecs) > 0 && matrix:
		ps.add("queries", "mutually exclusive with case_studies and criteria")
	case len(p.QuerySpecs) > 0:
		qs = p.resolveExplicit(&ps)
	case matrix:
		qs = p.resolveMatrix(&ps)
	default:
		ps.add("queries", "required (or case_studies, criteria and template)")
	}

	p.checkColumns(qs, &ps)
	p.checkJSONMention(qs, system, &ps)

	if len(ps) > 0 {
		return errors.Join(ps...)
	}
	queries := make([]Query, len(qs))
	for i, rq := range qs {
		q := rq.q
		q.Index = i
		q.system = system
		q.appendFormat = p.appendFormat()
		queries[i] = q
	}
	p.queries = queries
	p.hash = p.computeHash()
	return nil
}

func (p *Pipeline) validateScalars(ps *problems) {
	p.LLM.validateDeployments(ps)
	if p.LLM.Model == "" {
		ps.add("llm.model", "required")
	}
	if t := p.LLM.Temperature; t != nil && !(*t >= 0 && *t <= 2) {
		ps.add("llm.temperature", "must be in [0,2], got %v", *t)
	}
	if p.LLM.MaxCompletionTokens < 0 {
		ps.add("llm.max_completion_tokens", "must be >= 0, got %d", p.LLM.MaxCompletionTokens)
	}
	if p.ResponseFormat != wire.FormatStandard && p.ResponseFormat != wire.FormatStructured {
		ps.add("response_format", "must be %q or %q, got %q", wire.FormatStandard, wire.FormatStructured, p.ResponseFormat)
	}
	if p.MaxCapacityRetrySeconds <= 0 {
		ps.add("max_capacity_retry_seconds", "must be > 0, got %d", p.MaxCapacityRetrySeconds)
	}
	if p.MaxAttempts < 1 {
		ps.add("max_attempts", "must be >= 1, got %d", p.MaxAttempts)
	}
	if p.Cache.TTL < 0 || (p.Cache.Enabled && p.Cache.TTL < time.Second) {
		ps.add("cache.ttl", "must be at least 1s, got %s", p.Cache.TTL)
	}
	if n := p.AnswerRetries(); n < 0 || n > MaxAnswerRetriesLimit {
		ps.add("max_answer_retries", "must be in [0,%d], got %d", MaxAnswerRetriesLimit, n)
	}
	if p.Order != wire.OrderInput && p.Order != wire.OrderCompletion {
		ps.add("order", "must be %q or %q, got %q", wire.OrderInput, wire.OrderCompletion, p.Order)
	}
	if p.LookupFile != "" && p.Lookup != nil && !p.lookupLoaded {
		ps.add("lookup_file", "mutually exclusive with lookup")
	}
	if !(p.Cost.PromptPer1K >= 0) {
		ps.add("cost.prompt_per_1k", "must be >= 0, got %v", p.Cost.PromptPer1K)
	}
	if !(p.Cost.CompletionPer1K >= 0) {
		ps.add("cost.completion_per_1k", "must be >= 0, got %v", p.Cost.CompletionPer1K)
	}
}

// problems checks one set of output fields; path is where it is written.
func (o OutputFields) problems(path string) []error {
	var ps problems
	fields := map[string]bool{}
	suffixes := map[string]string{} // suffix -> field that uses it
	for _, f := range o {
		fp := path + "." + f.Field
		switch {
		case f.Field == "":
			ps.add(path, "empty field name")
		case !fieldRE.MatchString(f.Field):
			ps.add(fp, "field name must match %s", fieldRE)
		case fields[f.Field]:
			ps.add(fp, "duplicate field %q", f.Field)
		}
		fields[f.Field] = true

		suffix := cmp.Or(f.Suffix, f.Field)
		switch {
		case !fieldRE.MatchString(suffix):
			ps.add(fp+".suffix", "must match %s, got %q", fieldRE, suffix)
		case suffix == SuffixUsage || suffix == SuffixModel || suffix == SuffixCached || suffix == SuffixDeployment:
			ps.add(fp+".suffix", "%q is reserved (every query has <query>_usage and <query>_model columns, <query>_cached with the cache on and <query>_deployment with a pool)", suffix)
		case suffixes[suffix] != "" && suffixes[suffix] != f.Field:
			ps.add(fp+".suffix", "duplicate suffix %q (also used by %s.%s)", suffix, path, suffixes[suffix])
		}
		if suffixes[suffix] == "" {
			suffixes[suffix] = f.Field
		}

		switch f.Type {
		case wire.TypeString, wire.TypeInteger, wire.TypeNumber, wire.TypeBoolean:
			if len(f.Values) > 0 {
				ps.add(fp+".values", "only allowed with type enum")
			}
		case wire.TypeEnum:
			if len(f.Values) == 0 {
				ps.add(fp+".values", "enum needs at least one value")
			}
			seen := map[string]bool{}
			for _, v := range f.Values {
				if seen[v] {
					ps.add(fp+".values", "duplicate value %q", v)
				}
				seen[v] = true
			}
		case "":
			ps.add(fp+".type", "required (string, integer, number, boolean or enum)")
		default:
			ps.add(fp+".type", "unknown type %q (want string, integer, number, boolean or enum)", f.Type)
		}
	}
	return ps
}

// resolvedQuery is a query under construction, with where it was defined.
type resolvedQuery struct {
	q          Query
	path       string // field path of its definition, e.g. "queries[2]"
	outputPath string // field path of its output fields
	tmplPath   string // field path of its template
	tmplSrc    string
}

func (p *Pipeline) resolveExplicit(ps *problems) []resolvedQuery {
	if p.Template != "" || p.TemplateFile != "" {
		ps.add("template", "only used with case_studies and criteria (queries have their own template)")
	}
	names := map[string]int{}
	var qs []resolvedQuery
	for i, s := range p.QuerySpecs {
		path := fmt.Sprintf("queries[%d]", i)
		ok := checkName(ps, path+".name", s.Name, "query")
		if j, dup := names[s.Name]; dup && s.Name != "" {
			ps.add(path+".name", "duplicate query name %q (also queries[%d])", s.Name, j)
			ok = false
		} else {
			names[s.Name] = i
		}
		for j, f := range s.InputFields {
			if f == "" {
				ps.add(fmt.Sprintf("%s.input_fields[%d]", path, j), "empty")
			}
		}
		if s.MaxCompletionTokens < 0 {
			ps.add(path+".max_completion_tokens", "must be >= 0, got %d", s.MaxCompletionTokens)
		}

		outputs, outPath := s.OutputFields, path+".output_fields"
		if len(outputs) > 0 {
			*ps = append(*ps, outputs.problems(outPath)...)
		} else {
			outputs, outPath = p.OutputFields, "output_fields"
			if len(outputs) == 0 {
				ps.add(path+".output_fields", "at least one output field required (here or in the top-level output_fields)")
			}
		}

		tmplPath, src, tmpl := p.compileTemplate(ps, path, s.Name, s.Template, s.TemplateFile)
		if !ok {
			continue
		}
		q := p.newQuery(s.Name, s.InputFields, outputs)
		q.MaxCompletionTokens = cmp.Or(s.MaxCompletionTokens, p.LLM.MaxCompletionTokens)
		q.user = tmpl
		qs = append(qs, resolvedQuery{q: q, path: path, outputPath: outPath, tmplPath: tmplPath, tmplSrc: src})
	}
	return qs
}

func (p *Pipeline) resolveMatrix(ps *problems) []resolvedQuery {
	if len(p.CaseStudies) == 0 {
		ps.add("case_studies", "required with criteria")
	}
	if len(p.Criteria) == 0 {
		ps.add("criteria", "required with case_studies")
	}
	if len(p.OutputFields) == 0 {
		ps.add("output_fields", "at least one output field required")
	}
	tmplPath, src, tmpl := p.compileTemplate(ps, "", "template", p.Template, p.TemplateFile)

	csOK := make([]bool, len(p.CaseStudies))
	seen := map[string]int{}
	for i, cs := range p.CaseStudies {
		path := fmt.Sprintf("case_studies[%d]", i)
		csOK[i] = checkUniqueName(ps, seen, "case_studies", i, cs.Name, "case study")
		if len(cs.InputFields) == 0 {
			ps.add(path+".input_fields", "empty")
		}
		for j, f := range cs.InputFields {
			if f == "" {
				ps.add(fmt.Sprintf("%s.input_fields[%d]", path, j), "empty")
			}
		}
	}
	crOK := make([]bool, len(p.Criteria))
	seen = map[string]int{}
	for i, cr := range p.Criteria {
		crOK[i] = checkUniqueName(ps, seen, "criteria", i, cr.Name, "criterion")
	}

	// Case study outer, criterion inner.
	var qs []resolvedQuery
	names := map[string]string{}
	for i, cs := range p.CaseStudies {
		for j, cr := range p.Criteria {
			if !csOK[i] || !crOK[j] {
				continue
			}
			name := cs.Name + "_" + cr.Name
			path := fmt.Sprintf("case_studies[%d] x criteria[%d]", i, j)
			if other, dup := names[name]; dup {
				// a_b x c and a x b_c both name a_b_c.
				ps.add(fmt.Sprintf("case_studies[%d].name", i), "query name %q (with criteria[%d]) duplicates the query of %s", name, j, other)
				continue
			}
			names[name] = path
			q := p.newQuery(name, cs.InputFields, p.OutputFields)
			q.MaxCompletionTokens = p.LLM.MaxCompletionTokens
			q.CaseStudy = entryMap(cs.Name, cs.Extra)
			q.CaseStudy["input_fields"] = slices.Clone(cs.InputFields)
			q.Criterion = entryMap(cr.Name, cr.Extra)
			q.user = tmpl
			qs = append(qs, resolvedQuery{q: q, path: path, outputPath: "output_fields", tmplPath: tmplPath, tmplSrc: src})
		}
	}
	return qs
}

func entryMap(name string, extra map[string]any) map[string]any {
	m := make(map[string]any, len(extra)+2)
	maps.Copy(m, extra)
	m["name"] = name
	return m
}

func (p *Pipeline) newQuery(name string, inputFields []string, outputs OutputFields) Query {
	q := Query{
		Name:           name,
		Deployment:     p.LLM.target(),
		Pool:           p.LLM.poolMembers(),
		Model:          p.LLM.Model,
		Temperature:    p.LLM.Temperature,
		ResponseFormat: p.ResponseFormat,
		InputFields:    slices.Clone(inputFields),
		Outputs:        make([]Output, len(outputs)),
	}
	for i, f := range outputs {
		suffix := cmp.Or(f.Suffix, f.Field)
		q.Outputs[i] = Output{
			Field:  f.Field,
			Suffix: suffix,
			Column: name + "_" + suffix,
			Type:   f.Type,
			Values: slices.Clone(f.Values),
		}
	}
	return q
}

// compileTemplate reads (from file) and compiles the template of a query (path
// "queries[i]") or of the matrix (path ""). It returns the template's field path,
// its source and the compiled template (nil on error, reported to ps).
func (p *Pipeline) compileTemplate(ps *problems, path, queryName, inline, file string) (string, string, *prompt.Template) {
	field := func(f string) string {
		if path == "" {
			return f
		}
		return path + "." + f
	}
	var src, tmplPath, name string
	switch {
	case inline != "" && file != "":
		ps.add(field("template"), "mutually exclusive with template_file")
		return field("template"), "", nil
	case inline != "":
		src, tmplPath, name = inline, field("template"), cmp.Or(queryName, field("template"))
	case file != "":
		tmplPath, name = field("template_file"), file
		data, err := os.ReadFile(p.path(file))
		if err != nil {
			ps.add(tmplPath, "read template %q: %v", file, err)
			return tmplPath, "", nil
		}
		src = string(data)
	default:
		ps.add(field("template"), "required (or template_file)")
		return field("template"), "", nil
	}
	t, err := prompt.Compile(name, src)
	if err != nil {
		if path != "" && queryName != "" {
			ps.add(tmplPath, "query %q: %v", queryName, err)
		} else {
			ps.add(tmplPath, "%v", err)
		}
		return tmplPath, src, nil
	}
	return tmplPath, src, t
}

func checkName(ps *problems, path, name, what string) bool {
	switch {
	case name == "":
		ps.add(path, "required")
	case !nameRE.MatchString(name):
		ps.add(path, "%s name must match %s (it becomes a NATS subject token), got %q", what, nameRE, name)
	default:
		return true
	}
	return false
}

// checkUniqueName checks the name of item i of the list key (checkName) and that no
// earlier item has it; seen maps the names so far to their items.
func checkUniqueName(ps *problems, seen map[string]int, key string, i int, name, what string) bool {
	path := fmt.Sprintf("%s[%d].name", key, i)
	ok := checkName(ps, path, name, what)
	if j, dup := seen[name]; dup && name != "" {
		ps.add(path, "duplicate %s name %q (also %s[%d])", what, name, key, j)
		return false
	}
	seen[name] = i
	return ok
}

// checkColumns reports output columns produced by two different queries,
// including <a_b>_<c> vs <a>_<b_c>.
func (p *Pipeline) checkColumns(qs []resolvedQuery, ps *problems) {
	owner := map[string]string{} // column -> query name
	for _, rq := range qs {
		for _, col := range p.queryColumns(rq.q) {
			other, taken := owner[col]
			switch {
			case !taken:
				owner[col] = rq.q.Name
			case other != rq.q.Name:
				ps.add(rq.outputPath, "column %q of query %q collides with the same column of query %q", col, rq.q.Name, other)
			}
		}
	}
}

// checkJSONMention enforces OpenAI's rule for json_object mode: some message must
// contain the word "json". The format instruction does; without it the system
// prompt or the template must.
func (p *Pipeline) checkJSONMention(qs []resolvedQuery, system *prompt.Template, ps *problems) {
	if p.ResponseFormat != wire.FormatStandard || p.appendFormat() {
		return
	}
	if system != nil && mentionsJSON(p.SystemPrompt) {
		return
	}
	reported := map[string]bool{}
	for _, rq := range qs {
		if mentionsJSON(rq.tmplSrc) || reported[rq.tmplPath] {
			continue
		}
		reported[rq.tmplPath] = true
		ps.add(rq.tmplPath, `response_format %q needs the word "json" in the system prompt or the template, or append_format_instructions: true (OpenAI rejects json_object requests without it)`, wire.FormatStandard)
	}
}

func mentionsJSON(s string) bool {
	return strings.Contains(strings.ToLower(s), "json")
}

func (p *Pipeline) queryColumns(q Query) []string {
	cols := make([]string, 0, len(q.Outputs)+3)
	for _, o := range q.Outputs {
		cols = append(cols, o.Column)
	}
	cols = append(cols, q.Name+"_"+SuffixUsage, q.Name+"_"+SuffixModel)
	if p.Cache.Enabled {
		cols = append(cols, q.Name+"_"+SuffixCached)
	}
	if q.Pool != nil {
		cols = append(cols, q.Name+"_"+SuffixDeployment)
	}
	return cols
}

// Queries returns the resolved, compiled queries in order: the explicit order, or
// case studies outer x criteria inner. It is empty until the pipeline validates.
func (p *Pipeline) Queries() []Query {
	return slices.Clone(p.queries)
}

// QueryCount is len(Queries()) without the copy: M, the queries of every row.
func (p *Pipeline) QueryCount() int { return len(p.queries) }

// OutputColumns returns every output column in order: for each query its
// <query>_<suffix> columns, then <query>_usage and <query>_model (then <query>_cached
// with the cache on, and <query>_deployment for a query of a pool).
func (p *Pipeline) OutputColumns() []string {
	var cols []string
	for _, q := range p.queries {
		cols = append(cols, p.queryColumns(q)...)
	}
	return cols
}

// ColumnError is an input column that an output would overwrite.
type ColumnError struct {
	Column string // the input column
	Query  string // the query whose output column it is; empty for "_error"
}

// Error says what the column collides with.
func (e *ColumnError) Error() string {
	if e.Query == "" {
		return fmt.Sprintf("input column %q: reserved for error rows", e.Column)
	}
	return fmt.Sprintf("input column %q: collides with an output column of query %q", e.Column, e.Query)
}

// CheckInputColumns reports input columns that an output would overwrite: an
// output column or "_error". The error names every such column, each a *ColumnError
// (errors.As finds the first).
func (p *Pipeline) CheckInputColumns(cols []string) error {
	owner := map[string]string{}
	for _, q := range p.queries {
		for _, c := range p.queryColumns(q) {
			owner[c] = q.Name
		}
	}
	var errs []error
	for _, c := range cols {
		if c == ErrorColumn {
			errs = append(errs, &ColumnError{Column: c})
		} else if q, ok := owner[c]; ok {
			errs = append(errs, &ColumnError{Column: c, Query: q})
		}
	}
	return errors.Join(errs...)
}

// Hash returns the hex SHA-256 of a canonical form of the resolved pipeline: what
// determines the output rows (queries, template texts, model parameters, response
// format, outputs, format instructions, lookup, order, whether the cache is on: it adds
// a column). Operational settings (retry budgets, cost, the cache's ttl) are left out. It is empty until the pipeline validates.
func (p *Pipeline) Hash() string {
	return p.hash
}

func (p *Pipeline) computeHash() string {
	type hq struct {
		Name                string            `json:"name"`
		Deployment          string            `json:"deployment"`
		Pool                []wire.PoolMember `json:"pool,omitempty"`
		Model               string            `json:"model"`
		Temperature         *float64          `json:"temperature"`
		MaxCompletionTokens int               `json:"max_completion_tokens"`
		ResponseFormat      string            `json:"response_format"`
		InputFields         []string          `json:"input_fields"`
		CaseStudy           map[string]any    `json:"case_study"`
		Criterion           map[string]any    `json:"criterion"`
		Outputs             []Output          `json:"outputs"`
		System              string            `json:"system"`
		Template            string            `json:"template"`
		AppendFormat        bool              `json:"append_format"`
	}
	form := struct {
		Version int            `json:"version"`
		Order   string         `json:"order"`
		Queries []hq           `json:"queries"`
		Lookup  map[string]any `json:"lookup"`
		Cache   bool           `json:"cache,omitempty"` // omitted when off: hashes of before the cache stay
	}{Version: 1, Order: p.Order, Lookup: p.Lookup, Cache: p.Cache.Enabled}
	for _, q := range p.queries {
		h := hq{
			Name: q.Name, Deployment: q.Deployment, Pool: q.Pool, Model: q.Model, Temperature: q.Temperature,
			MaxCompletionTokens: q.MaxCompletionTokens, ResponseFormat: q.ResponseFormat,
			InputFields: q.InputFields, CaseStudy: q.CaseStudy, Criterion: q.Criterion,
			Outputs: q.Outputs, Template: q.user.Source(), AppendFormat: q.appendFormat,
		}
		if q.system != nil {
			h.System = q.system.Source()
		}
		form.Queries = append(form.Queries, h)
	}
	// encoding/json sorts map keys, which makes the form canonical.
	b, err := json.Marshal(form)
	if err != nil {
		// Lookup values come from YAML and always marshal once normalized; hash
		// the error text rather than fail.
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
