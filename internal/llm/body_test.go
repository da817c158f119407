package llm

import (
	"bytes"
	stdjson "encoding/json"
	"math"
	"testing"

	"github.com/multiquery/multiquery/internal/wire"
)

// TestTheRequestBodyIsWhatEncodingJSONWrites: the hand-written body is byte for byte
// what encoding/json writes for the same request, whatever the text holds (quotes,
// control characters, HTML characters, invalid UTF-8, JavaScript line ends, emoji) and
// whichever optional fields are set.
func TestTheRequestBodyIsWhatEncodingJSONWrites(t *testing.T) {
	temp := func(f float64) *float64 { return &f }
	texts := []string{
		"", "plain", `say "hi" \ back`, "tab\tnew\nline\rcr\x00nul\x1fus\x7fdel",
		"<b>&amp;</b>", "bad \xff\xfe utf8 \xe2\x28\xa1", "line\u2028sep\u2029para",
		"émoji 😀 中文", "\u00e9\u0301",
	}
	var bodies []chatRequest
	for _, s := range texts {
		bodies = append(bodies, chatRequest{Model: s, Messages: []wire.Message{{Role: "system", Content: s}, {Role: "user", Content: "row: " + s}},
			ResponseFormat: responseFormat{Type: "json_object"}})
	}
	for _, f := range []float64{0, 1, 0.7, 1.25, 2, 1e-7, 123456789, 1e21, 3.5e-12, -0.5} {
		bodies = append(bodies, chatRequest{Model: "m", Messages: []wire.Message{{Role: "user", Content: "x"}}, Temperature: temp(f),
			MaxCompletionTokens: 300, ResponseFormat: responseFormat{Type: "json_object"}})
	}
	bodies = append(bodies,
		chatRequest{Model: "m", ResponseFormat: responseFormat{Type: "json_object"}},                             // no messages
		chatRequest{Model: "m", Messages: []wire.Message{}, ResponseFormat: responseFormat{Type: "json_object"}}, // empty
		chatRequest{Model: "m", Messages: []wire.Message{{Role: "user", Content: "x"}}, ResponseFormat: responseFormat{Type: "json_schema",
			JSONSchema: &jsonSchema{Name: "answer", Strict: true, Schema: map[string]any{"type": "object", "required": []any{"b", "a"},
				"properties": map[string]any{"b": map[string]any{"type": "integer"}, "a": map[string]any{"type": "string", "description": "<&>"}}}}}},
		chatRequest{Model: "m", Messages: []wire.Message{{Role: "user", Content: "x"}}, ResponseFormat: responseFormat{Type: "json_schema",
			JSONSchema: &jsonSchema{Name: "answer", Strict: true}}},
	)
	for i, body := range bodies {
		want, err := stdjson.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendChatRequest(nil, body)
		if err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("body %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

// TestATemperatureThatIsNoJSONNumberIsRefused: NaN and infinities have no JSON form;
// the call fails with that said instead of sending a body the server cannot read.
func TestATemperatureThatIsNoJSONNumberIsRefused(t *testing.T) {
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, err := appendChatRequest(nil, chatRequest{Model: "m", Temperature: &f}); err == nil {
			t.Errorf("temperature %v: encoded, want an error", f)
		}
	}
}
