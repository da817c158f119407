package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/wire"
)

// TestCallSendsTheOpenAIBodyAndReadsTheAnswer pins the hand-built request body and the
// minimal answer decoding against what openai-go's own types sent and read.
func TestCallSendsTheOpenAIBodyAndReadsTheAnswer(t *testing.T) {
	temp := 0.5
	for _, tc := range []struct {
		name     string
		opts     Options
		req      wire.Request
		wantPath string
		wantBody string
	}{
		{
			name:     "openai json_object, unknown roles sent as user",
			opts:     Options{Provider: ProviderOpenAI},
			req:      wire.Request{Model: "m", Messages: []wire.Message{{Role: "system", Content: "be json"}, {Role: "weird", Content: "q"}}, ResponseFormat: wire.FormatStandard, MaxCompletionTokens: 7, Temperature: &temp},
			wantPath: "/v1/chat/completions",
			wantBody: `{"model":"m","messages":[{"role":"system","content":"be json"},{"role":"user","content":"q"}],"temperature":0.5,"max_completion_tokens":7,"response_format":{"type":"json_object"}}`,
		},
		{
			name:     "azure structured, routed by the deployment name",
			opts:     Options{Provider: ProviderAzure, AzureDeployment: "dep1", APIKey: "k"},
			req:      wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: "q"}}, ResponseFormat: wire.FormatStructured, Schema: map[string]any{"type": "object"}},
			wantPath: "/openai/deployments/dep1/chat/completions",
			wantBody: `{"model":"dep1","messages":[{"role":"user","content":"q"}],"response_format":{"type":"json_schema","json_schema":{"name":"answer","strict":true,"schema":{"type":"object"}}}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotPath, gotBody string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				gotPath, gotBody = r.URL.Path, string(b)
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"id":"x","model":"served","choices":[{"index":0,"message":{"role":"assistant","content":"{\"a\":1}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
			}))
			defer srv.Close()
			o := tc.opts
			o.Endpoint = srv.URL
			if o.Provider == ProviderOpenAI {
				o.Endpoint = srv.URL + "/v1"
			}
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			req := tc.req
			orig := append([]wire.Message(nil), req.Messages...)
			a, err := c.Call(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if gotPath != tc.wantPath {
				t.Errorf("path %s, want %s", gotPath, tc.wantPath)
			}
			if mustCanon(gotBody) != mustCanon(tc.wantBody) {
				t.Errorf("body %s\nwant %s", gotBody, tc.wantBody)
			}
			if a.Content != `{"a":1}` || a.Model != "served" || a.FinishReason != "stop" || a.Usage != (wire.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}) {
				t.Errorf("answer %+v", a)
			}
			for i := range orig {
				if req.Messages[i] != orig[i] {
					t.Errorf("the job's messages changed: %+v", req.Messages)
				}
			}
		})
	}
}

func mustCanon(s string) string {
	var v any
	_ = json.Unmarshal([]byte(s), &v)
	b, _ := json.Marshal(v)
	return string(b)
}

func TestCallClassifiesBadBodiesAndStatuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		check  func(error) bool
	}{
		{"html 200 is transient", 200, `<html>`, func(err error) bool { var e *TransientError; return errors.As(err, &e) && e.StatusCode == 200 }},
		{"no choices is transient", 200, `{"choices":[]}`, func(err error) bool { var e *TransientError; return errors.As(err, &e) }},
		{"429 is capacity", 429, `{"error":{"message":"slow down"}}`, func(err error) bool { var e *CapacityError; return errors.As(err, &e) && e.StatusCode == 429 }},
		{"400 is permanent", 400, `{"error":{"message":"bad","code":"context_length_exceeded"}}`, func(err error) bool {
			var e *PermanentError
			return errors.As(err, &e) && e.Reason == wire.ReasonContextLengthExceeded
		}},
		{"length is truncated", 200, `{"choices":[{"message":{"content":"{"},"finish_reason":"length"}]}`, func(err error) bool {
			var e *PermanentError
			return errors.As(err, &e) && e.Reason == wire.ReasonTruncated
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := callAnswered(t, tc.status, http.Header{"Content-Type": {"application/json"}}, tc.body)
			if !tc.check(err) {
				t.Fatalf("error %T %v", err, err)
			}
		})
	}
}

// benchSetup starts a server that answers every chat call at once with the same small
// completion, and returns it with an OpenAI client of it and the request the call
// benchmarks send.
func benchSetup(b *testing.B) (*httptest.Server, *Client, wire.Request) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x","model":"served","choices":[{"index":0,"message":{"role":"assistant","content":"{\"a\":1}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
	}))
	b.Cleanup(srv.Close)
	c, err := New(Options{Provider: ProviderOpenAI, Endpoint: srv.URL + "/v1"})
	if err != nil {
		b.Fatal(err)
	}
	req := wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: "Rate the case study against the criterion; answer in JSON."}}, ResponseFormat: wire.FormatStandard}
	return srv, c, req
}

// BenchmarkCall is one chat call over real HTTP to a server that answers at once: the
// client's cost per call (and the test server's, which is small and fixed).
func BenchmarkCall(b *testing.B) {
	_, c, req := benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Call(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawHTTPCall is BenchmarkCall's call made as the cost benchmark's raw loop
// makes it (internal/bench/rawloop.go): net/http alone, the same body, the content
// decoded. Against BenchmarkCall it prices what openai-go adds to a call.
func BenchmarkRawHTTPCall(b *testing.B) {
	srv, c, call := benchSetup(b)
	body, err := c.encode(call)
	if err != nil {
		b.Fatal(err)
	}
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var cc chatResponse
		err = json.NewDecoder(resp.Body).Decode(&cc)
		_ = resp.Body.Close()
		if err != nil || len(cc.Choices) == 0 {
			b.Fatalf("answer: %v", err)
		}
	}
}

// TestCallFollowsARedirectOnlyWithinTheEndpointsOrigin: a proxy's redirect to another
// path of the same server is followed with the body sent again; one to another host is
// refused and that host never sees the request (nor its credentials).
func TestCallFollowsARedirectOnlyWithinTheEndpointsOrigin(t *testing.T) {
	answer := `{"model":"served","choices":[{"message":{"content":"{\"a\":1}"},"finish_reason":"stop"}]}`
	var elsewhere int
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere++
		_, _ = io.WriteString(w, answer)
	}))
	defer other.Close()
	var gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/chat/completions":
			http.Redirect(w, r, "/v2/chat/completions", http.StatusTemporaryRedirect)
		case "/v2/chat/completions":
			b, _ := io.ReadAll(r.Body)
			gotBody = string(b)
			_, _ = io.WriteString(w, answer)
		case "/away/chat/completions":
			http.Redirect(w, r, other.URL+"/v1/chat/completions", http.StatusTemporaryRedirect)
		}
	}))
	defer srv.Close()
	req := wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: "q"}}}

	c, err := New(Options{Endpoint: srv.URL + "/v1", APIKey: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Call(context.Background(), req)
	if err != nil || a.Content != `{"a":1}` {
		t.Fatalf("same-origin redirect: answer %+v, error %v", a, err)
	}
	if !strings.Contains(gotBody, `"content":"q"`) {
		t.Errorf("the redirected request's body %q, want the request sent again", gotBody)
	}

	c, err = New(Options{Endpoint: srv.URL + "/away", APIKey: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Call(context.Background(), req)
	var te *TransientError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "another origin") {
		t.Errorf("cross-origin redirect: error %T %v, want a transient error naming the refused origin", err, err)
	}
	if elsewhere != 0 {
		t.Errorf("the other origin got %d requests, want none", elsewhere)
	}
}

// TestACallThatCannotConnectNamesTheURL: a transport error reads as http.Client's do.
func TestACallThatCannotConnectNamesTheURL(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	endpoint := srv.URL + "/v1"
	srv.Close()
	c, err := New(Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Call(context.Background(), wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: "q"}}})
	var te *TransientError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), `Post "`+endpoint+`/chat/completions"`) {
		t.Errorf("error %T %v, want a transient error naming the POST and its URL", err, err)
	}
}

// TestErrorBodiesOfOtherServersAreClassifiedByTheirStatus: self-hosted servers and
// gateways do not all send OpenAI's {"error":{"message",...}}: Ollama and TGI send
// {"error":"..."}, vLLM a flat {"object":"error","message",...}, FastAPI {"detail":...},
// a proxy an HTML page. The status still says what the error is (a 429 waits on the
// capacity budget, a 401 or 404 pauses the deployment, a 400 fails the query at once),
// and the message is the provider's text, not a decoding error of ours.
func TestErrorBodiesOfOtherServersAreClassifiedByTheirStatus(t *testing.T) {
	capacity := func(err error) bool { var e *CapacityError; return errors.As(err, &e) && e.RetryAfter == 2*time.Second }
	deployment := func(err error) bool { var e *DeploymentError; return errors.As(err, &e) }
	permanent := func(err error) bool {
		var e *PermanentError
		return errors.As(err, &e) && e.Reason == wire.ReasonLLMCallFailed && e.StatusCode == 400
	}
	transient := func(err error) bool { var e *TransientError; return errors.As(err, &e) }
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		check   func(error) bool
		message string
	}{
		{"TGI 429 with a string error", 429, `{"error":"Model is overloaded","error_type":"overloaded"}`, capacity, "Model is overloaded"},
		{"401 with a string error", 401, `{"error":"Unauthorized"}`, deployment, "Unauthorized"},
		{"Ollama 404 with a string error", 404, `{"error":"model \"llama9\" not found, try pulling it first"}`, deployment, `model "llama9" not found`},
		{"400 with a string error", 400, `{"error":"prompt is too long: 9000 tokens > 8192 maximum"}`, permanent, "prompt is too long"},
		{"vLLM's flat 400", 400, `{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}`, permanent, "maximum context length is 4096"},
		{"FastAPI 422", 422, `{"detail":[{"loc":["body","messages"],"msg":"field required"}]}`, func(err error) bool { var e *PermanentError; return errors.As(err, &e) && e.StatusCode == 422 }, "field required"},
		{"a proxy's HTML 504", 504, `<html><body>504 Gateway Time-out</body></html>`, transient, "504 Gateway Time-out"},
		{"a 200 that carries an error", 200, `{"error":{"message":"Upstream provider returned: model overloaded","code":502}}`, transient, "Upstream provider returned: model overloaded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := callAnswered(t, tc.status, http.Header{"Retry-After": {"2"}}, tc.body)
			if !tc.check(err) {
				t.Errorf("error %T %v: wrong class", err, err)
			}
			if err == nil || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %v, want the provider's message %q", err, tc.message)
			}
		})
	}
}

// callAnswered makes one call to a server that answers every request with status, the
// headers h and body, and returns the call's error.
func callAnswered(t *testing.T, status int, h http.Header, body string) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range h {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	c, err := New(Options{Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Call(context.Background(), wire.Request{Model: "m", Messages: []wire.Message{{Role: "user", Content: "q"}}})
	return err
}
