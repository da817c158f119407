package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"testing"
)

// decodeJob decodes a job body as a worker does.
func decodeJob(t *testing.T, body string) Job {
	t.Helper()
	var j Job
	if err := Decode([]byte(body), &j); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return j
}

const structuredJob = `{"v":1,"run":"run-1","row":0,"query":"a","deployment":"default",
 "request":{"model":"m","messages":[{"role":"user","content":"Rate it."}],"temperature":0.2,"max_completion_tokens":100,
  "response_format":"structured","schema":{"type":"object","properties":{"score":{"type":"integer"},"why":{"type":"string"}},"required":["score","why"]}},
 "outputs":[{"field":"score","column":"a_score","type":"integer"}],"max_capacity_retry_seconds":3600,"max_attempts":5,"cache":{"ttl_seconds":3600}}`

// The same request, written by another publisher: other key order in the schema and the
// request, other whitespace, another run, row, query, deployment, outputs and ttl.
const structuredJobRewritten = `{ "v": 1, "run": "run-2", "row": 7, "query": "b", "deployment": "azure",
  "request": { "response_format": "structured", "max_completion_tokens": 100, "temperature": 0.20,
    "schema": { "required": ["score", "why"], "properties": { "why": {"type": "string"}, "score": {"type": "integer"} }, "type": "object" },
    "messages": [ {"content": "Rate it.", "role": "user"} ], "model": "m" },
  "outputs": [{"field":"why","column":"b_why","type":"string"}], "max_capacity_retry_seconds": 60, "max_attempts": 1,
  "cache": {"ttl_seconds": 60} }`

func TestCacheKey(t *testing.T) {
	base := decodeJob(t, structuredJob)
	key := CacheKey("m", base.Request)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(key) {
		t.Fatalf("CacheKey = %q, want 64 hex digits (a valid KV key)", key)
	}
	t.Run("ignores key order, whitespace, number spelling and everything but the request", func(t *testing.T) {
		if got := CacheKey("m", decodeJob(t, structuredJobRewritten).Request); got != key {
			t.Errorf("CacheKey of the rewritten job = %s, want %s", got, key)
		}
	})
	t.Run("is stable across an encode and decode", func(t *testing.T) {
		b, err := json.Marshal(base)
		if err != nil {
			t.Fatal(err)
		}
		if got := CacheKey("m", decodeJob(t, string(b)).Request); got != key {
			t.Errorf("CacheKey after a round trip = %s, want %s", got, key)
		}
	})
	zero := 0.0
	for _, tt := range []struct {
		name   string
		model  string
		change func(r *Request)
	}{
		{"changes with the model sent", "m2", func(*Request) {}},
		{"changes with a message's text", "m", func(r *Request) { r.Messages = []Message{{Role: "user", Content: "Rate it!"}} }},
		{"changes with a message's role", "m", func(r *Request) { r.Messages = []Message{{Role: "system", Content: "Rate it."}} }},
		{"changes with one message more", "m", func(r *Request) { r.Messages = append(r.Messages, Message{Role: "user", Content: ""}) }},
		{"changes with the temperature", "m", func(r *Request) { r.Temperature = &zero }},
		{"changes without a temperature (the provider's default)", "m", func(r *Request) { r.Temperature = nil }},
		{"changes with max_completion_tokens", "m", func(r *Request) { r.MaxCompletionTokens = 101 }},
		{"changes with the response format", "m", func(r *Request) { r.ResponseFormat = FormatStandard }},
		{"changes with the schema", "m", func(r *Request) { r.Schema = map[string]any{"type": "object"} }},
		{"does not mix two messages into one", "m", func(r *Request) {
			r.Messages = []Message{{Role: "user", Content: "Rate"}, {Role: "user", Content: " it."}}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := decodeJob(t, structuredJob).Request
			tt.change(&r)
			if got := CacheKey(tt.model, r); got == key {
				t.Errorf("CacheKey = %s, the same as the base request's", got)
			}
		})
	}
}

func TestJobCacheValidation(t *testing.T) {
	j := validJob()
	j.Cache = &JobCache{TTLSeconds: 0}
	if err := j.Validate(); err == nil {
		t.Error("a job with cache.ttl_seconds 0 validated")
	}
	j.Cache.TTLSeconds = 60
	if err := j.Validate(); err != nil {
		t.Errorf("a job with cache.ttl_seconds 60: %v", err)
	}
}

// The key is the SHA-256 of the JSON form docs/WIRE.md ("Prompt cache") shows: a
// publisher can compute it.
func TestCacheKeyIsTheDocumentedForm(t *testing.T) {
	req := Request{Model: "ignored: the model sent is passed apart", Messages: []Message{{Role: "user", Content: "Rate it."}},
		MaxCompletionTokens: 200, ResponseFormat: FormatStandard}
	form := `{"version":1,"model":"gpt-4o-mini","messages":[{"role":"user","content":"Rate it."}],` +
		`"temperature":null,"max_completion_tokens":200,"response_format":"standard","schema":null}`
	sum := sha256.Sum256([]byte(form))
	if got, want := CacheKey("gpt-4o-mini", req), hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("CacheKey = %s, want the SHA-256 of %s: %s", got, form, want)
	}
}
