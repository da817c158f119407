// Package llmsim owns an OpenAI-compatible chat completion simulator with a
// real rate limiter, fault injection and deterministic, schema-shaped
// answers, so the rest of multiquery can be tested over real HTTP without a
// model.
//
// # Routes
//
//	POST /v1/chat/completions                                   OpenAI; Authorization: Bearer KEY
//	POST /openai/deployments/{deployment}/chat/completions      Azure; api-key: KEY (or Bearer); ?api-version= required (400)
//	GET  /stats, POST /stats/reset                              [Stats] as JSON
//	GET  /admin, POST /admin                                    [Settings]; POST takes a partial [Update]
//	GET  /requests?since=SEQ                                    recent [RequestLog] entries (last 100000)
//	GET  /healthz                                               200
//
// With Config.Keys set, a missing or unknown key is a 401 whose code is
// "invalid_api_key". With Config.Deployments set, an unknown Azure deployment
// is a 404 whose code is "DeploymentNotFound"; with Config.Models set, an unknown
// model on the OpenAI route is a 404 whose code is "model_not_found". A body that is not a chat
// request is a 400.
//
// # Processing order
//
// Key check, body decode, fault selection, rate limiter, concurrency cap,
// latency (Latency plus uniform [0, Jitter), cut short by the request
// context), answer. Status faults (429, 503, 529, 500, 502, 504) answer right
// after selection and take nothing from the limiter; the other faults are
// shaped answers that pass the limiter like any answer.
//
// # Limiter
//
// A request token bucket (RPS with capacity Burst, default 1; or RPM/60 per
// second with capacity Burst, default RPM/6) and a token bucket (TPM/60 per
// second, capacity TPM/6) charged prompt chars/4 plus max_completion_tokens
// (or max_tokens, or 16). A request is charged to both buckets or neither.
// MaxConcurrency caps admitted requests in flight (a request it refuses has
// already been charged to the buckets). A rejection is a 429 with
// an Azure-style body ("... have exceeded call rate limit ... Please retry
// after N seconds."), retry-after (whole seconds, rounded up, at least 1) and
// retry-after-ms (time until a token is available).
//
// Stats and the request log count a request before its response is
// written: once a client has a response, Stats and Requests include it.
//
// # Rate-limit headers
//
// Admitted answers and the limiter's 429s (rate and concurrency) carry the
// x-ratelimit-* header set chosen by Config.RateLimitHeaders (POST /admin
// key "ratelimit_headers", flag --ratelimit-headers), for the limits in
// force only (an unlimited dimension sends none of its headers):
//
//	azure (default; "" too)   x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens
//	openai                    x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests,
//	                          x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens
//	none                      no x-ratelimit-* header
//
// remaining-* is the whole tokens left in the bucket right after the
// decision. In the OpenAI set, limit-requests is requests per minute (RPM, or
// RPS x 60 rounded, at least 1: 2400 at 40 RPS), limit-tokens is TPM, and
// reset-* is the time until the bucket is full again, (capacity - level) /
// rate, written as Go's duration string rounded to the millisecond: "0s"
// (full), "25ms", "1.5s", "6m0s"; a bucket short of less than half a
// millisecond reads "1ms". retry-after and retry-after-ms are sent on 429s
// whatever the set; injected faults never carry x-ratelimit-* headers.
//
// # Faults
//
// Config.Faults maps a kind to a percentage; one seeded draw per request
// picks at most one kind. The kinds ([FaultKinds]):
//
//	429, 503, 529         error status; retry-after-ms = InjectedRetryAfter, retry-after in seconds
//	500, 502, 504         error status, OpenAI-style error body
//	invalid_json          200, message content is prose, not JSON
//	truncated             200, finish_reason "length", content is half of the JSON
//	empty_body            200, application/json, empty body
//	missing_field         200, content lacks one requested top-level field
//	wrong_type            200, one top-level field has the wrong JSON type
//	wrong_content_type    200, text/html page
//	hang                  no answer until the client gives up (or the server stops)
//	content_filter        200, finish_reason "content_filter", empty content
//
// Config.Burst429 additionally fails every request with a 429 during the
// first For of every Every.
//
// Config.FirstTryOnly (--fault-first-try-only) draws the percentages only on a
// request's first try: a request whose messages up to its first user message were
// seen before (a retry, or a re-ask that appends messages) gets no drawn fault, so
// "5 % invalid_json on the first try" makes every query answerable when asked again.
//
// # Directives and markers
//
// A message containing [[fault:KIND]] forces that fault for the request,
// whatever the percentages. A message containing [[mark:TOKEN]] (TOKEN is
// [A-Za-z0-9_.:-]+) makes every free-text string value of the answer contain
// every such token, so a test can tell which row and query an output came
// from; enum values stay within their list. The first marker is also kept in
// the request log.
//
// # Answers
//
// The assistant content is a JSON object. With response_format type
// "json_schema" it follows the schema (string, integer, number, boolean,
// enum, const, nested objects, arrays, anyOf/oneOf, $ref into $defs).
// Otherwise the last occurrence, across the messages, of the phrase
//
//	Respond with a JSON object with these fields: {"score": "integer", "rationale": "string", "label": "enum:yes|no"}
//
// is followed by a JSON object (up to its matching brace) mapping field names
// to "string", "integer", "number", "boolean" or "enum:a|b|c". Without
// either, the answer is {"answer": "..."}. Values are a function of the field
// name and the messages' text only: integers in 1..5 (or the schema's
// minimum..maximum), numbers in [0,1), enum values from their list, strings
// "FIELD: MARKERS word word". The same request always gets the same content.
package llmsim
