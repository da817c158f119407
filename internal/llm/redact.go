package llm

import (
	"regexp"
	"strings"
)

// Redacted replaces key-like text in provider messages.
const Redacted = "[redacted]"

// keyLike matches what a provider may echo of a credential: OpenAI keys (sk-...,
// possibly masked "sk-abc***wxyz"), masked runs around "***", bearer tokens, and long
// opaque tokens such as Azure's 32-hex keys.
var keyLike = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bbearer\s+\S+`),
	regexp.MustCompile(`\b(?:sk|rk|pk)-[A-Za-z0-9_*.\-]{3,}`),
	regexp.MustCompile(`\S*\*{3,}\S*`),
	regexp.MustCompile(`\b[A-Za-z0-9_\-]*[0-9][A-Za-z0-9_\-]*[A-Za-z][A-Za-z0-9_\-]*\b|\b[A-Za-z0-9_\-]*[A-Za-z][A-Za-z0-9_\-]*[0-9][A-Za-z0-9_\-]*\b`),
}

// Redact returns a provider's error text with anything key-like replaced by
// [Redacted], so it can be stored (breaker record, audit, results) and logged. Keys
// never reach a record even when the provider echoes them masked.
func Redact(s string) string {
	s = keyLike[0].ReplaceAllString(s, "Bearer "+Redacted)
	s = keyLike[1].ReplaceAllString(s, Redacted)
	s = keyLike[2].ReplaceAllString(s, Redacted)
	// Long mixed letter-and-digit tokens (>= 24 characters) are credentials or ids
	// nobody needs in an error reason.
	s = keyLike[3].ReplaceAllStringFunc(s, func(tok string) string {
		if len(tok) >= 24 {
			return Redacted
		}
		return tok
	})
	return strings.TrimSpace(s)
}
