package llmsim

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// These tests prove wire compatibility with the official client.

func TestOpenAIClient(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Keys: []string{testKey}})
	client := openai.NewClient(
		option.WithBaseURL(b.url+"/v1/"),
		option.WithAPIKey(testKey),
		option.WithMaxRetries(0),
		option.WithHTTPClient(b.client),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	schema := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"score": map[string]any{"type": "integer"},
			"why":   map[string]any{"type": "string"},
			"label": map[string]any{"type": "string", "enum": []string{"yes", "no"}},
		},
		"required":             []string{"score", "why", "label"},
		"additionalProperties": false,
	}
	resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You rate rows."),
			openai.UserMessage("Row 3 [[mark:r3.q1]]"),
		},
		MaxCompletionTokens: openai.Int(200),
		Temperature:         openai.Float(0),
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{
			OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
				JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{
					Name:   "rating",
					Strict: openai.Bool(true),
					Schema: schema,
				},
			},
		},
	})
	if err != nil {
		t.Fatalf("create completion: %v", err)
	}
	if resp.Model != "gpt-4o-mini" || len(resp.Choices) != 1 || resp.Choices[0].FinishReason != "stop" || resp.Usage.TotalTokens == 0 {
		t.Fatalf("response %+v, want one stopped choice from gpt-4o-mini with usage", resp)
	}
	var out struct {
		Score int    `json:"score"`
		Why   string `json:"why"`
		Label string `json:"label"`
	}
	if err := json.Unmarshal([]byte(resp.Choices[0].Message.Content), &out); err != nil {
		t.Fatalf("decode content %q: %v", resp.Choices[0].Message.Content, err)
	}
	if out.Score < 1 || out.Score > 5 || !strings.Contains(out.Why, "r3.q1") || (out.Label != "yes" && out.Label != "no") {
		t.Errorf("content %+v does not follow the schema", out)
	}

	// The client surfaces a limiter-style 429 as an *openai.Error with headers.
	_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("[[fault:429]]")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("err = %v, want an *openai.Error with status 429", err)
	}
	if got := apiErr.Response.Header.Get("retry-after-ms"); got != "1000" {
		t.Errorf("retry-after-ms %q, want 1000", got)
	}

	bad := openai.NewClient(option.WithBaseURL(b.url+"/v1/"), option.WithAPIKey("wrong"), option.WithMaxRetries(0), option.WithHTTPClient(b.client))
	_, err = bad.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized || apiErr.Code != "invalid_api_key" {
		t.Errorf("wrong key: err = %v, want a 401 invalid_api_key", err)
	}
}

func TestAzureClient(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Keys: []string{testKey}, Deployments: []string{"gpt4o-dep"}})
	client := openai.NewClient(
		azure.WithEndpoint(b.url, "2024-10-21"),
		azure.WithAPIKey(testKey),
		azure.WithUnsafeAllowHTTP(),
		option.WithMaxRetries(0),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "gpt4o-dep", // the deployment name
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.UserMessage("Row 9 [[mark:r9]] " + FieldsPhrase + `{"ok": "boolean", "note": "string"}`),
		},
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}},
	})
	if err != nil {
		t.Fatalf("create completion: %v", err)
	}
	var out struct {
		OK   *bool  `json:"ok"`
		Note string `json:"note"`
	}
	if err := json.Unmarshal([]byte(resp.Choices[0].Message.Content), &out); err != nil {
		t.Fatalf("decode content %q: %v", resp.Choices[0].Message.Content, err)
	}
	if out.OK == nil || !strings.Contains(out.Note, "r9") {
		t.Errorf("content %+v does not follow the requested fields", out)
	}
	st := b.srv.Stats()
	if st.ByRoute["azure"] != 1 || st.ByDeployment["gpt4o-dep"] != 1 {
		t.Errorf("stats %+v, want one azure request to gpt4o-dep", st)
	}
}
