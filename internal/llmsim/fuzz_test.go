package llmsim

import (
	"encoding/json"
	"testing"
)

// FuzzAnswer feeds arbitrary request bodies through the decoder and the
// answer generator: neither may panic, and every answer must be a JSON
// object.
func FuzzAnswer(f *testing.F) {
	f.Add(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	f.Add(`{"messages":[{"role":"user","content":[{"type":"text","text":"` + `Respond with a JSON object with these fields: {\"a\": \"enum:\", \"b\": \"integer\"}"}]}]}`)
	f.Add(`{"messages":[{"role":"user","content":"[[mark:x]]"}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":` +
		`{"type":"object","properties":{"r":{"$ref":"#"},"n":{"type":"integer","minimum":-1e300,"maximum":1e300},"a":{"type":"array","minItems":1000000000}}}}}}`)
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeChatRequest([]byte(body))
		if err != nil {
			return
		}
		a := newAnswer(req)
		for _, content := range []string{a.json(), a.withoutField(), a.withWrongType()} {
			var m map[string]any
			if err := json.Unmarshal([]byte(content), &m); err != nil {
				t.Fatalf("answer %q is not a JSON object: %v", content, err)
			}
		}
	})
}
