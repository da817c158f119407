package llm

import (
	"strings"
	"testing"
)

// Issue 8 item 15: provider error text is stored with nothing key-like left in it.
func TestRedactRemovesKeyMaterialAndKeepsTheReason(t *testing.T) {
	for _, tc := range []struct{ name, in, keep, gone string }{
		{"openai masked key", "Incorrect API key provided: sk-abc***wxyz. You can find your API key at https://platform.openai.com/account/api-keys.", "Incorrect API key provided", "wxyz"},
		{"openai project key", "key sk-proj-AbC123dEf456GhI789 is disabled", "is disabled", "AbC123"},
		{"bearer token", "invalid header Authorization: Bearer abc.def.ghi", "invalid header", "abc.def"},
		{"azure hex key", "Access denied due to invalid subscription key 0123456789abcdef0123456789abcdef.", "Access denied", "0123456789abcdef"},
		{"plain reason", "The API deployment for this resource does not exist.", "does not exist", ""},
		{"rate limit text", "Requests to the ChatCompletions_Create Operation have exceeded call rate limit. Please retry after 2 seconds.", "retry after 2 seconds", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Redact(tc.in)
			if !strings.Contains(got, tc.keep) {
				t.Errorf("Redact(%q) = %q, lost %q", tc.in, got, tc.keep)
			}
			if tc.gone != "" && strings.Contains(got, tc.gone) {
				t.Errorf("Redact(%q) = %q, still holds %q", tc.in, got, tc.gone)
			}
			if tc.gone == "" && got != tc.in {
				t.Errorf("Redact(%q) = %q, want it unchanged", tc.in, got)
			}
		})
	}
}
