package config_test

import (
	"errors"
	"fmt"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/wire"
)

// A matrix pipeline: 2 case studies x 3 criteria, a template file, a lookup file
// and ordered output fields.
func ExampleLoadPipeline() {
	p, err := config.LoadPipeline("testdata/pipeline.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, q := range p.Queries() {
		fmt.Println(q.Index, q.Name, q.InputFields)
	}
	fmt.Println(p.OutputColumns()[:5])

	row := map[string]any{
		"student_id":      "s-17",
		"cardio_history":  "54-year-old smoker, chest pain on exertion for 2 weeks.",
		"cardio_findings": "BP 150/90, ECG: ST depression V4-V6.",
		"neuro_history":   "Sudden severe headache.",
		"neuro_findings":  "Neck stiffness.",
	}
	msgs, err := p.Queries()[0].Render(row, p.Lookup)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, m := range msgs {
		fmt.Printf("--- %s\n%s\n", m.Role, m.Content)
	}

	delete(row, "cardio_findings")
	_, err = p.Queries()[0].Render(row, p.Lookup)
	var re *config.RenderError
	if errors.As(err, &re) {
		fmt.Println("---", re.Query, "missing", re.Field)
	}
	// Output:
	// 0 cardio_diagnosis [cardio_history cardio_findings]
	// 1 cardio_workup [cardio_history cardio_findings]
	// 2 cardio_safety [cardio_history cardio_findings]
	// 3 neuro_diagnosis [neuro_history neuro_findings]
	// 4 neuro_workup [neuro_history neuro_findings]
	// 5 neuro_safety [neuro_history neuro_findings]
	// [cardio_diagnosis_why cardio_diagnosis_score cardio_diagnosis_confidence cardio_diagnosis_usage cardio_diagnosis_model]
	// --- system
	// You are a senior clinician grading case write-ups on a scale of 1 to 5.
	// Be strict and brief.
	// Respond with a JSON object with these fields: {"rationale":"string","score":"integer","confidence":"enum:low|medium|high"}
	// --- user
	// Case: a patient presenting with chest pain (student s-17).
	//
	// History:
	// 54-year-old smoker, chest pain on exertion for 2 weeks.
	//
	// Findings:
	// BP 150/90, ECG: ST depression V4-V6.
	//
	// Criterion "diagnosis": Is the working diagnosis supported by the findings?
	// Rubric: 5 = fully supported and differential considered; 1 = unsupported.
	// Grade from 1 to 5.
	// --- cardio_diagnosis missing cardio_findings
}

func ExampleQuery_FormatInstruction() {
	q := config.Query{Outputs: []config.Output{
		{Field: "score", Type: wire.TypeInteger},
		{Field: "label", Type: wire.TypeEnum, Values: []string{"yes", "no"}},
	}}
	fmt.Println(q.FormatInstruction())
	fmt.Println(string(q.SchemaJSON()))
	// Output:
	// Respond with a JSON object with these fields: {"score":"integer","label":"enum:yes|no"}
	// {"type":"object","properties":{"score":{"type":"integer"},"label":{"enum":["yes","no"],"type":"string"}},"required":["score","label"],"additionalProperties":false}
}
