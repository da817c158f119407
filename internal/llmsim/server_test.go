package llmsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

const testKey = "sk-test"

// bundle is one simulator on a real 127.0.0.1 port and a client for it.
type bundle struct {
	srv    *Server
	url    string
	client *http.Client
	clock  *fakeClock // nil when the server runs on real time
}

func setup(t *testing.T, cfg Config) *bundle {
	t.Helper()
	return setupWith(t, cfg, nil)
}

// setupClock runs the server on a fake clock (limiter and 429 bursts).
func setupClock(t *testing.T, cfg Config) *bundle {
	t.Helper()
	return setupWith(t, cfg, newFakeClock())
}

func setupWith(t *testing.T, cfg Config, clock *fakeClock) *bundle {
	t.Helper()
	now := time.Now
	if clock != nil {
		now = clock.Now
	}
	srv, err := newServer(cfg, zerolog.Nop(), now)
	if err != nil {
		t.Fatalf("newServer: %v", err)
	}
	url, stop, err := srv.serveLocal()
	if err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(stop)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &bundle{srv: srv, url: url, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, clock: clock}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (b *bundle) do(t *testing.T, ctx context.Context, method, path string, header map[string]string, body string) (response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, b.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

func (b *bundle) post(t *testing.T, path string, header map[string]string, body string) response {
	t.Helper()
	r, err := b.do(t, context.Background(), http.MethodPost, path, header, body)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return r
}

func (b *bundle) get(t *testing.T, path string, into any) {
	t.Helper()
	r, err := b.do(t, context.Background(), http.MethodGet, path, nil, "")
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", path, r.status, r.body)
	}
	if err := json.Unmarshal(r.body, into); err != nil {
		t.Fatalf("GET %s: decode %s: %v", path, r.body, err)
	}
}

// chat posts prompt to the OpenAI route with the test key.
func (b *bundle) chat(t *testing.T, prompt string) response {
	t.Helper()
	return b.post(t, "/v1/chat/completions", bearer(testKey), chatBody("gpt-test", prompt))
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }

func chatBody(model string, prompts ...string) string {
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	req := struct {
		Model    string `json:"model,omitempty"`
		Messages []msg  `json:"messages"`
	}{Model: model}
	for _, p := range prompts {
		req.Messages = append(req.Messages, msg{Role: "user", Content: p})
	}
	b, _ := json.Marshal(req)
	return string(b)
}

type wireCompletion struct {
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func completion(t *testing.T, r response) wireCompletion {
	t.Helper()
	var c wireCompletion
	if err := json.Unmarshal(r.body, &c); err != nil {
		t.Fatalf("decode completion %q: %v", r.body, err)
	}
	if len(c.Choices) != 1 {
		t.Fatalf("completion has %d choices, want 1: %s", len(c.Choices), r.body)
	}
	return c
}

type wireError struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	} `json:"error"`
}

func errorBody(t *testing.T, r response) wireError {
	t.Helper()
	var e wireError
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("decode error body %q: %v", r.body, err)
	}
	return e
}

const scorePhrase = FieldsPhrase + `{"score": "integer", "rationale": "string", "label": "enum:yes|no"}`

func TestRoutesAndKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Keys: []string{testKey, "other"}, Deployments: []string{"gpt4o"}})
	body := chatBody("gpt-test", "hi "+scorePhrase)
	azure := "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
	tests := []struct {
		name     string
		path     string
		header   map[string]string
		body     string
		status   int
		wantCode string
	}{
		{"openai with bearer key", "/v1/chat/completions", bearer(testKey), body, 200, ""},
		{"openai with second key", "/v1/chat/completions", bearer("other"), body, 200, ""},
		{"openai without key", "/v1/chat/completions", nil, body, 401, "invalid_api_key"},
		{"openai with unknown key", "/v1/chat/completions", bearer("nope"), body, 401, "invalid_api_key"},
		{"openai ignores api-key header", "/v1/chat/completions", map[string]string{"api-key": testKey}, body, 401, "invalid_api_key"},
		{"azure with api-key", azure, map[string]string{"api-key": testKey}, body, 200, ""},
		{"azure with bearer", azure, bearer(testKey), body, 200, ""},
		{"azure with unknown key", azure, map[string]string{"api-key": "nope"}, body, 401, "invalid_api_key"},
		{"azure without api-version", "/openai/deployments/gpt4o/chat/completions", map[string]string{"api-key": testKey}, body, 400, "BadRequest"},
		{"azure unknown deployment", "/openai/deployments/nope/chat/completions?api-version=x", map[string]string{"api-key": testKey}, body, 404, "DeploymentNotFound"},
		{"bad JSON body", "/v1/chat/completions", bearer(testKey), `{"model":`, 400, ""},
		{"no messages", "/v1/chat/completions", bearer(testKey), `{"model":"m","messages":[]}`, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.post(t, tt.path, tt.header, tt.body)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if tt.status != 200 {
				e := errorBody(t, r)
				if e.Error.Code != tt.wantCode || e.Error.Message == "" {
					t.Errorf("error %+v, want code %q and a message", e.Error, tt.wantCode)
				}
				if tt.status == 401 && e.Error.Type != "invalid_request_error" {
					t.Errorf("401 type %q, want invalid_request_error", e.Error.Type)
				}
				return
			}
			c := completion(t, r)
			if c.Object != "chat.completion" || c.Model != "gpt-test" || c.Choices[0].Message.Role != "assistant" || c.Choices[0].FinishReason != "stop" {
				t.Errorf("completion %+v, want a chat.completion from gpt-test that stopped", c)
			}
			if c.Usage.PromptTokens == 0 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
				t.Errorf("usage %+v, want prompt tokens and a consistent total", c.Usage)
			}
			got := decodeObject(t, c.Choices[0].Message.Content)
			if jsonKind(got["score"]) != "integer" || jsonKind(got["rationale"]) != "string" || (got["label"] != "yes" && got["label"] != "no") {
				t.Errorf("content %v does not follow the requested fields", got)
			}
		})
	}
}

func TestAzureModelDefaultsToDeployment(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	r := b.post(t, "/openai/deployments/my-dep/chat/completions?api-version=2024-10-21", nil, chatBody("", "hi"))
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if c := completion(t, r); c.Model != "my-dep" {
		t.Errorf("model %q, want the deployment name", c.Model)
	}
	if diff := cmp.Diff(map[string]int64{"my-dep": 1}, b.srv.Stats().ByDeployment); diff != "" {
		t.Errorf("by deployment (-want +got):\n%s", diff)
	}
}

func TestContentPartsAndSchemaOverHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	body := `{
	  "model": "m",
	  "messages": [
	    {"role": "system", "content": [{"type": "text", "text": "You rate rows."}]},
	    {"role": "user", "content": [{"type": "text", "text": "Row 7 [[mark:r7.q1]]"}, {"type": "image_url", "image_url": {"url": "x"}}]}
	  ],
	  "temperature": 0,
	  "max_completion_tokens": 100,
	  "response_format": {"type": "json_schema", "json_schema": {"name": "out", "strict": true, "schema": {
	    "type": "object",
	    "properties": {"count": {"type": "integer"}, "note": {"type": "string"}, "kind": {"type": "string", "enum": ["a", "b", "c"]}},
	    "required": ["count", "note", "kind"], "additionalProperties": false
	  }}}
	}`
	r := b.post(t, "/v1/chat/completions", nil, body)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	got := decodeObject(t, completion(t, r).Choices[0].Message.Content)
	if jsonKind(got["count"]) != "integer" {
		t.Errorf("count = %#v, want an integer", got["count"])
	}
	if s, _ := got["note"].(string); !strings.Contains(s, "r7.q1") {
		t.Errorf("note = %#v, want a string carrying the marker", got["note"])
	}
	if k := got["kind"]; k != "a" && k != "b" && k != "c" {
		t.Errorf("kind = %#v, want an enum value", k)
	}
}

func TestMarkersReachEveryStringField(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	phrase := FieldsPhrase + `{"a": "string", "b": "string", "n": "integer", "e": "enum:x|y"}`
	for row := range 3 {
		for q := range 2 {
			m1, m2 := fmt.Sprintf("r%d.q%d", row, q), fmt.Sprintf("run-%d", row)
			r := b.chat(t, fmt.Sprintf("Row %d [[mark:%s]] [[mark:%s]]\n%s", row, m1, m2, phrase))
			got := decodeObject(t, completion(t, r).Choices[0].Message.Content)
			for _, f := range []string{"a", "b"} {
				s, _ := got[f].(string)
				if !strings.Contains(s, m1) || !strings.Contains(s, m2) {
					t.Errorf("row %d query %d: field %s = %q, want both markers %q and %q", row, q, f, s, m1, m2)
				}
			}
		}
	}
}

func TestSameRequestSameAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	first := completion(t, b.chat(t, "Row 1 "+scorePhrase)).Choices[0].Message.Content
	second := completion(t, b.chat(t, "Row 1 "+scorePhrase)).Choices[0].Message.Content
	if first != second {
		t.Errorf("same request answered %s then %s", first, second)
	}
}

func TestFaultWireShapes(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{InjectedRetryAfter: 1500 * time.Millisecond})
	type want struct {
		status       int
		contentType  string
		retryAfter   string // "" = header absent
		retryAfterMS string
		finish       string // for 200 JSON completions
		check        func(t *testing.T, content string)
		emptyBody    bool
	}
	isJSONObject := func(t *testing.T, content string) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal([]byte(content), &m); err != nil {
			t.Fatalf("content %q is not a JSON object: %v", content, err)
		}
		return m
	}
	tests := []struct {
		kind string
		want want
	}{
		{Fault429, want{status: 429, contentType: "application/json", retryAfter: "2", retryAfterMS: "1500"}},
		{Fault503, want{status: 503, contentType: "application/json", retryAfter: "2", retryAfterMS: "1500"}},
		{Fault529, want{status: 529, contentType: "application/json", retryAfter: "2", retryAfterMS: "1500"}},
		{Fault500, want{status: 500, contentType: "application/json"}},
		{Fault502, want{status: 502, contentType: "application/json"}},
		{Fault504, want{status: 504, contentType: "application/json"}},
		{FaultInvalidJSON, want{status: 200, contentType: "application/json", finish: "stop", check: func(t *testing.T, c string) {
			if json.Valid([]byte(c)) || c == "" {
				t.Errorf("content %q is valid JSON", c)
			}
		}}},
		{FaultTruncated, want{status: 200, contentType: "application/json", finish: "length", check: func(t *testing.T, c string) {
			if json.Valid([]byte(c)) || !strings.HasPrefix(c, "{") {
				t.Errorf("content %q is not a cut JSON object", c)
			}
		}}},
		{FaultEmptyBody, want{status: 200, contentType: "application/json", emptyBody: true}},
		{FaultMissingField, want{status: 200, contentType: "application/json", finish: "stop", check: func(t *testing.T, c string) {
			if m := isJSONObject(t, c); len(m) != 2 {
				t.Errorf("content %v, want two of the three fields", m)
			}
		}}},
		{FaultWrongType, want{status: 200, contentType: "application/json", finish: "stop", check: func(t *testing.T, c string) {
			m := isJSONObject(t, c)
			_, scoreOK := m["score"].(float64)
			_, ratOK := m["rationale"].(string)
			label, _ := m["label"].(string)
			if len(m) != 3 || (scoreOK && ratOK && (label == "yes" || label == "no")) {
				t.Errorf("content %v, want three fields, one of the wrong type", m)
			}
		}}},
		{FaultWrongContentType, want{status: 200, contentType: "text/html; charset=utf-8"}},
		{FaultContentFilter, want{status: 200, contentType: "application/json", finish: "content_filter"}},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			t.Parallel()
			r := b.chat(t, fmt.Sprintf("Row 1 [[fault:%s]] %s", tt.kind, scorePhrase))
			w := tt.want
			if r.status != w.status {
				t.Fatalf("status %d, want %d: %s", r.status, w.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != w.contentType {
				t.Errorf("Content-Type %q, want %q", ct, w.contentType)
			}
			got := [2]string{r.header.Get("retry-after"), r.header.Get("retry-after-ms")}
			if diff := cmp.Diff([2]string{w.retryAfter, w.retryAfterMS}, got); diff != "" {
				t.Errorf("retry-after, retry-after-ms (-want +got):\n%s", diff)
			}
			switch {
			case w.emptyBody:
				if len(r.body) != 0 {
					t.Errorf("body %q, want empty", r.body)
				}
			case w.status != 200:
				if e := errorBody(t, r); e.Error.Message == "" {
					t.Errorf("error body %s has no message", r.body)
				}
			case w.finish != "":
				c := completion(t, r)
				if c.Choices[0].FinishReason != w.finish {
					t.Errorf("finish_reason %q, want %q", c.Choices[0].FinishReason, w.finish)
				}
				if w.check != nil {
					w.check(t, c.Choices[0].Message.Content)
				}
			}
			log := b.srv.Requests(0)
			found := false
			for _, e := range log {
				if e.Fault == tt.kind {
					found = true
				}
			}
			if !found {
				t.Errorf("no request log entry with fault %q", tt.kind)
			}
		})
	}
}

func TestInjected429Body(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	r := b.chat(t, "[[fault:429]]")
	e := errorBody(t, r)
	if e.Error.Code != "429" || !strings.Contains(e.Error.Message, "Please retry after 1 seconds") {
		t.Errorf("429 body %+v, want the Azure-style rate limit message", e.Error)
	}
	if got := [2]string{r.header.Get("retry-after"), r.header.Get("retry-after-ms")}; got != [2]string{"1", "1000"} {
		t.Errorf("retry-after, retry-after-ms = %v, want the 1s default", got)
	}
	st := b.srv.Stats()
	if st.Injected429 != 1 || st.Limited != 0 || st.ByFault[Fault429] != 1 {
		t.Errorf("stats %+v, want one injected 429 and nothing limited", st)
	}
}

func TestFaultPercentages(t *testing.T) {
	t.Parallel()
	run := func(seed int64) []int {
		b := setup(t, Config{Seed: seed, Faults: Faults{Fault500: 30, Fault503: 20}})
		var statuses []int
		for range 200 {
			statuses = append(statuses, b.chat(t, "hi").status)
		}
		return statuses
	}
	first := run(7)
	count := map[int]int{}
	for _, s := range first {
		count[s]++
	}
	if count[500] < 35 || count[500] > 85 || count[503] < 20 || count[503] > 60 || count[200] < 70 {
		t.Errorf("status counts %v over 200 requests, want about 60 x 500, 40 x 503, 100 x 200", count)
	}
	if diff := cmp.Diff(first, run(7)); diff != "" {
		t.Errorf("same seed, different faults (-first +second):\n%s", diff)
	}
}

func TestFaultsOnTheFirstTryOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Seed: 3, Faults: Faults{FaultInvalidJSON: 100}, FirstTryOnly: true})
	t.Run("a request's first try draws its fault", func(t *testing.T) {
		if c := completion(t, b.chat(t, "rate this")); json.Valid([]byte(c.Choices[0].Message.Content)) {
			t.Errorf("first try answered %q, want invalid JSON", c.Choices[0].Message.Content)
		}
	})
	t.Run("the same request again draws none", func(t *testing.T) {
		if c := completion(t, b.chat(t, "rate this")); !json.Valid([]byte(c.Choices[0].Message.Content)) {
			t.Errorf("second try answered %q, want JSON", c.Choices[0].Message.Content)
		}
	})
	t.Run("a re-ask that appends a message is a retry too", func(t *testing.T) {
		r := b.post(t, "/v1/chat/completions", bearer(testKey), chatBody("gpt-test", "rate this", "that was not JSON"))
		if c := completion(t, r); !json.Valid([]byte(c.Choices[0].Message.Content)) {
			t.Errorf("re-ask answered %q, want JSON", c.Choices[0].Message.Content)
		}
	})
	t.Run("another request is a first try", func(t *testing.T) {
		if c := completion(t, b.chat(t, "rate that")); json.Valid([]byte(c.Choices[0].Message.Content)) {
			t.Errorf("first try answered %q, want invalid JSON", c.Choices[0].Message.Content)
		}
	})
	t.Run("first_try_only is set and reported by /admin", func(t *testing.T) {
		off := b.post(t, "/admin", nil, `{"first_try_only":false}`)
		if off.status != http.StatusOK {
			t.Fatalf("POST /admin: %d %s", off.status, off.body)
		}
		var got Settings
		b.get(t, "/admin", &got)
		if got.FirstTryOnly {
			t.Errorf("GET /admin: first_try_only still true")
		}
		if c := completion(t, b.chat(t, "rate this")); json.Valid([]byte(c.Choices[0].Message.Content)) {
			t.Errorf("with first_try_only off, a repeat answered %q, want invalid JSON", c.Choices[0].Message.Content)
		}
	})
}

func TestHangEndsWhenClientGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.do(t, ctx, http.MethodPost, "/v1/chat/completions", nil, chatBody("m", "[[fault:hang]] [[mark:h1]]"))
		errc <- err
	}()
	waitFor(t, func() bool { return b.srv.active.Load() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("hang request err = %v, want the client's cancellation", err)
	}
	entry := waitForLog(t, b.srv, func(e RequestLog) bool { return e.Marker == "h1" })
	if entry.Status != statusClientClosed || entry.Fault != FaultHang {
		t.Errorf("log entry %+v, want status 499 with fault hang", entry)
	}
}

func TestLatencyWaitEndsWithClient(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Latency: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.do(t, ctx, http.MethodPost, "/v1/chat/completions", nil, chatBody("m", "[[mark:slow]]"))
		errc <- err
	}()
	waitFor(t, func() bool { return b.srv.active.Load() == 1 })
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("request with an hour of latency answered")
	}
	if e := waitForLog(t, b.srv, func(e RequestLog) bool { return e.Marker == "slow" }); e.Status != statusClientClosed {
		t.Errorf("log entry %+v, want status 499", e)
	}
}

// waitForLog polls the request log until an entry matches.
func waitForLog(t *testing.T, s *Server, match func(RequestLog) bool) RequestLog {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range s.Requests(0) {
			if match(e) {
				return e
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no matching request log entry within 5s")
	return RequestLog{}
}

func TestLimiterOverHTTP(t *testing.T) {
	t.Parallel()
	b := setupClock(t, Config{RPS: 50, Burst: 5, Keys: []string{testKey}})
	var statuses []int
	for range 8 {
		statuses = append(statuses, b.chat(t, "hi").status)
	}
	if diff := cmp.Diff([]int{200, 200, 200, 200, 200, 429, 429, 429}, statuses); diff != "" {
		t.Fatalf("statuses with a frozen clock (-want +got):\n%s", diff)
	}

	r := b.chat(t, "hi")
	want := map[string]string{"retry-after": "1", "retry-after-ms": "20", "x-ratelimit-remaining-requests": "0"}
	got := map[string]string{}
	for k := range want {
		got[k] = r.header.Get(k)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("429 headers (-want +got):\n%s", diff)
	}
	if e := errorBody(t, r); e.Error.Code != "429" || !strings.Contains(e.Error.Message, "call rate limit") || !strings.Contains(e.Error.Message, "Please retry after 1 seconds") {
		t.Errorf("429 body %+v, want the Azure call rate limit message", e.Error)
	}

	b.clock.Advance(20 * time.Millisecond)
	if r := b.chat(t, "hi"); r.status != 200 || r.header.Get("x-ratelimit-remaining-requests") != "0" {
		t.Errorf("after 20ms: status %d remaining %q, want 200 with 0 left", r.status, r.header.Get("x-ratelimit-remaining-requests"))
	}
	b.clock.Advance(time.Second)
	if r := b.chat(t, "hi"); r.status != 200 || r.header.Get("x-ratelimit-remaining-requests") != "4" {
		t.Errorf("after 1s: status %d remaining %q, want 200 with 4 left", r.status, r.header.Get("x-ratelimit-remaining-requests"))
	}
	st := b.srv.Stats()
	if st.Limited != 4 || st.Injected429 != 0 || st.OK != 7 || st.ByStatus[429] != 4 {
		t.Errorf("stats %+v, want 4 limited and 7 ok", st)
	}
	for _, e := range b.srv.Requests(0) {
		if e.Limited != (e.Status == 429) {
			t.Errorf("log entry %+v: limited must match the 429s", e)
		}
	}
}

func TestTokenLimitOverHTTP(t *testing.T) {
	t.Parallel()
	b := setupClock(t, Config{TPM: 600}) // 10 tokens/s, capacity 100
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":60}`
	first := b.post(t, "/v1/chat/completions", nil, body)
	if first.status != 200 || first.header.Get("x-ratelimit-remaining-tokens") != "40" {
		t.Fatalf("first: status %d remaining tokens %q, want 200 and 40", first.status, first.header.Get("x-ratelimit-remaining-tokens"))
	}
	second := b.post(t, "/v1/chat/completions", nil, body)
	if second.status != 429 || second.header.Get("retry-after-ms") != "2000" || second.header.Get("retry-after") != "2" {
		t.Fatalf("second: status %d headers %v, want 429 after 2s", second.status, second.header)
	}
	if e := errorBody(t, second); !strings.Contains(e.Error.Message, "token rate limit") {
		t.Errorf("429 message %q, want it to name the token rate limit", e.Error.Message)
	}
}

// rateLimitHeaders collects the x-ratelimit-* headers of a response, keyed
// in lower case.
func rateLimitHeaders(h http.Header) map[string]string {
	got := map[string]string{}
	for k := range h {
		if k := strings.ToLower(k); strings.HasPrefix(k, "x-ratelimit-") {
			got[k] = h.Get(k)
		}
	}
	return got
}

// openAIHeaders is the OpenAI set with both a request and a token limit.
func openAIHeaders(limitReq, remainingReq, resetReq, limitTok, remainingTok, resetTok string) map[string]string {
	return map[string]string{
		"x-ratelimit-limit-requests":     limitReq,
		"x-ratelimit-remaining-requests": remainingReq,
		"x-ratelimit-reset-requests":     resetReq,
		"x-ratelimit-limit-tokens":       limitTok,
		"x-ratelimit-remaining-tokens":   remainingTok,
		"x-ratelimit-reset-tokens":       resetTok,
	}
}

// tokensBody is a chat request the limiter charges exactly maxTokens tokens
// ("hi" is under 4 characters).
func tokensBody(maxTokens int) string {
	return fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":%d}`, maxTokens)
}

func TestRateLimitHeaderSets(t *testing.T) {
	t.Parallel()
	// 40 requests/s with a burst of 2 and 6000 tokens/min (100/s, capacity
	// 1000); each request costs 400 tokens. Two answers, then the limiter's
	// 429: both buckets are short, tokens bind.
	azure := func(requests, tokens string) map[string]string {
		return map[string]string{"x-ratelimit-remaining-requests": requests, "x-ratelimit-remaining-tokens": tokens}
	}
	tests := []struct {
		set     string
		first   map[string]string // x-ratelimit-* headers of the first 200
		limited map[string]string // and of the 429 after the second 200
	}{
		{set: "", first: azure("1", "600"), limited: azure("0", "200")},
		{set: RateLimitHeadersAzure, first: azure("1", "600"), limited: azure("0", "200")},
		{set: RateLimitHeadersOpenAI,
			first:   openAIHeaders("2400", "1", "25ms", "6000", "600", "4s"),
			limited: openAIHeaders("2400", "0", "50ms", "6000", "200", "8s")},
		{set: RateLimitHeadersNone, first: map[string]string{}, limited: map[string]string{}},
	}
	for _, tt := range tests {
		t.Run("set "+strconv.Quote(tt.set), func(t *testing.T) {
			t.Parallel()
			b := setupClock(t, Config{RPS: 40, Burst: 2, TPM: 6000, RateLimitHeaders: tt.set})
			var rs []response
			for range 3 {
				rs = append(rs, b.post(t, "/v1/chat/completions", nil, tokensBody(400)))
			}
			if got := []int{rs[0].status, rs[1].status, rs[2].status}; !cmp.Equal(got, []int{200, 200, 429}) {
				t.Fatalf("statuses %v, want [200 200 429]", got)
			}
			if diff := cmp.Diff(tt.first, rateLimitHeaders(rs[0].header)); diff != "" {
				t.Errorf("200 x-ratelimit-* headers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.limited, rateLimitHeaders(rs[2].header)); diff != "" {
				t.Errorf("429 x-ratelimit-* headers (-want +got):\n%s", diff)
			}
			retry := [2]string{rs[2].header.Get("retry-after"), rs[2].header.Get("retry-after-ms")}
			if retry != [2]string{"2", "2000"} {
				t.Errorf("429 retry-after, retry-after-ms = %v, want [2 2000] in every set", retry)
			}
		})
	}
}

func TestOpenAIRateLimitValues(t *testing.T) {
	t.Parallel()
	// 40 requests/s, burst 2 (limit 2400/min); 6000 tokens/min, capacity 1000.
	b := setupClock(t, Config{RPS: 40, Burst: 2, TPM: 6000, RateLimitHeaders: RateLimitHeadersOpenAI})
	steps := []struct {
		name      string
		advance   time.Duration
		maxTokens int
		status    int
		want      map[string]string
	}{
		{"first answer takes 1 of 2 requests and 400 of 1000 tokens", 0, 400, 200,
			openAIHeaders("2400", "1", "25ms", "6000", "600", "4s")},
		{"second answer empties the request bucket; resets grow", 0, 400, 200,
			openAIHeaders("2400", "0", "50ms", "6000", "200", "8s")},
		{"limiter 429 takes nothing", 0, 400, 429,
			openAIHeaders("2400", "0", "50ms", "6000", "200", "8s")},
		{"10ms later both buckets refilled a little; resets shrink", 10 * time.Millisecond, 1, 429,
			openAIHeaders("2400", "0", "40ms", "6000", "201", "7.99s")},
		{"1s later the request bucket is full: reset 0s", time.Second, 1000, 429,
			openAIHeaders("2400", "2", "0s", "6000", "301", "6.99s")},
		{"10s later a 1000-token answer empties the token bucket", 10 * time.Second, 1000, 200,
			openAIHeaders("2400", "1", "25ms", "6000", "0", "10s")},
	}
	for _, st := range steps {
		b.clock.Advance(st.advance)
		r := b.post(t, "/v1/chat/completions", nil, tokensBody(st.maxTokens))
		if r.status != st.status {
			t.Fatalf("%s: status %d, want %d: %s", st.name, r.status, st.status, r.body)
		}
		if diff := cmp.Diff(st.want, rateLimitHeaders(r.header)); diff != "" {
			t.Errorf("%s: x-ratelimit-* headers (-want +got):\n%s", st.name, diff)
		}
	}
}

func TestOpenAIRateLimitHeadersPerLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want map[string]string // after one answer
	}{
		{"rpm is the limit as is", Config{RPM: 600},
			map[string]string{"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-requests": "100ms"}},
		{"fractional rps rounds to whole requests per minute", Config{RPS: 2.5, Burst: 3},
			map[string]string{"x-ratelimit-limit-requests": "150", "x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "400ms"}},
		{"token limit only: no request headers", Config{TPM: 600},
			map[string]string{"x-ratelimit-limit-tokens": "600", "x-ratelimit-remaining-tokens": "90", "x-ratelimit-reset-tokens": "1s"}},
		{"no limit: no headers", Config{}, map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			cfg.RateLimitHeaders = RateLimitHeadersOpenAI
			b := setupClock(t, cfg)
			r := b.post(t, "/v1/chat/completions", nil, tokensBody(10))
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if diff := cmp.Diff(tt.want, rateLimitHeaders(r.header)); diff != "" {
				t.Errorf("x-ratelimit-* headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInjectedFaultsCarryNoRateLimitHeaders(t *testing.T) {
	t.Parallel()
	for _, set := range append([]string{""}, RateLimitHeaderSets...) {
		for _, kind := range []string{Fault429, Fault503, Fault529} {
			t.Run(fmt.Sprintf("set %q fault %s", set, kind), func(t *testing.T) {
				t.Parallel()
				b := setupClock(t, Config{RPS: 40, Burst: 2, TPM: 6000, RateLimitHeaders: set})
				r := b.chat(t, "[[fault:"+kind+"]]")
				if r.status != statusFaults[kind] {
					t.Fatalf("status %d, want %d", r.status, statusFaults[kind])
				}
				if got := rateLimitHeaders(r.header); len(got) != 0 {
					t.Errorf("injected %s carries %v, want no x-ratelimit-* header", kind, got)
				}
				if r.header.Get("retry-after") != "1" || r.header.Get("retry-after-ms") != "1000" {
					t.Errorf("retry-after %q, retry-after-ms %q, want 1 and 1000", r.header.Get("retry-after"), r.header.Get("retry-after-ms"))
				}
			})
		}
	}
}

func TestAdminSwitchesRateLimitHeaders(t *testing.T) {
	t.Parallel()
	b := setupClock(t, Config{RPS: 40, Burst: 5})
	steps := []struct {
		admin string // POST /admin body, "" for none
		want  map[string]string
	}{
		{"", map[string]string{"x-ratelimit-remaining-requests": "4"}},
		{`{"ratelimit_headers":"openai"}`, map[string]string{
			"x-ratelimit-limit-requests": "2400", "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "50ms"}},
		{`{"ratelimit_headers":"none"}`, map[string]string{}},
		{`{"ratelimit_headers":"azure"}`, map[string]string{"x-ratelimit-remaining-requests": "1"}},
	}
	for _, st := range steps {
		if st.admin != "" {
			if r := b.post(t, "/admin", nil, st.admin); r.status != 200 {
				t.Fatalf("POST /admin %s: status %d: %s", st.admin, r.status, r.body)
			}
		}
		r := b.chat(t, "hi")
		if r.status != 200 {
			t.Fatalf("after %q: status %d", st.admin, r.status)
		}
		if diff := cmp.Diff(st.want, rateLimitHeaders(r.header)); diff != "" {
			t.Errorf("after %q: x-ratelimit-* headers (-want +got):\n%s", st.admin, diff)
		}
	}
	var s Settings
	b.get(t, "/admin", &s)
	if s.RateLimitHeaders != RateLimitHeadersAzure {
		t.Errorf("GET /admin ratelimit_headers %q, want azure", s.RateLimitHeaders)
	}

	r := b.post(t, "/admin", nil, `{"ratelimit_headers":"anthropic"}`)
	if r.status != 400 {
		t.Fatalf("POST /admin with an unknown set: status %d, want 400", r.status)
	}
	msg := errorBody(t, r).Error.Message
	for _, w := range []string{"RateLimitHeaders", `"anthropic"`, "azure, openai, none"} {
		if !strings.Contains(msg, w) {
			t.Errorf("400 message %q, want it to contain %q", msg, w)
		}
	}
	if got := b.srv.Settings().RateLimitHeaders; got != RateLimitHeadersAzure {
		t.Errorf("a rejected update changed the set to %q", got)
	}
}

func TestOpenAIDuration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{300 * time.Microsecond, "1ms"},
		{20 * time.Millisecond, "20ms"},
		{25*time.Millisecond + 1, "25ms"},
		{120 * time.Millisecond, "120ms"},
		{time.Second, "1s"},
		{1500 * time.Millisecond, "1.5s"},
		{6 * time.Minute, "6m0s"},
	}
	for _, tt := range tests {
		if got := openAIDuration(tt.d); got != tt.want {
			t.Errorf("openAIDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestLimiterRealTime checks the limiter on the real clock under overload,
// with bounds loose enough for a loaded machine.
func TestLimiterRealTime(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{RPS: 50, Burst: 5})
	const window = time.Second
	var mu sync.Mutex
	admitted := 0
	var attempts atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < window {
				r, err := b.do(t, context.Background(), http.MethodPost, "/v1/chat/completions", nil, chatBody("m", "hi"))
				if err != nil {
					t.Errorf("request: %v", err)
					return
				}
				attempts.Add(1)
				if r.status == 200 {
					mu.Lock()
					admitted++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	// The upper bound is exact: no clock can admit more. The lower bound only
	// shows that the bucket refills: client stalls on a loaded machine lose
	// tokens that overflowed the burst.
	upper := int(50*elapsed.Seconds()) + 5
	lower := 5 + 5
	t.Logf("admitted %d of %d in %v", admitted, attempts.Load(), elapsed)
	if admitted > upper || admitted < lower {
		t.Errorf("admitted %d in %v, want within [%d, %d]", admitted, elapsed, lower, upper)
	}
}

func TestMaxConcurrency(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{MaxConcurrency: 2})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = b.do(t, ctx, http.MethodPost, "/v1/chat/completions", nil, chatBody("m", "[[fault:hang]]"))
		}()
	}
	waitFor(t, func() bool { return b.srv.active.Load() == 2 })
	r := b.chat(t, "one too many")
	cancel()
	wg.Wait()
	if r.status != 429 || r.header.Get("retry-after") != "1" {
		t.Fatalf("third request: status %d, headers %v, want 429 with retry-after", r.status, r.header)
	}
	waitFor(t, func() bool { return b.srv.Stats().InFlight == 0 })
	if r := b.chat(t, "room again"); r.status != 200 {
		t.Errorf("after the hangs ended: status %d, want 200", r.status)
	}
	if st := b.srv.Stats(); st.Limited != 1 || st.LimitedConcurrency != 1 {
		t.Errorf("stats %+v, want one concurrency rejection", st)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestPeakConcurrency(t *testing.T) {
	t.Parallel()
	t.Run("latency wait counts as in flight", func(t *testing.T) {
		t.Parallel()
		// An hour of latency holds every request until the test lets go, so
		// the count does not depend on how fast a loaded machine is.
		b := setup(t, Config{Latency: time.Hour})
		const n = 20
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = b.do(t, ctx, http.MethodPost, "/v1/chat/completions", nil, chatBody("m", "row "+strconv.Itoa(i)))
			}()
		}
		waitFor(t, func() bool { return b.srv.Stats().InFlight == n })
		cancel()
		wg.Wait()
		// A handler records its request before it leaves the in-flight count: wait for
		// both (a loaded machine showed 3 still in flight right after the 20th record).
		waitFor(t, func() bool { st := b.srv.Stats(); return st.Requests == n && st.InFlight == 0 })
		st := b.srv.Stats()
		if st.PeakInFlight != n || st.InFlight != 0 || st.ByStatus[statusClientClosed] != n {
			t.Errorf("stats %+v, want peak %d, none in flight, %d given up", st, n, n)
		}
		b.srv.ResetStats()
		if st := b.srv.Stats(); st.PeakInFlight != 0 || st.Requests != 0 {
			t.Errorf("after reset: %+v, want zero", st)
		}
	})
	t.Run("parallel answers overlap", func(t *testing.T) {
		t.Parallel()
		b := setup(t, Config{Latency: 100 * time.Millisecond})
		const n = 20
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := b.do(t, context.Background(), http.MethodPost, "/v1/chat/completions", nil, chatBody("m", "row "+strconv.Itoa(i)))
				if err != nil || r.status != 200 {
					t.Errorf("request %d: status %d err %v", i, r.status, err)
				}
			}()
		}
		wg.Wait()
		// Only a lower bound that survives a slow machine: some overlap.
		if st := b.srv.Stats(); st.PeakInFlight < 2 || st.OK != n {
			t.Errorf("stats %+v, want overlapping answers and %d ok", st, n)
		}
	})
}

func TestAdminUpdate(t *testing.T) {
	t.Parallel()
	b := setupClock(t, Config{})
	if r := b.chat(t, "free"); r.status != 200 {
		t.Fatalf("unlimited: status %d", r.status)
	}
	r := b.post(t, "/admin", nil, `{"rps":1,"burst":1,"latency":"0s","faults":{"500":0}}`)
	if r.status != 200 {
		t.Fatalf("POST /admin: status %d: %s", r.status, r.body)
	}
	var s Settings
	b.get(t, "/admin", &s)
	if diff := cmp.Diff(Settings{RPS: 1, Burst: 1, Faults: Faults{}}, s); diff != "" {
		t.Errorf("GET /admin (-want +got):\n%s", diff)
	}
	if got := []int{b.chat(t, "a").status, b.chat(t, "b").status}; !cmp.Equal(got, []int{200, 429}) {
		t.Errorf("with rps 1 burst 1 on a frozen clock: statuses %v, want [200 429]", got)
	}

	for _, bad := range []string{`{"faults":{"429":150}}`, `{"rps":-1}`, `{"nope":1}`, `not json`} {
		if r := b.post(t, "/admin", nil, bad); r.status != 400 {
			t.Errorf("POST /admin %s: status %d, want 400", bad, r.status)
		}
	}
	if got := b.srv.Settings(); got.RPS != 1 {
		t.Errorf("a rejected update changed settings to %+v", got)
	}

	if r := b.post(t, "/admin", nil, `{"rps":0,"faults":{"503":100}}`); r.status != 200 {
		t.Fatalf("POST /admin: status %d: %s", r.status, r.body)
	}
	if r := b.chat(t, "c"); r.status != 503 {
		t.Errorf("with 100%% 503: status %d", r.status)
	}
}

func TestBurst429(t *testing.T) {
	t.Parallel()
	b := setupClock(t, Config{Burst429: Burst429{Every: 10 * time.Second, For: 2 * time.Second}})
	var got []int
	for _, step := range []time.Duration{0, 1900 * time.Millisecond, 100 * time.Millisecond, 7 * time.Second, time.Second} {
		b.clock.Advance(step)
		got = append(got, b.chat(t, "x").status)
	}
	if diff := cmp.Diff([]int{429, 429, 200, 200, 429}, got); diff != "" {
		t.Errorf("statuses at 0s, 1.9s, 2s, 9s, 10s (-want +got):\n%s", diff)
	}
}

func TestStatsAndRequestLog(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Keys: []string{testKey}})
	b.post(t, "/v1/chat/completions", map[string]string{"Authorization": "Bearer " + testKey, DispatchHeader: "1700000000123456789"},
		chatBody("m", "Row 1 [[mark:r1.q1]] [[mark:second]]"))
	b.chat(t, "[[fault:500]]")
	b.post(t, "/v1/chat/completions", nil, chatBody("m", "no key"))
	b.post(t, "/openai/deployments/d1/chat/completions?api-version=v", map[string]string{"api-key": testKey}, chatBody("", "az"))

	var st Stats
	b.get(t, "/stats", &st)
	// Sequential requests may still overlap by a hair at the peak.
	st.PromptTokens, st.CompletionTokens, st.PeakInFlight = 0, 0, 0
	want := Stats{
		Requests: 4, OK: 2,
		ByStatus:     map[int]int64{200: 2, 401: 1, 500: 1},
		ByFault:      map[string]int64{"500": 1},
		ByRoute:      map[string]int64{"openai": 3, "azure": 1},
		ByDeployment: map[string]int64{"d1": 1},
	}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("GET /stats (-want +got):\n%s", diff)
	}

	var all []RequestLog
	b.get(t, "/requests", &all)
	if len(all) != 4 {
		t.Fatalf("GET /requests: %d entries, want 4", len(all))
	}
	first := all[0]
	if first.Seq != 1 || first.Dispatch != "1700000000123456789" || first.Marker != "r1.q1" || first.Status != 200 || first.Received.IsZero() {
		t.Errorf("first entry %+v, want seq 1 with dispatch header and first marker", first)
	}
	var tail []RequestLog
	b.get(t, "/requests?since=2", &tail)
	var seqs []uint64
	for _, e := range tail {
		seqs = append(seqs, e.Seq)
	}
	if diff := cmp.Diff([]uint64{3, 4}, seqs); diff != "" {
		t.Errorf("since=2 seqs (-want +got):\n%s", diff)
	}
	if r, _ := b.do(t, context.Background(), http.MethodGet, "/requests?since=x", nil, ""); r.status != 400 {
		t.Errorf("since=x: status %d, want 400", r.status)
	}

	if r := b.post(t, "/stats/reset", nil, ""); r.status != 200 {
		t.Fatalf("reset: status %d", r.status)
	}
	var reset Stats
	b.get(t, "/stats", &reset)
	if reset.Requests != 0 || len(reset.ByStatus) != 0 {
		t.Errorf("after reset: %+v, want zero", reset)
	}
	if r, err := b.do(t, context.Background(), http.MethodGet, "/healthz", nil, ""); err != nil || r.status != 200 {
		t.Errorf("healthz: status %d, err %v", r.status, err)
	}
}

func TestRingKeepsTheNewest(t *testing.T) {
	t.Parallel()
	g := newRing(3)
	for i := range 5 {
		g.add(RequestLog{Status: 200 + i})
	}
	var got []int
	for _, e := range g.since(0) {
		got = append(got, e.Status)
	}
	if diff := cmp.Diff([]int{202, 203, 204}, got); diff != "" {
		t.Errorf("since(0) (-want +got):\n%s", diff)
	}
	if got := g.since(4); len(got) != 1 || got[0].Seq != 5 {
		t.Errorf("since(4) = %+v, want seq 5 only", got)
	}
	if got := g.since(5); len(got) != 0 {
		t.Errorf("since(5) = %+v, want none", got)
	}
}

func TestStartAndStop(t *testing.T) {
	t.Parallel()
	srv, url, stop, err := Start(Config{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	// A hanging request must not hold up stop.
	errc := make(chan error, 1)
	go func() {
		resp, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(chatBody("m", "[[fault:hang]]")))
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, func() bool { return srv.Stats().InFlight == 1 })
	stop()
	stop()
	if err := <-errc; err == nil {
		t.Error("hanging request got an answer, want the connection dropped")
	}
	if _, err := New(Config{RPS: -1}, zerolog.Nop()); err == nil {
		t.Error("New accepted an invalid config")
	}
}
