package llm

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/multiquery/multiquery/internal/wire"
)

var outputs = []wire.OutputField{
	{Field: "score", Column: "q_score", Type: wire.TypeInteger},
	{Field: "why", Column: "q_why", Type: wire.TypeString},
	{Field: "p", Column: "q_p", Type: wire.TypeNumber},
	{Field: "ok", Column: "q_ok", Type: wire.TypeBoolean},
	{Field: "label", Column: "q_label", Type: wire.TypeEnum, Values: []string{"yes", "no"}},
}

func TestParseAnswer(t *testing.T) {
	good := `{"score": 4, "why": "fine", "p": 0.25, "ok": true, "label": "yes", "extra": 1}`
	tests := []struct {
		name, content, reason, field string
	}{
		{"a valid answer maps every field", good, "", ""},
		{"a code fence is tolerated", "```json\n" + good + "\n```", "", ""},
		{"an integral float counts as an integer", `{"score": 4.0, "why": "", "p": 1, "ok": false, "label": "no"}`, "", ""},
		{"text is invalid_json", "Sure! Here it is", wire.ReasonInvalidJSON, ""},
		{"NaN is invalid_json", `{"score": NaN}`, wire.ReasonInvalidJSON, ""},
		{"an array is invalid_json", `[1,2]`, wire.ReasonInvalidJSON, ""},
		{"trailing data is invalid_json", good + ` {}`, wire.ReasonInvalidJSON, ""},
		{"a missing field names it", `{"score": 4, "p": 0.1, "ok": true, "label": "yes"}`, wire.ReasonMissingField, "why"},
		{"null counts as missing", `{"score": 4, "why": null, "p": 0.1, "ok": true, "label": "yes"}`, wire.ReasonMissingField, "why"},
		{"a string for an integer is type_mismatch", `{"score": "4", "why": "x", "p": 0.1, "ok": true, "label": "yes"}`, wire.ReasonTypeMismatch, "score"},
		{"a fraction for an integer is type_mismatch", `{"score": 4.5, "why": "x", "p": 0.1, "ok": true, "label": "yes"}`, wire.ReasonTypeMismatch, "score"},
		{"an enum value outside the list is type_mismatch", `{"score": 4, "why": "x", "p": 0.1, "ok": true, "label": "maybe"}`, wire.ReasonTypeMismatch, "label"},
		{"a number for a boolean is type_mismatch", `{"score": 4, "why": "x", "p": 0.1, "ok": 1, "label": "yes"}`, wire.ReasonTypeMismatch, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields, err := ParseAnswer(tt.content, outputs)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				if len(fields) != len(outputs) {
					t.Fatalf("got %d fields, want %d", len(fields), len(outputs))
				}
				return
			}
			var pe *PermanentError
			if !errors.As(err, &pe) || pe.Reason != tt.reason || pe.Field != tt.field {
				t.Fatalf("err = %#v, want reason %s field %q", err, tt.reason, tt.field)
			}
		})
	}
}

func TestParseAnswerNormalisesValues(t *testing.T) {
	fields, err := ParseAnswer(`{"score": 4.0, "why": "a\"b", "p": 1e-3, "ok": true, "label": "no"}`, outputs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"q_score": `4`, "q_why": `"a\"b"`, "q_p": `1e-3`, "q_ok": `true`, "q_label": `"no"`}
	for k, v := range want {
		if string(fields[k]) != v {
			t.Errorf("%s = %s, want %s", k, fields[k], v)
		}
	}
}

func TestClassifyStatus(t *testing.T) {
	h := http.Header{}
	h.Set("retry-after-ms", "1500")
	tests := []struct {
		name   string
		status int
		code   string
		check  func(error) bool
	}{
		{"429 is capacity with its retry-after", 429, "", func(e error) bool {
			var c *CapacityError
			return errors.As(e, &c) && c.RetryAfter == 1500*time.Millisecond
		}},
		{"503 is capacity", 503, "", func(e error) bool { var c *CapacityError; return errors.As(e, &c) }},
		{"529 is capacity", 529, "", func(e error) bool { var c *CapacityError; return errors.As(e, &c) }},
		{"insufficient_quota is deployment-wide", 429, "insufficient_quota", func(e error) bool { var d *DeploymentError; return errors.As(e, &d) }},
		{"401 is deployment-wide", 401, "invalid_api_key", func(e error) bool { var d *DeploymentError; return errors.As(e, &d) }},
		{"404 is deployment-wide", 404, "DeploymentNotFound", func(e error) bool { var d *DeploymentError; return errors.As(e, &d) }},
		{"404 without a code is deployment-wide", 404, "", func(e error) bool { var d *DeploymentError; return errors.As(e, &d) }},
		{"404 model_not_found fails the query: the job's model is unknown", 404, "model_not_found", func(e error) bool {
			var p *PermanentError
			return errors.As(e, &p) && p.Reason == wire.ReasonModelNotFound
		}},
		{"500 is transient", 500, "", func(e error) bool { var tr *TransientError; return errors.As(e, &tr) }},
		{"400 context length is permanent", 400, "context_length_exceeded", func(e error) bool {
			var p *PermanentError
			return errors.As(e, &p) && p.Reason == wire.ReasonContextLengthExceeded
		}},
		{"422 is permanent", 422, "", func(e error) bool {
			var p *PermanentError
			return errors.As(e, &p) && p.Reason == wire.ReasonLLMCallFailed
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := classifyStatus(tt.status, tt.code, "", "msg", h); !tt.check(err) {
				t.Fatalf("classifyStatus(%d, %q) = %#v", tt.status, tt.code, err)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, tt := range map[string]struct {
		h    map[string]string
		want time.Duration
	}{
		"retry-after-ms wins":   {map[string]string{"retry-after-ms": "250", "retry-after": "9"}, 250 * time.Millisecond},
		"seconds":               {map[string]string{"retry-after": "2"}, 2 * time.Second},
		"an HTTP date":          {map[string]string{"retry-after": now.Add(3 * time.Second).Format(http.TimeFormat)}, 3 * time.Second},
		"nothing means no hint": {map[string]string{}, 0},
	} {
		t.Run(name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.h {
				h.Set(k, v)
			}
			if got := RetryAfter(h, now); got != tt.want {
				t.Fatalf("RetryAfter = %s, want %s", got, tt.want)
			}
		})
	}
}

func FuzzParseAnswer(f *testing.F) {
	f.Add(`{"score": 4, "why": "fine", "p": 0.25, "ok": true, "label": "yes"}`)
	f.Add("```json\n{}\n```")
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, s string) {
		fields, err := ParseAnswer(s, outputs)
		if err != nil {
			var pe *PermanentError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a PermanentError", err)
			}
			return
		}
		for k, v := range fields {
			if !json.Valid(v) {
				t.Fatalf("field %s = %q is not valid JSON", k, v)
			}
		}
	})
}

func TestBudgetSpentTellsTheLimitFromABusyBackend(t *testing.T) {
	for _, tt := range []struct {
		name    string
		headers map[string]string
		want    bool
	}{
		{"no rate-limit headers: a busy backend", nil, false},
		{"requests left", map[string]string{"x-ratelimit-remaining-requests": "12"}, false},
		{"no request left", map[string]string{"x-ratelimit-remaining-requests": "0"}, true},
		{"Azure token limit: tokens 0, requests left", map[string]string{"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "12"}, true},
		{"garbage", map[string]string{"x-ratelimit-remaining-requests": "n/a"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.headers {
				h.Set(k, v)
			}
			if got := ParseRateLimit(h).Spent(); got != tt.want {
				t.Fatalf("ParseRateLimit(%v).Spent() = %v, want %v", tt.headers, got, tt.want)
			}
			var ce *CapacityError
			if err := classifyStatus(429, "429", "", "msg", h); !errors.As(err, &ce) || ce.BudgetSpent != tt.want {
				t.Fatalf("classifyStatus: %#v, want a CapacityError with BudgetSpent %v", err, tt.want)
			}
		})
	}
}

// The answer quoted in an invalid_json message is cut at a character, not inside one:
// an answer in Chinese or emoji reads as itself, not as "\xe4\xb8...".
func TestTheQuotedAnswerIsCutAtACharacter(t *testing.T) {
	_, err := ParseAnswer(strings.Repeat("中", 30)+" not json", []wire.OutputField{{Field: "a", Column: "q_a", Type: wire.TypeString}})
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), `\x`) || !utf8.ValidString(err.Error()) {
		t.Errorf("message %q quotes a character cut in two", err.Error())
	}
}
