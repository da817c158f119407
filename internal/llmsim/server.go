package llmsim

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// DispatchHeader is copied verbatim from a request into its [RequestLog].
const DispatchHeader = "X-Mq-Dispatch-Time"

// maxBodyBytes bounds a chat request body.
const maxBodyBytes = 8 << 20

// statusClientClosed is recorded (nginx style) when the client gave up or
// the server stopped before an answer was written.
const statusClientClosed = 499

// Server is the simulator. Its handler is safe for concurrent use.
type Server struct {
	log         zerolog.Logger
	now         func() time.Time
	start       time.Time
	keys        map[string]bool
	deployments map[string]bool
	models      map[string]bool

	mu       sync.Mutex // guards settings, rng and tries
	settings Settings
	rng      *rand.Rand
	tries    map[[32]byte]int // FirstTryOnly: tries per request (its messages up to the first user message)

	lim    *limiter
	active atomic.Int64 // requests past the limiter, for MaxConcurrency
	stats  *counters
	reqs   *ring

	handlers sync.WaitGroup // chat handlers running
	stopOnce sync.Once
	stopping chan struct{} // closed when Serve begins shutting down
}

// New validates cfg and builds a Server. log receives one debug line per
// request and never an API key.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	return newServer(cfg, log, time.Now)
}

func newServer(cfg Config, log zerolog.Logger, now func() time.Time) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("llmsim config: %w", err)
	}
	s := &Server{
		log:         log.With().Str("component", "llmsim").Logger(),
		now:         now,
		start:       now(),
		keys:        set(cfg.Keys),
		deployments: set(cfg.Deployments),
		models:      set(cfg.Models),
		settings:    cfg.settings(),
		rng:         rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6c6c6d73696d)),
		stats:       newCounters(),
		reqs:        newRing(requestLogSize),
		stopping:    make(chan struct{}),
	}
	s.lim = newLimiter(now, s.settings)
	return s, nil
}

func set(items []string) map[string]bool {
	m := make(map[string]bool, len(items))
	for _, it := range items {
		m[it] = true
	}
	return m
}

// Handler serves every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", s.handleOpenAI)
	mux.HandleFunc("POST /openai/deployments/{deployment}/chat/completions", s.handleAzure)
	mux.HandleFunc("GET /stats", s.handleStats)
	mux.HandleFunc("POST /stats/reset", s.handleStatsReset)
	mux.HandleFunc("GET /admin", s.handleAdminGet)
	mux.HandleFunc("POST /admin", s.handleAdminPost)
	mux.HandleFunc("GET /requests", s.handleRequests)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// ResetStats zeroes the counters; the request log is kept.
func (s *Server) ResetStats() { s.stats.reset() }

// Requests returns the kept request log entries with Seq > since.
func (s *Server) Requests(since uint64) []RequestLog { return s.reqs.since(since) }

// Settings returns the current run-time settings.
func (s *Server) Settings() Settings {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.settings
	st.Faults = cloneFaults(st.Faults)
	return st
}

// Update changes settings at run time, atomically: an invalid update changes
// nothing. The limiter keeps its current level, clamped to any new burst.
func (s *Server) Update(u Update) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := u.apply(s.settings)
	if err := errors.Join(next.validate("Update.")...); err != nil {
		return fmt.Errorf("llmsim update: %w", err)
	}
	s.settings = next
	s.lim.configure(next)
	s.log.Info().Interface("settings", next).Msg("settings updated")
	return nil
}

// draw is what one request takes from the shared state under one lock.
type draw struct {
	settings Settings
	pct      float64       // uniform [0,100) for the fault draw
	jitter   time.Duration // uniform [0,Jitter)
	retry    bool          // FirstTryOnly: the request was seen before
}

func (s *Server) drawFor(req *chatRequest) draw {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := draw{settings: s.settings, pct: s.rng.Float64() * 100}
	if s.settings.FirstTryOnly {
		if s.tries == nil {
			s.tries = map[[32]byte]int{}
		}
		k := req.tryKey()
		d.retry = s.tries[k] > 0
		s.tries[k]++
	}
	if s.settings.Jitter > 0 {
		d.jitter = time.Duration(s.rng.Int64N(int64(s.settings.Jitter)))
	}
	return d
}

// pickFault applies, in order of precedence, a directive, a 429 burst and
// the percentage draw.
func (s *Server) pickFault(text string, d draw) string {
	if k := directive(text); k != "" {
		return k
	}
	if b := d.settings.Burst429; b.Every > 0 && b.For > 0 && s.now().Sub(s.start)%b.Every < b.For {
		return Fault429
	}
	if d.retry {
		return ""
	}
	var acc float64
	for _, kind := range FaultKinds {
		p := d.settings.Faults[kind]
		if p <= 0 {
			continue
		}
		acc += p
		if d.pct < acc {
			return kind
		}
	}
	return ""
}

func (s *Server) handleOpenAI(w http.ResponseWriter, r *http.Request) {
	s.handleChat(w, r, "openai", "")
}

func (s *Server) handleAzure(w http.ResponseWriter, r *http.Request) {
	s.handleChat(w, r, "azure", r.PathValue("deployment"))
}

// handleChat wraps serveChat with the in-flight count, stats and the log.
// Stats and the request log are updated before the reply is written, so a
// client holding a response always finds it counted.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request, route, deployment string) {
	s.handlers.Add(1)
	defer s.handlers.Done()
	s.stats.enter()
	left := false
	leave := func() {
		if !left {
			left = true
			s.stats.leave()
		}
	}
	defer leave()

	rec := RequestLog{
		Received:   s.now(),
		Route:      route,
		Deployment: deployment,
		Dispatch:   r.Header.Get(DispatchHeader),
	}
	began := time.Now()
	rep := s.serveChat(w, r, &rec)
	rec.Status = rep.status
	rec.LatencyMS = float64(time.Since(began).Microseconds()) / 1000
	s.stats.record(&rec)
	rec = s.reqs.add(rec)
	s.log.Debug().
		Uint64("seq", rec.Seq).
		Str("route", route).
		Str("deployment", deployment).
		Int("status", rec.Status).
		Str("fault", rec.Fault).
		Bool("limited", rec.Limited).
		Float64("latency_ms", rec.LatencyMS).
		Msg("chat request")
	leave()
	if rep.status == statusClientClosed {
		// Nothing may be written; drop the connection instead of letting
		// net/http send an empty 200.
		panic(http.ErrAbortHandler)
	}
	rep.write(w)
}

// serveChat answers one chat request. Headers go straight to w; the
// status and body are returned for handleChat to write.
func (s *Server) serveChat(w http.ResponseWriter, r *http.Request, rec *RequestLog) reply {
	if rep, ok := s.checkCaller(r, rec); !ok {
		return rep
	}
	req, rep, ok := readChat(w, r)
	if !ok {
		return rep
	}
	rec.Model = req.Model
	if rec.Route != "azure" && len(s.models) > 0 && !s.models[req.Model] {
		return jsonReply(http.StatusNotFound, apiError{Error: apiErrorBody{
			Type:    "invalid_request_error",
			Code:    "model_not_found",
			Message: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", req.Model),
		}})
	}
	text := req.text()
	if ms := markers(text); len(ms) > 0 {
		rec.Marker = ms[0]
	}
	d := s.drawFor(req)
	rec.Fault = s.pickFault(text, d)
	if status, ok := statusFaults[rec.Fault]; ok {
		retryAfter := d.settings.InjectedRetryAfter
		if retryAfter <= 0 {
			retryAfter = DefaultInjectedRetryAfter
		}
		return statusFault(w.Header(), rec.Fault, status, retryAfter)
	}
	if rep, ok := s.admit(w.Header(), r, rec, d, estimateTokens(text, req.maxCompletion())); !ok {
		return rep
	}
	// Count every admitted request, capped or not, so a cap set at run time
	// sees the requests already running.
	n := s.active.Add(1)
	defer s.active.Add(-1)
	if limit := int64(d.settings.MaxConcurrency); limit > 0 && n > limit {
		rec.Limited = true
		rec.limitedBy = limitConcurrency
		v := verdict{retryAfter: max(d.settings.Latency+d.settings.Jitter/2, time.Millisecond)}
		return limited(w.Header(), v, rec.limitedBy, r.URL.Query().Get("api-version"))
	}
	if rep, ok := s.delay(r, rec, d); !ok {
		return rep
	}
	return s.answerReply(req, rec)
}

// checkCaller checks the API key and, on the Azure route, the api-version and the
// deployment, as the providers do before reading the body.
func (s *Server) checkCaller(r *http.Request, rec *RequestLog) (reply, bool) {
	if !s.keyOK(r, rec.Route == "azure") {
		// Like OpenAI, echo the offered key masked: real provider errors carry key
		// material, and clients must not store them as is.
		return jsonReply(http.StatusUnauthorized, apiError{Error: apiErrorBody{
			Message: "Incorrect API key provided: " + maskKey(offeredKey(r)) + ". You can find your API key at https://platform.openai.com/account/api-keys.",
			Type:    "invalid_request_error",
			Code:    "invalid_api_key",
		}}), false
	}
	if rec.Route != "azure" {
		return reply{}, true
	}
	if r.URL.Query().Get("api-version") == "" {
		return jsonReply(http.StatusBadRequest, apiError{Error: apiErrorBody{
			Code:    "BadRequest",
			Message: "Missing API version query parameter 'api-version'.",
		}}), false
	}
	if len(s.deployments) > 0 && !s.deployments[rec.Deployment] {
		return jsonReply(http.StatusNotFound, apiError{Error: apiErrorBody{
			Code:    "DeploymentNotFound",
			Message: "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
		}}), false
	}
	return reply{}, true
}

// readChat reads and decodes the request body.
func readChat(w http.ResponseWriter, r *http.Request) (*chatRequest, reply, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		return nil, badRequest(fmt.Sprintf("could not read request body: %v", err)), false
	}
	req, err := decodeChatRequest(body)
	if err != nil {
		return nil, badRequest(fmt.Sprintf("We could not parse the JSON body of your request: %v", err)), false
	}
	return req, reply{}, true
}

// admit asks the request and token buckets for the request's tokens and sets the
// rate-limit headers; a refusal is a 429.
func (s *Server) admit(h http.Header, r *http.Request, rec *RequestLog, d draw, tokens int) (reply, bool) {
	v, bs := s.lim.decide(tokens)
	setRateLimit(h, d.settings.RateLimitHeaders, v, bs)
	if v.ok {
		return reply{}, true
	}
	rec.Limited = true
	rec.limitedBy = limitRequests
	if v.tokenLimited {
		rec.limitedBy = limitTokens
	}
	return limited(h, v, rec.limitedBy, r.URL.Query().Get("api-version")), false
}

// delay waits out the answer's latency; a hanging fault waits until the client gives
// up or the server stops.
func (s *Server) delay(r *http.Request, rec *RequestLog, d draw) (reply, bool) {
	if rec.Fault == FaultHang {
		select {
		case <-r.Context().Done():
		case <-s.stopping:
		}
		return reply{status: statusClientClosed}, false
	}
	if wait := d.settings.Latency + d.jitter; wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return reply{status: statusClientClosed}, false
		}
	}
	return reply{}, true
}

// offeredKey is the API key of a request: api-key (Azure) or Bearer.
func offeredKey(r *http.Request) string {
	if key := r.Header.Get("api-key"); key != "" {
		return key
	}
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return ""
}

// maskKey masks a key the way OpenAI's 401 does: "sk-abc***wxyz".
func maskKey(key string) string {
	if len(key) <= 10 {
		return "***"
	}
	return key[:6] + "***" + key[len(key)-4:]
}

// keyOK checks the API key: Bearer on every route, api-key on Azure too.
func (s *Server) keyOK(r *http.Request, azure bool) bool {
	if len(s.keys) == 0 {
		return true
	}
	var key string
	if azure {
		key = r.Header.Get("api-key")
	}
	if key == "" {
		if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			key = strings.TrimSpace(v)
		}
	}
	if key == "" {
		return false
	}
	for k := range s.keys {
		if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			return true
		}
	}
	return false
}

// statusFaults are the faults answered at once with an error status,
// without touching the limiter.
var statusFaults = map[string]int{
	Fault429: http.StatusTooManyRequests,
	Fault503: http.StatusServiceUnavailable,
	Fault529: 529,
	Fault500: http.StatusInternalServerError,
	Fault502: http.StatusBadGateway,
	Fault504: http.StatusGatewayTimeout,
}

func statusFault(h http.Header, kind string, status int, retryAfter time.Duration) reply {
	secs := ceilSeconds(retryAfter)
	var body apiError
	switch kind {
	case Fault429:
		body.Error = apiErrorBody{Code: "429", Message: fmt.Sprintf(
			"Requests to the ChatCompletions_Create Operation have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after %d seconds.", secs)}
	case Fault503:
		body.Error = apiErrorBody{Code: "ServiceUnavailable", Type: "server_error", Message: fmt.Sprintf(
			"The service is temporarily unable to process your request. Please retry after %d seconds.", secs)}
	case Fault529:
		body.Error = apiErrorBody{Code: "overloaded", Type: "overloaded_error", Message: "Overloaded"}
	case Fault500:
		body.Error = apiErrorBody{Type: "server_error", Message: "The server had an error while processing your request. Sorry about that!"}
	case Fault502:
		body.Error = apiErrorBody{Type: "server_error", Code: "bad_gateway", Message: "Bad gateway."}
	case Fault504:
		body.Error = apiErrorBody{Type: "server_error", Code: "timeout", Message: "The server did not respond in time."}
	}
	if kind == Fault429 || kind == Fault503 || kind == Fault529 {
		setRetryAfter(h, retryAfter)
	}
	return jsonReply(status, body)
}

func limited(h http.Header, v verdict, reason, apiVersion string) reply {
	secs := ceilSeconds(v.retryAfter)
	what := "call rate limit"
	switch reason {
	case limitTokens:
		what = "token rate limit"
	case limitConcurrency:
		what = "concurrent request limit"
	}
	version := ""
	if apiVersion != "" {
		version = " under Azure OpenAI API version " + apiVersion
	}
	setRetryAfter(h, v.retryAfter)
	return jsonReply(http.StatusTooManyRequests, apiError{Error: apiErrorBody{
		Code: "429",
		Message: fmt.Sprintf("Requests to the ChatCompletions_Create Operation%s have exceeded %s of your current OpenAI S0 pricing tier. Please retry after %d seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
			version, what, secs),
	}})
}

// ceilSeconds is a retry-after in whole seconds, rounded up, at least 1.
func ceilSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

func setRetryAfter(h http.Header, d time.Duration) {
	h.Set("retry-after", strconv.Itoa(ceilSeconds(d)))
	ms := int64(math.Ceil(float64(d) / float64(time.Millisecond)))
	h.Set("retry-after-ms", strconv.FormatInt(ms, 10))
}

// setRateLimit sets the x-ratelimit-* headers of the header set named by set
// (see [RateLimitHeaderSets]; empty means azure) for the limits in force.
func setRateLimit(h http.Header, set string, v verdict, bs budgets) {
	switch set {
	case RateLimitHeadersNone:
	case RateLimitHeadersOpenAI:
		setBudget(h, "requests", bs.requests)
		setBudget(h, "tokens", bs.tokens)
	default:
		setRemaining(h, v)
	}
}

// setBudget sets OpenAI's x-ratelimit-limit-, -remaining- and -reset-
// headers of one dimension ("requests" or "tokens"), unless it is unlimited.
func setBudget(h http.Header, dimension string, b budget) {
	if b.perMinute == 0 {
		return
	}
	h.Set("x-ratelimit-limit-"+dimension, strconv.Itoa(b.perMinute))
	h.Set("x-ratelimit-remaining-"+dimension, strconv.Itoa(b.remaining))
	h.Set("x-ratelimit-reset-"+dimension, openAIDuration(b.reset))
}

// openAIDuration writes d in OpenAI's reset format: Go's duration string of
// d rounded to the millisecond, "0s" only when d is 0 (a bucket short of
// less than half a millisecond reads "1ms"): "0s", "20ms", "1.5s", "6m0s".
func openAIDuration(d time.Duration) string {
	if d > 0 {
		d = max(d.Round(time.Millisecond), time.Millisecond)
	}
	return d.String()
}

// setRemaining sets the x-ratelimit-remaining-* headers of the limits in
// force; unlimited dimensions are left out.
func setRemaining(h http.Header, v verdict) {
	if v.remainingRequests >= 0 {
		h.Set("x-ratelimit-remaining-requests", strconv.Itoa(v.remainingRequests))
	}
	if v.remainingTokens >= 0 {
		h.Set("x-ratelimit-remaining-tokens", strconv.Itoa(v.remainingTokens))
	}
}

// answerReply is the 200 reply, shaped by rec.Fault for body faults.
func (s *Server) answerReply(req *chatRequest, rec *RequestLog) reply {
	switch rec.Fault {
	case FaultEmptyBody:
		return reply{status: http.StatusOK, contentType: "application/json"}
	case FaultWrongContentType:
		return reply{status: http.StatusOK, contentType: "text/html; charset=utf-8", body: []byte(
			"<!DOCTYPE html>\n<html><head><title>Service</title></head><body><h1>Welcome</h1><p>The upstream gateway answered with a web page.</p></body></html>\n")}
	}
	ans := newAnswer(req)
	content, finish := ans.json(), "stop"
	switch rec.Fault {
	case FaultInvalidJSON:
		content = ans.invalidJSON()
	case FaultTruncated:
		content, finish = ans.truncated(), "length"
	case FaultMissingField:
		content = ans.withoutField()
	case FaultWrongType:
		content = ans.withWrongType()
	case FaultContentFilter:
		content, finish = "", "content_filter"
	}
	model := req.Model
	if model == "" {
		model = rec.Deployment
	}
	rec.PromptTokens = max(1, usageTokens(req.text()))
	rec.CompletionTokens = usageTokens(content)
	resp := chatResponse{
		ID:                fmt.Sprintf("chatcmpl-sim%016x", ans.gen.hash("\x00id")^uint64(s.now().UnixNano())),
		Object:            "chat.completion",
		Created:           s.now().Unix(),
		Model:             model,
		SystemFingerprint: "fp_llmsim",
		Choices: []chatChoice{{
			Message:      responseMessage{Role: "assistant", Content: content},
			FinishReason: finish,
		}},
		Usage: chatUsage{
			PromptTokens:     rec.PromptTokens,
			CompletionTokens: rec.CompletionTokens,
			TotalTokens:      rec.PromptTokens + rec.CompletionTokens,
		},
	}
	return jsonReply(http.StatusOK, resp)
}

func badRequest(msg string) reply {
	return jsonReply(http.StatusBadRequest, apiError{Error: apiErrorBody{
		Message: msg,
		Type:    "invalid_request_error",
	}})
}

// reply is a status and body not yet written.
type reply struct {
	status      int
	contentType string
	body        []byte
}

func jsonReply(status int, v any) reply {
	b, err := json.Marshal(v)
	if err != nil {
		return reply{status: http.StatusInternalServerError, contentType: "application/json",
			body: []byte(`{"error":{"message":"llmsim: encode response","type":"server_error"}}` + "\n")}
	}
	return reply{status: status, contentType: "application/json", body: append(b, '\n')}
}

func (rep reply) write(w http.ResponseWriter) {
	if rep.contentType != "" {
		w.Header().Set("Content-Type", rep.contentType)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(rep.body)))
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	jsonReply(http.StatusOK, s.Stats()).write(w)
}

func (s *Server) handleStatsReset(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	jsonReply(http.StatusOK, s.Stats()).write(w)
}

func (s *Server) handleAdminGet(w http.ResponseWriter, _ *http.Request) {
	jsonReply(http.StatusOK, s.Settings()).write(w)
}

func (s *Server) handleAdminPost(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		badRequest(fmt.Sprintf("read body: %v", err)).write(w)
		return
	}
	var u Update
	if err := json.Unmarshal(body, &u); err != nil {
		badRequest(err.Error()).write(w)
		return
	}
	if err := s.Update(u); err != nil {
		badRequest(err.Error()).write(w)
		return
	}
	jsonReply(http.StatusOK, s.Settings()).write(w)
}

func (s *Server) handleRequests(w http.ResponseWriter, r *http.Request) {
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			badRequest(fmt.Sprintf("since %q: want a sequence number", v)).write(w)
			return
		}
		since = n
	}
	jsonReply(http.StatusOK, s.Requests(since)).write(w)
}

// stopHanging releases every request held by the hang fault.
func (s *Server) stopHanging() {
	s.stopOnce.Do(func() { close(s.stopping) })
}
