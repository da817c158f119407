package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/multiquery/multiquery/internal/prompt"
	"github.com/multiquery/multiquery/internal/wire"
)

// Query is one resolved query of a pipeline: what to send for every row and how to
// map the answer to columns.
type Query struct {
	// Index is the query's position in Pipeline.Queries.
	Index int
	// Name names the query and prefixes its columns.
	Name string

	Deployment string
	// Pool lists the members when Deployment names a deployment pool (nil otherwise).
	Pool  []wire.PoolMember
	Model string
	// Temperature is nil when unset.
	Temperature *float64
	// MaxCompletionTokens is 0 when unset.
	MaxCompletionTokens int
	// ResponseFormat is "standard" or "structured".
	ResponseFormat string
	// InputFields are the row columns exposed as row.input_1..N.
	InputFields []string
	// CaseStudy and Criterion are the matrix entries (name, input_fields and extra
	// keys); nil for explicit queries.
	CaseStudy map[string]any
	Criterion map[string]any
	// Outputs are the mapped fields, in order.
	Outputs []Output

	system       *prompt.Template // nil without a system prompt
	user         *prompt.Template
	appendFormat bool
}

// Output is one resolved output field of a query.
type Output struct {
	// Field is the JSON field name in the answer.
	Field string `json:"field"`
	// Suffix and Column: the column is <query>_<suffix>.
	Suffix string `json:"suffix"`
	Column string `json:"column"`
	// Type is string, integer, number, boolean or enum.
	Type string `json:"type"`
	// Values are the allowed values of an enum.
	Values []string `json:"values,omitempty"`
}

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ErrMissingField is the cause of a RenderError for an input field the row lacks.
var ErrMissingField = errors.New("not in the input row")

// RenderError reports a row a query cannot be rendered for: an input field the
// row lacks, an undefined template variable, or another template failure.
type RenderError struct {
	// Query is the query's name.
	Query string
	// Field is the missing input column, or the undefined template reference as
	// written (e.g. "row.title"); empty for other failures.
	Field string
	// Err is ErrMissingField, a *prompt.UndefinedError, or the template's error.
	Err error
}

func (e *RenderError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("query %q: render: %v", e.Query, e.Err)
	}
	return fmt.Sprintf("query %q: missing field %q: %v", e.Query, e.Field, e.Err)
}

func (e *RenderError) Unwrap() error { return e.Err }

// Render renders the query's messages for one row: a system message when a system
// prompt is set or format instructions are appended, then the user message.
//
// Templates see `row` (the row's fields, plus input_1..N, case_study and
// criterion for matrix queries, and source_row, the whole row; these names win
// over row columns of the same name) and `lookup`.
func (q Query) Render(row map[string]any, lookup map[string]any) ([]Message, error) {
	row = templateRow(row)
	r := make(map[string]any, len(row)+len(q.InputFields)+3)
	maps.Copy(r, row)
	for i, f := range q.InputFields {
		v, ok := row[f]
		if !ok {
			return nil, &RenderError{Query: q.Name, Field: f, Err: ErrMissingField}
		}
		r["input_"+strconv.Itoa(i+1)] = v
	}
	if q.CaseStudy != nil {
		r["case_study"] = q.CaseStudy
	}
	if q.Criterion != nil {
		r["criterion"] = q.Criterion
	}
	r["source_row"] = row
	ctx := map[string]any{"row": r, "lookup": lookup}

	msgs := make([]Message, 0, 2)
	var system string
	if q.system != nil {
		s, err := q.system.Render(ctx)
		if err != nil {
			return nil, q.renderError(err)
		}
		system = s
	}
	if q.appendFormat {
		if system != "" && !strings.HasSuffix(system, "\n") {
			system += "\n"
		}
		system += q.FormatInstruction()
	}
	if q.system != nil || q.appendFormat {
		msgs = append(msgs, Message{Role: "system", Content: system})
	}
	if q.user == nil {
		return nil, &RenderError{Query: q.Name, Err: errors.New("query has no compiled template (use Pipeline.Queries)")}
	}
	user, err := q.user.Render(ctx)
	if err != nil {
		return nil, q.renderError(err)
	}
	return append(msgs, Message{Role: "user", Content: user}), nil
}

// templateRow returns row as templates see it: a JSONL number (json.Number, kept as
// its text for the output row) becomes an int64 when it is an integer that fits, else a
// float64, at any depth, so that `row.amount > 10`, `row.amount * 2` and `is number`
// work as in Jinja over parsed JSON. A number too large for a float64 stays its text.
// row is not changed; it is returned as it is when it holds no number.
func templateRow(row map[string]any) map[string]any {
	if !holdsNumber(row) {
		return row
	}
	return templateValue(row).(map[string]any)
}

func templateValue(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		if f, err := v.Float64(); err == nil {
			return f
		}
		return string(v)
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = templateValue(e)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			s[i] = templateValue(e)
		}
		return s
	}
	return v
}

func holdsNumber(v any) bool {
	switch v := v.(type) {
	case json.Number:
		return true
	case map[string]any:
		for _, e := range v {
			if holdsNumber(e) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if holdsNumber(e) {
				return true
			}
		}
	}
	return false
}

func (q Query) renderError(err error) *RenderError {
	var ue *prompt.UndefinedError
	if errors.As(err, &ue) {
		return &RenderError{Query: q.Name, Field: ue.Var, Err: err}
	}
	return &RenderError{Query: q.Name, Err: err}
}

// formatInstructionPrefix starts every format instruction.
const formatInstructionPrefix = "Respond with a JSON object with these fields: "

// FormatInstruction returns the line appended to the system message when
// append_format_instructions is true: the output fields and their types as a
// compact JSON object in output order, e.g.
//
//	Respond with a JSON object with these fields: {"score":"integer","label":"enum:yes|no"}
func (q Query) FormatInstruction() string {
	var b strings.Builder
	b.WriteString(formatInstructionPrefix)
	b.WriteByte('{')
	for i, o := range q.Outputs {
		if i > 0 {
			b.WriteByte(',')
		}
		t := o.Type
		if t == wire.TypeEnum {
			t += ":" + strings.Join(o.Values, "|")
		}
		b.Write(jsonString(o.Field))
		b.WriteByte(':')
		b.Write(jsonString(t))
	}
	b.WriteByte('}')
	return b.String()
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // A string always marshals.
	return b
}

// JSONSchema returns the strict JSON schema of the answer for structured mode:
// every output field required, no additional properties, an enum as a string
// with its values. Go maps do not keep order: SchemaJSON encodes the properties in
// output order.
func (q Query) JSONSchema() map[string]any {
	props := make(map[string]any, len(q.Outputs))
	required := make([]string, 0, len(q.Outputs))
	for _, o := range q.Outputs {
		props[o.Field] = o.schema()
		required = append(required, o.Field)
	}
	return map[string]any{
		"type":                 "object",
		"properties":           props,
		"required":             required,
		"additionalProperties": false,
	}
}

// SchemaJSON encodes JSONSchema with the properties in output order, which is the
// order a model tends to generate them in.
func (q Query) SchemaJSON() json.RawMessage {
	var props strings.Builder
	props.WriteByte('{')
	required := make([]string, 0, len(q.Outputs))
	for i, o := range q.Outputs {
		if i > 0 {
			props.WriteByte(',')
		}
		s, _ := json.Marshal(o.schema()) // Strings and string slices always marshal.
		props.Write(jsonString(o.Field))
		props.WriteByte(':')
		props.Write(s)
		required = append(required, o.Field)
	}
	props.WriteByte('}')
	req, _ := json.Marshal(required)
	return json.RawMessage(`{"type":"object","properties":` + props.String() + `,"required":` + string(req) + `,"additionalProperties":false}`)
}

func (o Output) schema() map[string]any {
	if o.Type == wire.TypeEnum {
		return map[string]any{"type": "string", "enum": slices.Clone(o.Values)}
	}
	return map[string]any{"type": o.Type}
}
