// Package estimate owns what a run would cost before it runs: the prompt tokens of
// every rendered chat request, counted with the model's own tokenizer (OpenAI's BPE
// encodings, embedded in the binary: nothing is downloaded), the completion tokens the
// pipeline's max_completion_tokens allows, and their price. The dry run of the producer
// and of multiquery prints it (Tally.Write).
package estimate

import (
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/pkoukk/tiktoken-go"
	tiktokenloader "github.com/pkoukk/tiktoken-go-loader"

	"github.com/multiquery/multiquery/internal/wire"
)

// The chat overhead of OpenAI's counting rule for the chat models (the OpenAI cookbook,
// "How to count tokens with tiktoken", gpt-3.5-turbo-0613 and later, gpt-4, gpt-4o):
// every message costs MessageOverhead tokens besides the tokens of its role and its
// content, and every request ReplyPriming tokens (<|start|>assistant<|message|>).
const (
	MessageOverhead = 3
	ReplyPriming    = 3
)

// CharsPerToken is the estimate for a model without a known tokenizer: about four
// characters of English text a token (OpenAI's rule of thumb).
const CharsPerToken = 4

// Tokenizer counts the prompt tokens of chat requests for one model: exactly with the
// model's BPE encoding when the model is an OpenAI one, else an estimate.
type Tokenizer struct {
	model    string
	encoding string // "" for the estimate
	enc      *tiktoken.Tiktoken
}

// encodings maps a model name prefix to its encoding, most specific first (gpt-4o
// before gpt-4). Names are compared in lower case; an Azure deployment's model name
// such as gpt-35-turbo is included.
var encodings = []struct{ prefix, encoding string }{
	{"gpt-4o", tiktoken.MODEL_O200K_BASE},
	{"chatgpt-4o", tiktoken.MODEL_O200K_BASE},
	{"gpt-4.1", tiktoken.MODEL_O200K_BASE},
	{"gpt-4.5", tiktoken.MODEL_O200K_BASE},
	{"gpt-5", tiktoken.MODEL_O200K_BASE},
	{"o1", tiktoken.MODEL_O200K_BASE},
	{"o3", tiktoken.MODEL_O200K_BASE},
	{"o4", tiktoken.MODEL_O200K_BASE},
	{"gpt-4", tiktoken.MODEL_CL100K_BASE},
	{"gpt-3.5", tiktoken.MODEL_CL100K_BASE},
	{"gpt-35", tiktoken.MODEL_CL100K_BASE},
}

// EncodingFor is the BPE encoding of an OpenAI model, or "" when the model is not one
// this package knows.
func EncodingFor(model string) string {
	m := strings.ToLower(strings.TrimSpace(model))
	for _, e := range encodings {
		// The short o-series names match whole or before a dash only (o1, o1-mini).
		short := len(e.prefix) <= 2
		if m == e.prefix || strings.HasPrefix(m, e.prefix+"-") || (!short && strings.HasPrefix(m, e.prefix)) {
			return e.encoding
		}
	}
	return ""
}

var (
	loaderOnce sync.Once
	encMu      sync.Mutex
	encCache   = map[string]*tiktoken.Tiktoken{}
)

// encoding returns a loaded encoding, from the files embedded in the binary.
func encoding(name string) (*tiktoken.Tiktoken, error) {
	// The default loader fetches encodings over the network; the offline one reads the
	// copies embedded by tiktoken-go-loader.
	loaderOnce.Do(func() { tiktoken.SetBpeLoader(tiktokenloader.NewOfflineLoader()) })
	encMu.Lock()
	defer encMu.Unlock()
	if e, ok := encCache[name]; ok {
		return e, nil
	}
	e, err := tiktoken.GetEncoding(name)
	if err != nil {
		return nil, err
	}
	encCache[name] = e
	return e, nil
}

// ForModel returns the tokenizer of model: its BPE encoding when it is an OpenAI model,
// else the estimate of CharsPerToken.
func ForModel(model string) *Tokenizer {
	t := &Tokenizer{model: model}
	if name := EncodingFor(model); name != "" {
		if enc, err := encoding(name); err == nil {
			t.encoding, t.enc = name, enc
		}
	}
	return t
}

// Exact reports whether the count is the model's tokenizer's, not an estimate.
func (t *Tokenizer) Exact() bool { return t.enc != nil }

// Encoding names the BPE encoding, "" for the estimate.
func (t *Tokenizer) Encoding() string { return t.encoding }

// Text counts the tokens of s.
func (t *Tokenizer) Text(s string) int {
	if t.enc == nil {
		return (utf8.RuneCountInString(s) + CharsPerToken - 1) / CharsPerToken
	}
	return len(t.enc.EncodeOrdinary(s))
}

// Chat counts the prompt tokens of a chat request by OpenAI's rule: for each message
// MessageOverhead plus the tokens of its role and content, then ReplyPriming. A JSON
// schema (response_format structured) is not counted: the provider bills it, but by no
// published rule.
func (t *Tokenizer) Chat(msgs []wire.Message) int {
	n := ReplyPriming
	for _, m := range msgs {
		n += MessageOverhead + t.Text(m.Role) + t.Text(m.Content)
	}
	return n
}
