// Package llm wraps openai-go for chat completions against OpenAI or Azure OpenAI
// deployments: one pooled HTTP transport per deployment, the SDK's own retries off
// (the queue retries), every failure classified into a typed error, and the answer
// parsed into typed output fields.
package llm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/multiquery/multiquery/internal/wire"
)

// Providers.
const (
	ProviderOpenAI = "openai"
	ProviderAzure  = "azure"
)

// HeaderDispatch carries the dispatch time (unix nanoseconds) of each attempt, so a
// server (llmsim) can check that pauses were honoured.
const HeaderDispatch = "X-Mq-Dispatch-Time"

// Options configure one deployment's client.
type Options struct {
	Alias           string
	Provider        string // openai | azure
	Endpoint        string
	APIVersion      string // azure
	AzureDeployment string // azure deployment name; "" = the job's model
	APIKey          string
	Timeout         time.Duration // per call
	Concurrency     int           // sizes the idle connection pool
}

// Client calls one deployment.
type Client struct {
	opts Options
	oc   openai.Client
}

// New builds a client. The transport is a clone of http.DefaultTransport with an idle
// pool as large as the concurrency (the default of 2 idle connections per host makes
// most calls reconnect) and a response-header timeout.
func New(o Options) (*Client, error) {
	if o.Timeout <= 0 {
		o.Timeout = 120 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	u, err := url.Parse(o.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("deployment %s: endpoint %q is not an http(s) URL", o.Alias, o.Endpoint)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = o.Concurrency * 2
	tr.MaxIdleConnsPerHost = o.Concurrency * 2
	tr.MaxConnsPerHost = 0
	tr.ResponseHeaderTimeout = o.Timeout
	tr.IdleConnTimeout = 90 * time.Second
	hc := &http.Client{Transport: tr}

	opts := []option.RequestOption{
		option.WithMaxRetries(0),
		option.WithHTTPClient(hc),
		option.WithMiddleware(stampDispatch),
	}
	switch o.Provider {
	case ProviderOpenAI, "":
		opts = append(opts, option.WithBaseURL(strings.TrimSuffix(o.Endpoint, "/")+"/"))
		if o.APIKey != "" {
			opts = append(opts, option.WithAPIKey(o.APIKey))
		} else {
			opts = append(opts, option.WithAPIKey("none"))
		}
	case ProviderAzure:
		if o.APIVersion == "" {
			o.APIVersion = "2024-10-21"
		}
		opts = append(opts, azure.WithEndpoint(o.Endpoint, o.APIVersion), azure.WithAPIKey(o.APIKey))
		if u.Scheme == "http" && isLoopback(u.Hostname()) {
			// Tests and llmsim only: openai-go refuses plain HTTP to anything but loopback.
			opts = append(opts, azure.WithUnsafeAllowHTTP())
		}
	default:
		return nil, fmt.Errorf("deployment %s: unknown provider %q", o.Alias, o.Provider)
	}
	return &Client{opts: o, oc: openai.NewClient(opts...)}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func stampDispatch(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	r.Header.Set(HeaderDispatch, strconv.FormatInt(time.Now().UnixNano(), 10))
	return next(r)
}

// Answer is a successful completion.
type Answer struct {
	Content      string
	FinishReason string
	Model        string
	Usage        wire.Usage
	Latency      time.Duration
}

// Call sends one chat completion with its own deadline. Errors are one of
// *CapacityError, *TransientError, *DeploymentError, *PermanentError, or ctx's error
// when the caller's context ended.
func (c *Client) Call(ctx context.Context, req wire.Request) (*Answer, error) {
	params := openai.ChatCompletionNewParams{Model: req.Model}
	if c.opts.Provider == ProviderAzure && c.opts.AzureDeployment != "" {
		params.Model = c.opts.AzureDeployment
	}
	for _, m := range req.Messages {
		switch m.Role {
		case "system":
			params.Messages = append(params.Messages, openai.SystemMessage(m.Content))
		case "assistant":
			params.Messages = append(params.Messages, openai.AssistantMessage(m.Content))
		case "developer":
			params.Messages = append(params.Messages, openai.DeveloperMessage(m.Content))
		default:
			params.Messages = append(params.Messages, openai.UserMessage(m.Content))
		}
	}
	if req.Temperature != nil {
		params.Temperature = openai.Float(*req.Temperature)
	}
	if req.MaxCompletionTokens > 0 {
		params.MaxCompletionTokens = openai.Int(int64(req.MaxCompletionTokens))
	}
	switch req.ResponseFormat {
	case wire.FormatStructured:
		params.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{
			OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{
				Name: "answer", Strict: openai.Bool(true), Schema: req.Schema,
			}},
		}
	default:
		params.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}}
	}

	cctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	start := time.Now()
	var resp *http.Response
	cc, err := c.oc.Chat.Completions.New(cctx, params, option.WithResponseInto(&resp))
	latency := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, classify(err, resp, cctx.Err() != nil)
	}
	if len(cc.Choices) == 0 {
		return nil, &TransientError{StatusCode: 200, Message: "completion has no choices"}
	}
	ch := cc.Choices[0]
	a := &Answer{
		Content:      ch.Message.Content,
		FinishReason: string(ch.FinishReason),
		Model:        cc.Model,
		Usage:        wire.Usage{PromptTokens: cc.Usage.PromptTokens, CompletionTokens: cc.Usage.CompletionTokens, TotalTokens: cc.Usage.TotalTokens},
		Latency:      latency,
	}
	switch a.FinishReason {
	case "length":
		return a, &PermanentError{Reason: wire.ReasonTruncated, StatusCode: 200, Message: "finish_reason=length: the answer was cut at max_completion_tokens"}
	case "content_filter":
		return a, &PermanentError{Reason: wire.ReasonContentFiltered, StatusCode: 200, Message: "finish_reason=content_filter"}
	}
	if strings.TrimSpace(a.Content) == "" {
		return a, &PermanentError{Reason: wire.ReasonEmptyResponse, StatusCode: 200, Message: "the answer is empty" + refusal(ch.Message.Refusal)}
	}
	return a, nil
}

func refusal(s string) string {
	if s == "" {
		return ""
	}
	return " (refusal: " + head(s) + ")"
}

// classify turns an openai-go error into one of the typed errors.
func classify(err error, resp *http.Response, timedOut bool) error {
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		msg := apiErr.Message
		if msg == "" {
			msg = strings.TrimSpace(apiErr.RawJSON())
		}
		code := apiErr.Code
		var h http.Header
		if apiErr.Response != nil {
			h = apiErr.Response.Header
		}
		return classifyStatus(apiErr.StatusCode, code, apiErr.Type, Redact(msg), h)
	}
	if timedOut {
		return &TransientError{Message: "timeout: " + Redact(err.Error())}
	}
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	// Connection errors and 2xx bodies that are not a chat completion (empty body,
	// an HTML page from a proxy): worth a bounded retry.
	return &TransientError{StatusCode: status, Message: Redact(err.Error())}
}

// classifyStatus implements the outcome table (docs/WIRE.md, docs/OPERATIONS.md) for HTTP errors.
// msg must already be redacted.
func classifyStatus(status int, code, typ, msg string, h http.Header) error {
	switch {
	case status == 429 && (code == "insufficient_quota" || typ == "insufficient_quota"):
		return &DeploymentError{StatusCode: status, Code: "insufficient_quota", Type: typ, Message: msg}
	case status == 429 || status == 503 || status == 529:
		return &CapacityError{StatusCode: status, RetryAfter: RetryAfter(h, time.Now()), BudgetSpent: BudgetSpent(h), Message: msg}
	case status == 401 || status == 403 || status == 404:
		return &DeploymentError{StatusCode: status, Code: code, Type: typ, Message: msg}
	case status == 408 || status == 409 || status >= 500:
		return &TransientError{StatusCode: status, Message: msg}
	case code == "context_length_exceeded":
		return &PermanentError{Reason: wire.ReasonContextLengthExceeded, StatusCode: status, Message: msg}
	case code == "content_filter" || strings.Contains(code, "content_filter"):
		return &PermanentError{Reason: wire.ReasonContentFiltered, StatusCode: status, Message: msg}
	default:
		return &PermanentError{Reason: wire.ReasonLLMCallFailed, StatusCode: status, Message: msg}
	}
}

// BudgetSpent reports whether the x-ratelimit-remaining-requests or
// x-ratelimit-remaining-tokens header reads 0 (absent headers: false).
func BudgetSpent(h http.Header) bool {
	for _, k := range []string{"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"} {
		if v := strings.TrimSpace(h.Get(k)); v != "" {
			if n, err := strconv.ParseFloat(v, 64); err == nil && n <= 0 {
				return true
			}
		}
	}
	return false
}

// RetryAfter reads retry-after-ms (Azure, OpenAI) or retry-after (seconds or an HTTP date).
func RetryAfter(h http.Header, now time.Time) time.Duration {
	if h == nil {
		return 0
	}
	if v := h.Get("retry-after-ms"); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 {
			return time.Duration(ms * float64(time.Millisecond))
		}
	}
	if v := h.Get("retry-after"); v != "" {
		if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
			return time.Duration(s * float64(time.Second))
		}
		if t, err := http.ParseTime(v); err == nil && t.After(now) {
			return t.Sub(now)
		}
	}
	return 0
}
