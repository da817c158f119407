package llmsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Fault kinds understood by [Faults], the [[fault:KIND]] directive and the
// request log. The order of this list is the order in which a percentage draw
// walks the configured faults, so it must stay stable for seeded runs.
const (
	Fault429              = "429"
	Fault503              = "503"
	Fault529              = "529"
	Fault500              = "500"
	Fault502              = "502"
	Fault504              = "504"
	FaultInvalidJSON      = "invalid_json"
	FaultTruncated        = "truncated"
	FaultEmptyBody        = "empty_body"
	FaultMissingField     = "missing_field"
	FaultWrongType        = "wrong_type"
	FaultWrongContentType = "wrong_content_type"
	FaultHang             = "hang"
	FaultContentFilter    = "content_filter"
)

// FaultKinds lists every fault kind in draw order.
var FaultKinds = []string{
	Fault429, Fault503, Fault529, Fault500, Fault502, Fault504,
	FaultInvalidJSON, FaultTruncated, FaultEmptyBody, FaultMissingField,
	FaultWrongType, FaultWrongContentType, FaultHang, FaultContentFilter,
}

// DefaultInjectedRetryAfter is used when Config.InjectedRetryAfter is zero.
const DefaultInjectedRetryAfter = time.Second

// Rate-limit header sets, the values of Config.RateLimitHeaders: which
// x-ratelimit-* headers admitted answers and the limiter's 429s carry. The
// empty string means RateLimitHeadersAzure.
const (
	// RateLimitHeadersAzure sends x-ratelimit-remaining-requests and
	// x-ratelimit-remaining-tokens.
	RateLimitHeadersAzure = "azure"
	// RateLimitHeadersOpenAI sends x-ratelimit-limit-*, -remaining-* and
	// -reset-* for requests and tokens.
	RateLimitHeadersOpenAI = "openai"
	// RateLimitHeadersNone sends no x-ratelimit-* header.
	RateLimitHeadersNone = "none"
)

// RateLimitHeaderSets lists the values of Config.RateLimitHeaders.
var RateLimitHeaderSets = []string{RateLimitHeadersAzure, RateLimitHeadersOpenAI, RateLimitHeadersNone}

// Faults maps a fault kind (see [FaultKinds]) to the percentage, 0..100, of
// requests that get it. The percentages of all kinds must not sum over 100.
type Faults map[string]float64

// Burst429 makes every request fail with an injected 429 during the first For
// of every Every period, counted from the server's start.
type Burst429 struct {
	Every time.Duration
	For   time.Duration
}

// Config configures a [Server]. The zero value is a valid, unlimited,
// fault-free simulator that accepts any key.
type Config struct {
	Keys        []string // accepted API keys; empty = accept any
	Deployments []string // azure deployment names accepted; empty = any
	Models      []string // models the OpenAI route accepts; empty = any

	Latency time.Duration // base latency per answer
	Jitter  time.Duration // + uniform [0, Jitter)

	RPS            float64 // request refill rate per second; 0 = unlimited
	RPM            int     // Azure spelling of the request rate; exclusive with RPS
	Burst          int     // request bucket capacity; default 1 for RPS, RPM/6 for RPM
	TPM            int     // tokens per minute; 0 = unlimited
	MaxConcurrency int     // admitted requests in flight at once; 0 = unlimited

	// RateLimitHeaders picks the x-ratelimit-* header set, one of
	// [RateLimitHeaderSets]; empty means RateLimitHeadersAzure.
	RateLimitHeaders string

	Faults             Faults
	InjectedRetryAfter time.Duration // on injected 429/503/529; zero means DefaultInjectedRetryAfter
	Burst429           Burst429
	// FirstTryOnly draws Faults only for a request's first try: a request whose
	// messages up to its first user message were seen before (a retry, or a re-ask that
	// appends messages) gets no drawn fault. Directives and Burst429 still apply.
	FirstTryOnly bool

	Seed int64 // seeds fault draws and jitter
}

// Validate reports every invalid field of c, each error naming the field and
// its limit.
func (c Config) Validate() error {
	var errs []error
	for i, k := range c.Keys {
		if strings.TrimSpace(k) == "" {
			errs = append(errs, fmt.Errorf("Config.Keys[%d]: must not be empty", i))
		}
	}
	for i, d := range c.Deployments {
		if strings.TrimSpace(d) == "" {
			errs = append(errs, fmt.Errorf("Config.Deployments[%d]: must not be empty", i))
		}
	}
	for i, m := range c.Models {
		if strings.TrimSpace(m) == "" {
			errs = append(errs, fmt.Errorf("Config.Models[%d]: must not be empty", i))
		}
	}
	errs = append(errs, c.settings().validate("Config.")...)
	return errors.Join(errs...)
}

// settings extracts the part of c that can change at run time.
func (c Config) settings() Settings {
	return Settings{
		Latency:            c.Latency,
		Jitter:             c.Jitter,
		RPS:                c.RPS,
		RPM:                c.RPM,
		Burst:              c.Burst,
		TPM:                c.TPM,
		MaxConcurrency:     c.MaxConcurrency,
		RateLimitHeaders:   c.RateLimitHeaders,
		Faults:             cloneFaults(c.Faults),
		InjectedRetryAfter: c.InjectedRetryAfter,
		Burst429:           c.Burst429,
		FirstTryOnly:       c.FirstTryOnly,
	}
}

// Settings is the run-time adjustable part of a [Config], as reported by
// GET /admin and [Server.Settings]. Durations are JSON strings like "150ms".
type Settings struct {
	Latency            time.Duration
	Jitter             time.Duration
	RPS                float64
	RPM                int
	Burst              int
	TPM                int
	MaxConcurrency     int
	RateLimitHeaders   string // empty means RateLimitHeadersAzure
	Faults             Faults
	InjectedRetryAfter time.Duration
	Burst429           Burst429
	FirstTryOnly       bool
}

func (s Settings) validate(prefix string) []error {
	var errs []error
	nonNegDur := func(name string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s%s %v: must not be negative", prefix, name, d))
		}
	}
	nonNegInt := func(name string, v int) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s%s %d: must not be negative", prefix, name, v))
		}
	}
	nonNegDur("Latency", s.Latency)
	nonNegDur("Jitter", s.Jitter)
	nonNegDur("InjectedRetryAfter", s.InjectedRetryAfter)
	if s.RPS < 0 || math.IsNaN(s.RPS) || math.IsInf(s.RPS, 0) {
		errs = append(errs, fmt.Errorf("%sRPS %v: must be a finite number >= 0", prefix, s.RPS))
	}
	nonNegInt("RPM", s.RPM)
	nonNegInt("Burst", s.Burst)
	nonNegInt("TPM", s.TPM)
	nonNegInt("MaxConcurrency", s.MaxConcurrency)
	if s.RPS > 0 && s.RPM > 0 {
		errs = append(errs, fmt.Errorf("%sRPS %v and %sRPM %d: set at most one", prefix, s.RPS, prefix, s.RPM))
	}
	if s.RateLimitHeaders != "" && !slices.Contains(RateLimitHeaderSets, s.RateLimitHeaders) {
		errs = append(errs, fmt.Errorf("%sRateLimitHeaders %q: must be one of %s (empty means %s)",
			prefix, s.RateLimitHeaders, strings.Join(RateLimitHeaderSets, ", "), RateLimitHeadersAzure))
	}
	nonNegDur("Burst429.Every", s.Burst429.Every)
	nonNegDur("Burst429.For", s.Burst429.For)
	if s.Burst429.For > 0 && s.Burst429.Every < s.Burst429.For {
		errs = append(errs, fmt.Errorf("%sBurst429.Every %v: must be >= Burst429.For %v", prefix, s.Burst429.Every, s.Burst429.For))
	}
	var sum float64
	for _, kind := range sortedKinds(s.Faults) {
		pct := s.Faults[kind]
		if !slices.Contains(FaultKinds, kind) {
			errs = append(errs, fmt.Errorf("%sFaults[%q]: unknown fault kind (known: %s)", prefix, kind, strings.Join(FaultKinds, ", ")))
			continue
		}
		if math.IsNaN(pct) || pct < 0 || pct > 100 {
			errs = append(errs, fmt.Errorf("%sFaults[%q] %v: must be within 0..100", prefix, kind, pct))
			continue
		}
		sum += pct
	}
	if sum > 100 {
		errs = append(errs, fmt.Errorf("%sFaults: percentages sum to %v, must be <= 100", prefix, sum))
	}
	return errs
}

// Update partially changes a running [Server]'s settings; nil fields are left
// alone. It is the Go form of POST /admin, whose JSON keys are snake_case
// (rps, rpm, burst, tpm, max_concurrency, ratelimit_headers, latency, jitter,
// injected_retry_after, burst_429 {every, for}, faults, reset_faults) and whose
// durations are strings like "150ms" or numbers of milliseconds; first_try_only sets
// FirstTryOnly.
type Update struct {
	Latency            *time.Duration
	Jitter             *time.Duration
	RPS                *float64 // setting RPS clears RPM unless RPM is set too
	RPM                *int     // setting RPM clears RPS unless RPS is set too
	Burst              *int
	TPM                *int
	MaxConcurrency     *int
	RateLimitHeaders   *string
	InjectedRetryAfter *time.Duration
	Burst429           *Burst429
	// Faults is merged into the current percentages: each listed kind is
	// replaced, 0 disables it.
	Faults Faults
	// ResetFaults clears every percentage before Faults is merged.
	ResetFaults bool
	// FirstTryOnly sets Settings.FirstTryOnly.
	FirstTryOnly *bool
}

// apply returns s changed by u.
func (u Update) apply(s Settings) Settings {
	s.Faults = cloneFaults(s.Faults)
	setDur := func(dst *time.Duration, src *time.Duration) {
		if src != nil {
			*dst = *src
		}
	}
	setInt := func(dst *int, src *int) {
		if src != nil {
			*dst = *src
		}
	}
	setDur(&s.Latency, u.Latency)
	setDur(&s.Jitter, u.Jitter)
	setDur(&s.InjectedRetryAfter, u.InjectedRetryAfter)
	if u.RPS != nil {
		s.RPS = *u.RPS
		if u.RPM == nil {
			s.RPM = 0
		}
	}
	if u.RPM != nil {
		s.RPM = *u.RPM
		if u.RPS == nil {
			s.RPS = 0
		}
	}
	setInt(&s.Burst, u.Burst)
	setInt(&s.TPM, u.TPM)
	setInt(&s.MaxConcurrency, u.MaxConcurrency)
	if u.RateLimitHeaders != nil {
		s.RateLimitHeaders = *u.RateLimitHeaders
	}
	if u.Burst429 != nil {
		s.Burst429 = *u.Burst429
	}
	if u.ResetFaults {
		s.Faults = Faults{}
	}
	if u.FirstTryOnly != nil {
		s.FirstTryOnly = *u.FirstTryOnly
	}
	for k, v := range u.Faults {
		if v == 0 {
			delete(s.Faults, k)
			continue
		}
		s.Faults[k] = v
	}
	return s
}

// jsonDuration reads "150ms"-style strings or numbers of milliseconds and
// writes strings.
type jsonDuration time.Duration

func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = jsonDuration(v)
		return nil
	}
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return fmt.Errorf("duration %s: want a string like \"150ms\" or milliseconds", b)
	}
	*d = jsonDuration(ms * float64(time.Millisecond))
	return nil
}

func durPtr(d *jsonDuration) *time.Duration {
	if d == nil {
		return nil
	}
	v := time.Duration(*d)
	return &v
}

type jsonBurst429 struct {
	Every jsonDuration `json:"every"`
	For   jsonDuration `json:"for"`
}

type jsonUpdate struct {
	Latency            *jsonDuration `json:"latency,omitempty"`
	Jitter             *jsonDuration `json:"jitter,omitempty"`
	RPS                *float64      `json:"rps,omitempty"`
	RPM                *int          `json:"rpm,omitempty"`
	Burst              *int          `json:"burst,omitempty"`
	TPM                *int          `json:"tpm,omitempty"`
	MaxConcurrency     *int          `json:"max_concurrency,omitempty"`
	RateLimitHeaders   *string       `json:"ratelimit_headers,omitempty"`
	InjectedRetryAfter *jsonDuration `json:"injected_retry_after,omitempty"`
	Burst429           *jsonBurst429 `json:"burst_429,omitempty"`
	Faults             Faults        `json:"faults,omitempty"`
	ResetFaults        bool          `json:"reset_faults,omitempty"`
	FirstTryOnly       *bool         `json:"first_try_only,omitempty"`
}

// UnmarshalJSON reads the POST /admin body. Unknown keys are rejected so a
// typo does not silently do nothing.
func (u *Update) UnmarshalJSON(b []byte) error {
	var j jsonUpdate
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("decode update: %w", err)
	}
	*u = Update{
		Latency:            durPtr(j.Latency),
		Jitter:             durPtr(j.Jitter),
		RPS:                j.RPS,
		RPM:                j.RPM,
		Burst:              j.Burst,
		TPM:                j.TPM,
		MaxConcurrency:     j.MaxConcurrency,
		RateLimitHeaders:   j.RateLimitHeaders,
		InjectedRetryAfter: durPtr(j.InjectedRetryAfter),
		Faults:             j.Faults,
		ResetFaults:        j.ResetFaults,
		FirstTryOnly:       j.FirstTryOnly,
	}
	if j.Burst429 != nil {
		u.Burst429 = &Burst429{Every: time.Duration(j.Burst429.Every), For: time.Duration(j.Burst429.For)}
	}
	return nil
}

type jsonSettings struct {
	Latency            jsonDuration `json:"latency"`
	Jitter             jsonDuration `json:"jitter"`
	RPS                float64      `json:"rps"`
	RPM                int          `json:"rpm"`
	Burst              int          `json:"burst"`
	TPM                int          `json:"tpm"`
	MaxConcurrency     int          `json:"max_concurrency"`
	RateLimitHeaders   string       `json:"ratelimit_headers"`
	Faults             Faults       `json:"faults"`
	InjectedRetryAfter jsonDuration `json:"injected_retry_after"`
	Burst429           jsonBurst429 `json:"burst_429"`
	FirstTryOnly       bool         `json:"first_try_only"`
}

// MarshalJSON writes the GET /admin shape.
func (s Settings) MarshalJSON() ([]byte, error) {
	f := s.Faults
	if f == nil {
		f = Faults{}
	}
	return json.Marshal(jsonSettings{
		Latency:            jsonDuration(s.Latency),
		Jitter:             jsonDuration(s.Jitter),
		RPS:                s.RPS,
		RPM:                s.RPM,
		Burst:              s.Burst,
		TPM:                s.TPM,
		MaxConcurrency:     s.MaxConcurrency,
		RateLimitHeaders:   s.RateLimitHeaders,
		Faults:             f,
		InjectedRetryAfter: jsonDuration(s.InjectedRetryAfter),
		Burst429:           jsonBurst429{Every: jsonDuration(s.Burst429.Every), For: jsonDuration(s.Burst429.For)},
		FirstTryOnly:       s.FirstTryOnly,
	})
}

// UnmarshalJSON reads the GET /admin shape.
func (s *Settings) UnmarshalJSON(b []byte) error {
	var j jsonSettings
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("decode settings: %w", err)
	}
	*s = Settings{
		Latency:            time.Duration(j.Latency),
		Jitter:             time.Duration(j.Jitter),
		RPS:                j.RPS,
		RPM:                j.RPM,
		Burst:              j.Burst,
		TPM:                j.TPM,
		MaxConcurrency:     j.MaxConcurrency,
		RateLimitHeaders:   j.RateLimitHeaders,
		Faults:             j.Faults,
		InjectedRetryAfter: time.Duration(j.InjectedRetryAfter),
		Burst429:           Burst429{Every: time.Duration(j.Burst429.Every), For: time.Duration(j.Burst429.For)},
		FirstTryOnly:       j.FirstTryOnly,
	}
	return nil
}

func cloneFaults(f Faults) Faults {
	out := make(Faults, len(f))
	for k, v := range f {
		out[k] = v
	}
	return out
}

func sortedKinds(f Faults) []string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
