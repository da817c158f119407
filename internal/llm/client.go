// Package llm wraps openai-go for chat completions against OpenAI or Azure OpenAI
// deployments: one pooled HTTP transport per deployment, the SDK's own retries off
// (the queue retries), every failure classified into a typed error, and the answer
// parsed into typed output fields.
package llm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	json "github.com/goccy/go-json"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"

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

	opts := []option.RequestOption{
		option.WithMaxRetries(0),
		option.WithMiddleware(stampDispatch),
	}
	switch o.Provider {
	case ProviderOpenAI, "":
		opts = append(opts, option.WithHTTPClient(newDoer(tr)), option.WithBaseURL(strings.TrimSuffix(o.Endpoint, "/")+"/"))
		if o.APIKey != "" {
			opts = append(opts, option.WithAPIKey(o.APIKey))
		} else {
			opts = append(opts, option.WithAPIKey("none"))
		}
	case ProviderAzure:
		if o.APIVersion == "" {
			o.APIVersion = "2024-10-21"
		}
		// azure takes an *http.Client only: it checks every redirect's target itself.
		opts = append(opts, option.WithHTTPClient(&http.Client{Transport: tr}), azure.WithEndpoint(o.Endpoint, o.APIVersion), azure.WithAPIKey(o.APIKey))
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

// stampDispatch stamps the dispatch time and hands net/http the body as the in-memory
// reader it is: openai-go wraps every attempt's body in a reader of its own, which
// net/http cannot size, so it flushed the headers in a write of their own and copied
// the body in a second (two syscalls a request; one now, as for any bytes.Reader).
func stampDispatch(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	r.Header.Set(HeaderDispatch, strconv.FormatInt(time.Now().UnixNano(), 10))
	if r.GetBody != nil && r.ContentLength > 0 {
		if body, err := r.GetBody(); err == nil {
			wrapped := r.Body
			r.Body = body
			defer wrapped.Close() // openai-go's once-closer, closed as it would be by the transport
		}
	}
	return next(r)
}

// doer sends openai-go's requests to an OpenAI endpoint straight to the transport (the
// azure package takes an *http.Client only). An http.Client copies every request's
// headers for the redirects it might follow (a chat endpoint sends none): 6 % of the
// bytes a worker allocates at 0 latency. A redirect that does come (from a proxy in
// front of the endpoint) is sent again through the client, which follows it within the
// endpoint's origin only, as openai-go's own guard does: credentials never go to
// another host.
type doer struct {
	rt http.RoundTripper
	hc *http.Client
}

func newDoer(rt http.RoundTripper) doer {
	return doer{rt: rt, hc: &http.Client{Transport: rt, CheckRedirect: sameOrigin}}
}

func (d doer) Do(req *http.Request) (*http.Response, error) {
	resp, err := d.rt.RoundTrip(req)
	if err != nil { // named as http.Client names it: the method and the URL
		return nil, &url.Error{Op: urlErrorOp(req.Method), URL: req.URL.Redacted(), Err: err}
	}
	if !isRedirect(resp.StatusCode) || req.GetBody == nil {
		return resp, nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("follow redirect: %w", err)
	}
	again := req.Clone(req.Context())
	again.Body = body
	return d.hc.Do(again)
}

func urlErrorOp(method string) string {
	if method == "" {
		return "Get"
	}
	return method[:1] + strings.ToLower(method[1:])
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// sameOrigin lets the client follow up to 10 redirects within the first request's
// scheme and host.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if o := via[0].URL; req.URL.Scheme != o.Scheme || req.URL.Host != o.Host {
		return fmt.Errorf("redirect from %s to another origin %s://%s refused (set the endpoint to the server that answers)", o.Host, req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// Answer is a successful completion.
type Answer struct {
	Content      string
	FinishReason string
	Model        string
	Usage        wire.Usage
	Latency      time.Duration
	RateLimit    RateLimit // the answer's rate-limit headers
}

// Call sends one chat completion with its own deadline. Errors are one of
// *CapacityError, *TransientError, *DeploymentError, *PermanentError, or ctx's error
// when the caller's context ended.
//
// The request body is encoded here, once, from a plain struct, and the answer decoded
// into a struct of the few fields used: openai-go's params and response types marshal
// and unmarshal by reflection over unions and metadata (a fifth of a worker's CPU at 0
// latency). openai-go still sends it: its middleware, auth and Azure deployment routing
// (which reads "model" from the body) apply unchanged.
func (c *Client) Call(ctx context.Context, req wire.Request) (*Answer, error) {
	body, err := c.encode(req)
	if err != nil {
		return nil, &PermanentError{Reason: wire.ReasonLLMCallFailed, Message: "encode request: " + err.Error()}
	}
	cctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	start := time.Now()
	var resp *http.Response
	err = c.oc.Post(cctx, "chat/completions", nil, &resp, option.WithRequestBody("application/json", body))
	if err != nil {
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, classify(err, resp, cctx.Err() != nil)
	}
	var cc chatResponse
	err = json.NewDecoder(resp.Body).Decode(&cc)
	_ = resp.Body.Close()
	latency := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if cctx.Err() != nil {
			return nil, &TransientError{Message: "timeout: " + Redact(err.Error())}
		}
		// A 2xx body that is not a chat completion (empty, an HTML page from a proxy):
		// worth a bounded retry.
		return nil, &TransientError{StatusCode: resp.StatusCode, Message: "error parsing response json: " + Redact(err.Error())}
	}
	if len(cc.Choices) == 0 {
		msg := "completion has no choices"
		if len(cc.Error) > 0 && string(cc.Error) != "null" { // a gateway's error with a 200
			msg += ": error " + errorText(cc.Error)
		}
		return nil, &TransientError{StatusCode: 200, Message: Redact(msg)}
	}
	ch := cc.Choices[0]
	a := &Answer{
		Content:      ch.Message.Content,
		FinishReason: ch.FinishReason,
		Model:        cc.Model,
		Usage:        wire.Usage{PromptTokens: cc.Usage.PromptTokens, CompletionTokens: cc.Usage.CompletionTokens, TotalTokens: cc.Usage.TotalTokens},
		Latency:      latency,
		RateLimit:    ParseRateLimit(resp.Header),
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

// chatRequest is the body of POST /chat/completions, as much of it as a job sets.
type chatRequest struct {
	Model               string         `json:"model"`
	Messages            []wire.Message `json:"messages"`
	Temperature         *float64       `json:"temperature,omitempty"`
	MaxCompletionTokens int            `json:"max_completion_tokens,omitempty"`
	ResponseFormat      responseFormat `json:"response_format"`
}

type responseFormat struct {
	Type       string      `json:"type"` // json_object | json_schema
	JSONSchema *jsonSchema `json:"json_schema,omitempty"`
}

type jsonSchema struct {
	Name   string         `json:"name"`
	Strict bool           `json:"strict"`
	Schema map[string]any `json:"schema,omitempty"`
}

// chatResponse is the part of a chat completion the worker reads.
type chatResponse struct {
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Content string `json:"content"`
			Refusal string `json:"refusal"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
		TotalTokens      int64 `json:"total_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"` // a gateway's error sent with a 200
}

// encode builds the request body: the job's model (or the Azure deployment name),
// its messages with roles other than system, assistant and developer sent as user,
// and a JSON response format (json_object, or a strict json_schema named "answer").
// Model is the model name a call of req sends: the Azure deployment name when the
// deployment sets one, else the job's model.
func (c *Client) Model(req wire.Request) string {
	if c.opts.Provider == ProviderAzure && c.opts.AzureDeployment != "" {
		return c.opts.AzureDeployment
	}
	return req.Model
}

func (c *Client) encode(req wire.Request) ([]byte, error) {
	body := chatRequest{Model: c.Model(req), Messages: req.Messages, Temperature: req.Temperature, MaxCompletionTokens: max(req.MaxCompletionTokens, 0)}
	for i, m := range body.Messages {
		switch m.Role {
		case "system", "assistant", "developer", "user":
			continue
		}
		if &body.Messages[0] == &req.Messages[0] {
			body.Messages = slices.Clone(req.Messages) // the job's own slice stays as it is
		}
		body.Messages[i].Role = "user"
	}
	switch req.ResponseFormat {
	case wire.FormatStructured:
		body.ResponseFormat = responseFormat{Type: "json_schema", JSONSchema: &jsonSchema{Name: "answer", Strict: true, Schema: req.Schema}}
	default:
		body.ResponseFormat = responseFormat{Type: "json_object"}
	}
	return appendChatRequest(make([]byte, 0, req.SizeHint()), body)
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
		if msg == "" { // not OpenAI's {"error":{"message"}}: vLLM's flat body, FastAPI's detail, a proxy's page
			msg = bodyMessage(apiErr.Response)
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
	if resp != nil && resp.StatusCode >= 400 {
		// openai-go could not read the error body ({"error":"..."} of Ollama, TGI and
		// gateways: its "error" is not an object). The status still says what it is.
		return classifyStatus(resp.StatusCode, "", "", Redact(bodyMessage(resp)), resp.Header)
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
		return &CapacityError{StatusCode: status, RetryAfter: RetryAfter(h, time.Now()), BudgetSpent: ParseRateLimit(h).Spent(), Message: msg}
	case status == 404 && code == "model_not_found":
		// The job's model, not the deployment: one pipeline's unknown model fails its
		// own queries; pausing the deployment would stall every run on it.
		return &PermanentError{Reason: wire.ReasonModelNotFound, StatusCode: status, Message: msg}
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

// maxErrorMessage bounds the provider's error text kept in a message.
const maxErrorMessage = 1000

// bodyMessage is the text of an error answer that is not OpenAI's {"error":{"message"}}:
// its "error" when a string, its "message" or "detail" (vLLM, FastAPI), else the body's
// own text (a proxy's page), at most maxErrorMessage bytes. openai-go keeps the body it
// read for the error in resp.Body.
func bodyMessage(resp *http.Response) string {
	if resp == nil || resp.Body == nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return errorText(b)
}

// errorText is the message of an error value: a JSON string, an object's "message",
// "error" or "detail", or the text itself.
func errorText(b []byte) string {
	var v any
	if err := json.Unmarshal(b, &v); err == nil {
		switch x := v.(type) {
		case string:
			return clip(x)
		case map[string]any:
			for _, k := range []string{"message", "error", "detail"} {
				switch m := x[k].(type) {
				case nil:
				case string:
					if m != "" {
						return clip(m)
					}
				default:
					if t := errorText(mustMarshal(m)); t != "" {
						return t
					}
				}
			}
		}
	}
	return clip(strings.Join(strings.Fields(string(b)), " "))
}

func mustMarshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// clip cuts s to maxErrorMessage bytes at a rune boundary.
func clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= maxErrorMessage {
		return s
	}
	cut := maxErrorMessage
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
