package llmsim

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// chatRequest is the part of a chat completion request the simulator reads.
type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	Temperature         *float64        `json:"temperature,omitempty"`
	MaxCompletionTokens *int            `json:"max_completion_tokens,omitempty"`
	MaxTokens           *int            `json:"max_tokens,omitempty"`
	ResponseFormat      *responseFormat `json:"response_format,omitempty"`
}

type chatMessage struct {
	Role    string         `json:"role"`
	Content messageContent `json:"content"`
}

// messageContent is a message's text: the API sends either a string or an
// array of parts, of which only {"type":"text"} parts carry text.
type messageContent string

func (c *messageContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*c = ""
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("content string: %w", err)
		}
		*c = messageContent(s)
		return nil
	case len(b) > 0 && b[0] == '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(b, &parts); err != nil {
			return fmt.Errorf("content parts: %w", err)
		}
		var texts []string
		for _, p := range parts {
			if p.Type == "text" {
				texts = append(texts, p.Text)
			}
		}
		*c = messageContent(strings.Join(texts, "\n"))
		return nil
	default:
		return errors.New("content: want a string or an array of parts")
	}
}

type responseFormat struct {
	Type       string `json:"type"`
	JSONSchema *struct {
		Name   string          `json:"name"`
		Strict *bool           `json:"strict,omitempty"`
		Schema json.RawMessage `json:"schema"`
	} `json:"json_schema,omitempty"`
}

func decodeChatRequest(body []byte) (*chatRequest, error) {
	var req chatRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("decode request body: %w", err)
	}
	if len(req.Messages) == 0 {
		return nil, errors.New("messages: must not be empty")
	}
	return &req, nil
}

// text joins every message's content; answers are a function of it.
func (r *chatRequest) text() string {
	parts := make([]string, len(r.Messages))
	for i, m := range r.Messages {
		parts[i] = string(m.Content)
	}
	return strings.Join(parts, "\n")
}

// tryKey identifies a request across its tries for FirstTryOnly: a hash of its messages
// up to its first user message, so a retry of the same request and a re-ask that
// appends messages share it.
func (r *chatRequest) tryKey() [32]byte {
	h := sha256.New()
	for _, m := range r.Messages {
		h.Write([]byte(m.Role))
		h.Write([]byte{0})
		h.Write([]byte(m.Content))
		h.Write([]byte{0})
		if m.Role == "user" {
			break
		}
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// maxCompletion is the requested completion budget, 16 when unset.
func (r *chatRequest) maxCompletion() int {
	switch {
	case r.MaxCompletionTokens != nil && *r.MaxCompletionTokens > 0:
		return *r.MaxCompletionTokens
	case r.MaxTokens != nil && *r.MaxTokens > 0:
		return *r.MaxTokens
	default:
		return 16
	}
}

// estimateTokens is what the token bucket charges: prompt chars/4 plus the
// completion budget.
func estimateTokens(text string, maxCompletion int) int {
	return utf8.RuneCountInString(text)/4 + maxCompletion
}

// usageTokens estimates a token count as chars/4, rounded up.
func usageTokens(s string) int {
	return (utf8.RuneCountInString(s) + 3) / 4
}

type chatResponse struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	SystemFingerprint string       `json:"system_fingerprint"`
	Choices           []chatChoice `json:"choices"`
	Usage             chatUsage    `json:"usage"`
}

type chatChoice struct {
	Index        int             `json:"index"`
	Message      responseMessage `json:"message"`
	FinishReason string          `json:"finish_reason"`
	Logprobs     *struct{}       `json:"logprobs"`
}

type responseMessage struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"`
}

type chatUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// apiError is the error envelope shared by OpenAI and Azure; each fills the
// fields it uses.
type apiError struct {
	Error apiErrorBody `json:"error"`
}

type apiErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type,omitempty"`
	Param   *string `json:"param,omitempty"`
	Code    string  `json:"code,omitempty"`
}
