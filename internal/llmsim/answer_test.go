package llmsim

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func userRequest(texts ...string) *chatRequest {
	req := &chatRequest{Model: "m"}
	for _, t := range texts {
		req.Messages = append(req.Messages, chatMessage{Role: "user", Content: messageContent(t)})
	}
	return req
}

func decodeObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("answer %q is not a JSON object: %v", s, err)
	}
	return m
}

// jsonKind names the JSON type of a decoded value, telling integers from
// other numbers.
func jsonKind(v any) string {
	switch v := v.(type) {
	case string:
		return "string"
	case bool:
		return "boolean"
	case float64:
		if v == float64(int64(v)) {
			return "integer"
		}
		return "number"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case nil:
		return "null"
	default:
		return "?"
	}
}

func TestParseFieldList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		text    string
		want    []string // name:kind
		wantErr bool
	}{
		{
			name: "all types in order",
			text: `{"score": "integer", "rationale": "string", "p": "number", "ok": "boolean", "label": "enum:yes|no"} and then more text`,
			want: []string{"score:integer", "rationale:string", "p:number", "ok:boolean", "label:enum"},
		},
		{
			name: "braces inside strings do not end the object",
			text: `  {"a}b": "string", "c": "integer"}}}`,
			want: []string{"a}b:string", "c:integer"},
		},
		{
			name: "unknown type is a string",
			text: `{"x": "date"}`,
			want: []string{"x:string"},
		},
		{name: "unterminated", text: `{"x": "string"`, wantErr: true},
		{name: "not an object", text: `["x"]`, wantErr: true},
		{name: "type not a string", text: `{"x": 3}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sh, err := parseFieldList(tt.text)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			var got []string
			for _, f := range sh.fields {
				got = append(got, f.name+":"+f.shape.kind)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAnswerFollowsFieldsPhrase(t *testing.T) {
	t.Parallel()
	req := userRequest(
		"system: "+FieldsPhrase+`{"ignored": "string"}`,
		"Rate this. "+FieldsPhrase+`{"score": "integer", "rationale": "string", "p": "number", "ok": "boolean", "label": "enum:yes|no|maybe"}`,
	)
	content := newAnswer(req).json()
	got := decodeObject(t, content)
	kinds := map[string]string{}
	for k, v := range got {
		kinds[k] = jsonKind(v)
	}
	// p may happen to be 0, which decodes like an integer.
	if kinds["p"] == "integer" {
		kinds["p"] = "number"
	}
	want := map[string]string{"score": "integer", "rationale": "string", "p": "number", "ok": "boolean", "label": "string"}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Fatalf("field kinds of %s (-want +got):\n%s", content, diff)
	}
	if s := got["score"].(float64); s < 1 || s > 5 {
		t.Errorf("score %v, want 1..5", s)
	}
	if p := got["p"].(float64); p < 0 || p >= 1 {
		t.Errorf("p %v, want [0,1)", p)
	}
	if l := got["label"].(string); l != "yes" && l != "no" && l != "maybe" {
		t.Errorf("label %q, want one of yes|no|maybe", l)
	}
	if !strings.HasPrefix(content, `{"score":`) {
		t.Errorf("answer %s does not keep the requested field order", content)
	}
}

func TestAnswerWithoutFieldsIsAnswerString(t *testing.T) {
	t.Parallel()
	got := decodeObject(t, newAnswer(userRequest("hello [[mark:m1]]")).json())
	if len(got) != 1 || !strings.Contains(got["answer"].(string), "m1") {
		t.Fatalf("answer %v, want only an \"answer\" string carrying the marker", got)
	}
}

func TestAnswerFollowsJSONSchema(t *testing.T) {
	t.Parallel()
	schema := `{
	  "type": "object",
	  "properties": {
	    "score": {"type": "integer", "minimum": 10, "maximum": 12},
	    "summary": {"type": "string"},
	    "confidence": {"type": "number"},
	    "flag": {"type": "boolean"},
	    "sentiment": {"type": "string", "enum": ["positive", "negative"]},
	    "nullable": {"type": ["string", "null"]},
	    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
	    "author": {"$ref": "#/$defs/person"},
	    "choice": {"anyOf": [{"type": "null"}, {"type": "integer"}]}
	  },
	  "required": ["score"],
	  "additionalProperties": false,
	  "$defs": {"person": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}}
	}`
	req := userRequest("Describe row 1 [[mark:r1.q2]]")
	req.ResponseFormat = &responseFormat{Type: "json_schema"}
	req.ResponseFormat.JSONSchema = &struct {
		Name   string          `json:"name"`
		Strict *bool           `json:"strict,omitempty"`
		Schema json.RawMessage `json:"schema"`
	}{Name: "out", Schema: json.RawMessage(schema)}

	got := decodeObject(t, newAnswer(req).json())
	if s := got["score"].(float64); s < 10 || s > 12 {
		t.Errorf("score %v, want 10..12", s)
	}
	for _, k := range []string{"summary", "nullable"} {
		if s, ok := got[k].(string); !ok || !strings.Contains(s, "r1.q2") {
			t.Errorf("%s = %#v, want a string carrying the marker", k, got[k])
		}
	}
	if _, ok := got["confidence"].(float64); !ok {
		t.Errorf("confidence = %#v, want a number", got["confidence"])
	}
	if _, ok := got["flag"].(bool); !ok {
		t.Errorf("flag = %#v, want a boolean", got["flag"])
	}
	if s := got["sentiment"]; s != "positive" && s != "negative" {
		t.Errorf("sentiment = %#v, want an enum value", s)
	}
	if tags, ok := got["tags"].([]any); !ok || len(tags) != 3 {
		t.Errorf("tags = %#v, want 3 strings", got["tags"])
	}
	author, ok := got["author"].(map[string]any)
	if !ok || jsonKind(author["name"]) != "string" || jsonKind(author["age"]) != "integer" {
		t.Errorf("author = %#v, want {name string, age integer}", got["author"])
	}
	if jsonKind(got["choice"]) != "integer" {
		t.Errorf("choice = %#v, want the non-null anyOf branch", got["choice"])
	}
}

func TestAnswerIsDeterministic(t *testing.T) {
	t.Parallel()
	phrase := FieldsPhrase + `{"a": "integer", "b": "string", "c": "number", "d": "boolean"}`
	first := newAnswer(userRequest("row 1 " + phrase)).json()
	for range 5 {
		if again := newAnswer(userRequest("row 1 " + phrase)).json(); again != first {
			t.Fatalf("same request answered %s then %s", first, again)
		}
	}
	// Different prompts should not all collapse onto one answer.
	distinct := map[string]bool{}
	for i := range 20 {
		distinct[newAnswer(userRequest(strings.Repeat("x", i)+phrase)).json()] = true
	}
	if len(distinct) < 10 {
		t.Errorf("20 different prompts gave only %d distinct answers", len(distinct))
	}
}

func TestMarkersAndDirectives(t *testing.T) {
	t.Parallel()
	text := "a [[mark:r17.q3]] b [[mark:x-1:y_2]] [[mark:r17.q3]] [[mark:bad token]] [[fault:nope]] [[fault:invalid_json]] [[fault:429]]"
	if diff := cmp.Diff([]string{"r17.q3", "x-1:y_2"}, markers(text)); diff != "" {
		t.Errorf("markers (-want +got):\n%s", diff)
	}
	if got := directive(text); got != FaultInvalidJSON {
		t.Errorf("directive = %q, want the first known kind %q", got, FaultInvalidJSON)
	}
}

func TestFaultedAnswers(t *testing.T) {
	t.Parallel()
	req := userRequest(FieldsPhrase + `{"score": "integer", "why": "string"}`)
	a := newAnswer(req)

	missing := decodeObject(t, a.withoutField())
	if len(missing) != 1 {
		t.Errorf("missing_field answer %v, want exactly one of two fields", missing)
	}
	wrong := decodeObject(t, a.withWrongType())
	if jsonKind(wrong["score"]) == "integer" && jsonKind(wrong["why"]) == "string" {
		t.Errorf("wrong_type answer %v has every type right", wrong)
	}
	if json.Valid([]byte(a.truncated())) {
		t.Errorf("truncated answer %q is valid JSON", a.truncated())
	}
	if json.Valid([]byte(a.invalidJSON())) {
		t.Errorf("invalid_json answer %q is valid JSON", a.invalidJSON())
	}
}
