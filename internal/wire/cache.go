package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// CacheEntry is one answer of the prompt cache, under CacheKey's key in BucketCache:
// what a worker needs to answer a job of the same request without calling the model.
// Written by workers after a call whose answer parsed into the job's output fields;
// read by workers before a job's call.
type CacheEntry struct {
	V            int    `json:"v"`
	Content      string `json:"content"`       // the model's answer, as received
	FinishReason string `json:"finish_reason"` // "stop", as only parsed answers are stored
	Model        string `json:"model"`         // the model the provider reported
	Usage        Usage  `json:"usage"`         // the tokens of the call that stored it
	// Stored is when the answer was received (the storing worker's clock): a job whose
	// cache ttl is shorter than its age ignores it.
	Stored time.Time `json:"stored"`
}

// CacheKey is the prompt cache's key of a request: the hex SHA-256 of the canonical
// JSON of what decides the answer: the model name sent to the provider (model, which
// for an Azure deployment may differ from req.Model), the messages, the sampling
// parameters (temperature), max_completion_tokens, the response format and its
// schema. Run, row, query, deployment alias and output columns are left out, so the
// same prompt in another run, query or pipeline shares the entry. encoding/json sorts
// the keys of the schema's maps and writes no insignificant whitespace, so the key
// does not depend on how a publisher wrote the job. It is "" for a request that does
// not marshal (never for one decoded from JSON): such a request is not cached.
func CacheKey(model string, req Request) string {
	form := struct {
		Version             int            `json:"version"`
		Model               string         `json:"model"`
		Messages            []Message      `json:"messages"`
		Temperature         *float64       `json:"temperature"`
		MaxCompletionTokens int            `json:"max_completion_tokens"`
		ResponseFormat      string         `json:"response_format"`
		Schema              map[string]any `json:"schema"`
	}{1, model, req.Messages, req.Temperature, req.MaxCompletionTokens, req.ResponseFormat, req.Schema}
	b, err := json.Marshal(form)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
