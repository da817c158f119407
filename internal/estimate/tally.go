package estimate

import (
	"fmt"
	"io"
	"strings"

	"github.com/multiquery/multiquery/internal/wire"
)

// Prices are a model's prices in dollars per 1000 tokens (the pipeline's `cost`).
type Prices struct {
	PromptPer1K, CompletionPer1K float64
}

// Set reports whether any price is set.
func (p Prices) Set() bool { return p.PromptPer1K > 0 || p.CompletionPer1K > 0 }

// MaxErrorsShown bounds the error rows a Tally keeps to show.
const MaxErrorsShown = 10

// Tally adds up a dry run: rows, queries, the tokens of each model, and the first error
// rows (records that cannot be read or rendered).
type Tally struct {
	Rows, RowErrors, Queries int
	// Models are in the order they first appear.
	Models []*ModelTally
	// Errors are the first MaxErrorsShown error rows.
	Errors []wire.Row

	byModel map[string]*ModelTally
	tok     map[string]*Tokenizer
}

// ModelTally is what the queries of one model add up to.
type ModelTally struct {
	Model string
	// Encoding is the BPE encoding that counted PromptTokens; "" when they are an
	// estimate (CharsPerToken).
	Encoding     string
	Queries      int
	PromptTokens int64
	// MaxCompletionTokens adds up max_completion_tokens of the queries that set it;
	// Unbounded counts those that do not.
	MaxCompletionTokens int64
	Unbounded           int
}

// NewTally returns an empty tally.
func NewTally() *Tally {
	return &Tally{byModel: map[string]*ModelTally{}, tok: map[string]*Tokenizer{}}
}

// Add counts one planned row: its jobs, or its error when it is an error row.
func (t *Tally) Add(row wire.Row, jobs []wire.Job) {
	t.Rows++
	if row.Error != nil {
		t.RowErrors++
		if len(t.Errors) < MaxErrorsShown {
			t.Errors = append(t.Errors, row)
		}
		return
	}
	for _, j := range jobs {
		t.Queries++
		model := j.Request.Model
		m, ok := t.byModel[model]
		if !ok {
			tok := ForModel(model)
			t.tok[model] = tok
			m = &ModelTally{Model: model, Encoding: tok.Encoding()}
			t.byModel[model] = m
			t.Models = append(t.Models, m)
		}
		m.Queries++
		m.PromptTokens += int64(t.tok[model].Chat(j.Request.Messages))
		if j.Request.MaxCompletionTokens > 0 {
			m.MaxCompletionTokens += int64(j.Request.MaxCompletionTokens)
		} else {
			m.Unbounded++
		}
	}
}

// PromptTokens is the prompt tokens of every model.
func (t *Tally) PromptTokens() int64 {
	var n int64
	for _, m := range t.Models {
		n += m.PromptTokens
	}
	return n
}

// Cost is what the model's prompts cost, and at most its completions, at prices p.
func (m *ModelTally) Cost(p Prices) (prompt, completion float64) {
	return float64(m.PromptTokens) / 1000 * p.PromptPer1K, float64(m.MaxCompletionTokens) / 1000 * p.CompletionPer1K
}

// Write prints the tally for a person: rows, queries, prompt tokens and how they were
// counted, the completion tokens allowed, the estimated cost at prices p (the one price
// list of the pipeline, for each of its models), and the first error rows.
func (t *Tally) Write(w io.Writer, p Prices) error {
	var b strings.Builder
	fmt.Fprintf(&b, "rows:                  %d (%d would be error rows)\n", t.Rows, t.RowErrors)
	perRow := ""
	if ok := t.Rows - t.RowErrors; ok > 0 && t.Queries%ok == 0 {
		perRow = fmt.Sprintf(" (%d per row)", t.Queries/ok)
	}
	fmt.Fprintf(&b, "queries:               %d%s\n", t.Queries, perRow)
	var totalPrompt, totalCompletion float64
	unbounded := 0
	for _, m := range t.Models {
		how := "estimated at " + fmt.Sprint(CharsPerToken) + " characters a token: no tokenizer is known for this model"
		approx := "~"
		if m.Encoding != "" {
			how, approx = "tokenizer "+m.Encoding+", with OpenAI's chat overhead of 3 tokens a message and 3 a request", ""
		}
		fmt.Fprintf(&b, "prompt tokens:         %s%d (model %s: %s)\n", approx, m.PromptTokens, m.Model, how)
		line := fmt.Sprintf("%d (max_completion_tokens of %d queries)", m.MaxCompletionTokens, m.Queries-m.Unbounded)
		if m.Unbounded > 0 {
			line += fmt.Sprintf("; unbounded for %d queries without max_completion_tokens", m.Unbounded)
		}
		fmt.Fprintf(&b, "max completion tokens: %s\n", line)
		pr, co := m.Cost(p)
		totalPrompt += pr
		totalCompletion += co
		unbounded += m.Unbounded
	}
	switch {
	case !p.Set():
		b.WriteString("estimated cost:        unknown (set cost.prompt_per_1k and cost.completion_per_1k in the pipeline config)\n")
	case unbounded > 0:
		fmt.Fprintf(&b, "estimated cost:        $%.4f prompts + completions unbounded (set max_completion_tokens to bound them)\n", totalPrompt)
	default:
		fmt.Fprintf(&b, "estimated cost:        $%.4f prompts + at most $%.4f completions = at most $%.4f\n", totalPrompt, totalCompletion, totalPrompt+totalCompletion)
	}
	for _, r := range t.Errors {
		fmt.Fprintf(&b, "error row %d: %s: %s\n", r.Row, r.Error.Reason, r.Error.Message)
	}
	if more := t.RowErrors - len(t.Errors); more > 0 {
		fmt.Fprintf(&b, "... and %d more error rows\n", more)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
