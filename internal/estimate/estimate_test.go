package estimate

import (
	"os"
	"strings"
	"testing"

	"github.com/multiquery/multiquery/internal/wire"
)

func TestEncodingFor(t *testing.T) {
	for _, tt := range []struct{ model, want string }{
		{"gpt-4o-mini", "o200k_base"},
		{"gpt-4o", "o200k_base"},
		{"GPT-4o-2024-08-06", "o200k_base"},
		{"gpt-4.1-nano", "o200k_base"},
		{"gpt-5", "o200k_base"},
		{"o1", "o200k_base"},
		{"o3-mini", "o200k_base"},
		{"gpt-4", "cl100k_base"},
		{"gpt-4-turbo", "cl100k_base"},
		{"gpt-3.5-turbo", "cl100k_base"},
		{"gpt-35-turbo", "cl100k_base"}, // Azure's name
		{"llama-3.1-70b", ""},
		{"o1x", ""},
		{"sim-model", ""},
	} {
		if got := EncodingFor(tt.model); got != tt.want {
			t.Errorf("EncodingFor(%q) = %q, want %q", tt.model, got, tt.want)
		}
	}
}

func TestTokenizer(t *testing.T) {
	t.Run("an OpenAI model is counted with its encoding, loaded from the binary", func(t *testing.T) {
		// The library's default loader would download the encoding into this cache.
		cache := t.TempDir()
		t.Setenv("TIKTOKEN_CACHE_DIR", cache)
		tok := ForModel("gpt-4o-mini")
		if !tok.Exact() || tok.Encoding() != "o200k_base" {
			t.Fatalf("exact %v, encoding %q: want o200k_base", tok.Exact(), tok.Encoding())
		}
		if n := tok.Text("hello world"); n != 2 {
			t.Errorf("Text(hello world) = %d, want 2", n)
		}
		if entries, _ := os.ReadDir(cache); len(entries) != 0 {
			t.Errorf("the encoding was fetched into the cache: %v", entries)
		}
	})
	t.Run("cl100k counts a known sentence as OpenAI's cookbook does", func(t *testing.T) {
		// "tiktoken is great!" is 6 tokens in cl100k_base (the cookbook's example).
		if n := ForModel("gpt-4").Text("tiktoken is great!"); n != 6 {
			t.Errorf("Text = %d, want 6", n)
		}
	})
	t.Run("a chat request adds 3 tokens a message and 3 for the reply", func(t *testing.T) {
		tok := ForModel("gpt-4o")
		msgs := []wire.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "hello world"}}
		want := 3 + (3 + 1 + tok.Text("Be brief.")) + (3 + 1 + 2)
		if got := tok.Chat(msgs); got != want {
			t.Errorf("Chat = %d, want %d", got, want)
		}
	})
	t.Run("another model is estimated at 4 characters a token", func(t *testing.T) {
		tok := ForModel("llama-3.1-70b")
		if tok.Exact() || tok.Encoding() != "" {
			t.Fatal("want an estimate")
		}
		if n := tok.Text("abcdefghi"); n != 3 {
			t.Errorf("Text(9 characters) = %d, want 3", n)
		}
	})
}

func job(model string, maxTokens int, content string) wire.Job {
	return wire.Job{Request: wire.Request{Model: model, MaxCompletionTokens: maxTokens,
		Messages: []wire.Message{{Role: "user", Content: content}}}}
}

func TestTally(t *testing.T) {
	t.Run("adds up tokens and prices them", func(t *testing.T) {
		tl := NewTally()
		for range 10 {
			tl.Add(wire.Row{}, []wire.Job{job("gpt-4o-mini", 100, "hello world"), job("gpt-4o-mini", 100, "hello world")})
		}
		tl.Add(wire.Row{Row: 10, Error: &wire.Error{Reason: wire.ReasonTemplateRendering, Message: "row.x is undefined"}}, nil)
		if tl.Rows != 11 || tl.RowErrors != 1 || tl.Queries != 20 {
			t.Fatalf("rows %d, errors %d, queries %d", tl.Rows, tl.RowErrors, tl.Queries)
		}
		m := tl.Models[0]
		// 3 (reply) + 3 (message) + 1 ("user") + 2 ("hello world") = 9 a query.
		if m.PromptTokens != 180 || m.MaxCompletionTokens != 2000 {
			t.Fatalf("prompt %d, completion %d: want 180, 2000", m.PromptTokens, m.MaxCompletionTokens)
		}
		var b strings.Builder
		if err := tl.Write(&b, Prices{PromptPer1K: 1, CompletionPer1K: 2}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"rows:                  11 (1 would be error rows)",
			"queries:               20 (2 per row)",
			"prompt tokens:         180 (model gpt-4o-mini: tokenizer o200k_base",
			"max completion tokens: 2000",
			"estimated cost:        $0.1800 prompts + at most $4.0000 completions = at most $4.1800",
			"error row 10: template_rendering_failed: row.x is undefined",
		} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, b.String())
			}
		}
	})
	t.Run("says what it cannot know", func(t *testing.T) {
		tl := NewTally()
		tl.Add(wire.Row{}, []wire.Job{job("local-llm", 0, "abcdefgh")})
		var b strings.Builder
		if err := tl.Write(&b, Prices{}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"~", "no tokenizer is known", "unbounded for 1 queries", "estimated cost:        unknown"} {
			if !strings.Contains(b.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, b.String())
			}
		}
	})
}
