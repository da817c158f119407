package wire

import (
	stdjson "encoding/json"
	"testing"

	json "github.com/goccy/go-json"
)

// TestARequestIsWrittenAsJSONMarshalWritesIt: the hand-written request is byte for byte
// what encoding/json and goccy write (the audit records' request_sha256 is over it, so
// it stays what it was when goccy wrote it), whichever optional fields are set.
func TestARequestIsWrittenAsJSONMarshalWritesIt(t *testing.T) {
	temp := 0.2
	tiny := 1e-9
	for i, r := range []Request{
		{Model: "gpt-4o-mini", Messages: []Message{{Role: "system", Content: "Rate <this> & \"that\"\n"}, {Role: "user", Content: "bad \xff utf8, émoji 😀, \u2028"}}, ResponseFormat: FormatStandard},
		{Model: "m", Temperature: &temp, MaxCompletionTokens: 300, ResponseFormat: FormatStructured,
			Schema: map[string]any{"type": "object", "properties": map[string]any{"b": map[string]any{"type": "integer"}, "a": map[string]any{"type": "string"}}, "required": []any{"b", "a"}}},
		{Model: "m", Messages: []Message{}, Temperature: &tiny, Schema: map[string]any{}},
		{},
	} {
		got, err := r.AppendJSON(nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		std, _ := stdjson.Marshal(r)
		goccy, _ := json.Marshal(r)
		if string(got) != string(std) || string(got) != string(goccy) {
			t.Errorf("request %d:\n got   %s\n std   %s\n goccy %s", i, got, std, goccy)
		}
	}
}

// TestAResultIsWrittenAsJSONMarshalWritesIt: a success, a failure with its job and an
// error's details, a cached answer and a result carrying its row's data, each byte for
// byte what encoding/json writes (raw values as this program writes them: compact, HTML
// escaped); and each reads back as the result written.
func TestAResultIsWrittenAsJSONMarshalWritesIt(t *testing.T) {
	usage := &Usage{PromptTokens: 93, CompletionTokens: 13, TotalTokens: 106}
	fields := map[string]json.RawMessage{"z_score": json.RawMessage(`4`), "a_rationale": json.RawMessage(`"said \"ok\" \u003cb\u003e"`), "m_flag": json.RawMessage(`true`), "nil": nil}
	for i, r := range []*Result{
		{V: 1, Run: "run-1", Row: 7, Query: "history_accuracy", OK: true, Fields: fields, Usage: usage, Model: "gpt-4o-mini", Deployment: "east",
			Attempt: 2, Calls: 3, Retries: 2, Billed: &Usage{PromptTokens: 279, CompletionTokens: 39, TotalTokens: 318}, Worker: "w-1", Elapsed: 0.004213},
		{V: 1, Run: "r", Row: 0, Query: "q", Error: &Error{Reason: ReasonInvalidJSON, Message: "not JSON: <html>", Details: map[string]any{"field": "score", "n": 2}},
			Calls: 1, Worker: "w", Elapsed: 12.5, Job: json.RawMessage(`{"v":1,"run":"r","row":0}`)},
		{V: 2, Run: "r", Row: 1, Query: "q", OK: true, Fields: map[string]json.RawMessage{"a": json.RawMessage(`1.5e-7`)}, Usage: usage, Model: "m", Cached: true,
			Data: json.RawMessage(`{"case_id":"C001","history":"a \"b\" c"}`)},
		{V: 1},
	} {
		got, err := r.AppendJSON(nil)
		if err != nil {
			t.Fatalf("result %d: %v", i, err)
		}
		want, err := stdjson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("result %d:\n got  %s\n want %s", i, got, want)
		}
		var back Result
		if err := Decode(got, &back); err != nil {
			t.Fatalf("result %d reads back: %v", i, err)
		}
		again, _ := stdjson.Marshal(&back)
		if string(again) != string(want) {
			t.Errorf("result %d read back as\n %s\nwant %s", i, again, want)
		}
	}
}

// TestAUsageIsWrittenAsJSONMarshalWritesIt, a missing one as null (a row's _usage
// column of a query answered without one).
func TestAUsageIsWrittenAsJSONMarshalWritesIt(t *testing.T) {
	for _, u := range []*Usage{nil, {}, {PromptTokens: 93, CompletionTokens: 13, TotalTokens: 106}} {
		want, _ := stdjson.Marshal(u)
		if got := u.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("%+v: got %s, want %s", u, got, want)
		}
	}
}
