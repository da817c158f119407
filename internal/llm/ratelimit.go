package llm

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimit is what an answer's rate-limit headers say. OpenAI sends
// x-ratelimit-limit-requests (per minute), x-ratelimit-remaining-requests and
// x-ratelimit-reset-requests (a duration such as "1s" or "6m0s"), and the -tokens
// equivalents; Azure OpenAI sends the two remaining-* headers; other providers and
// gateways may send none. Absent or unreadable values are -1 (counts) or 0 (resets).
type RateLimit struct {
	LimitRequests     float64 // per minute
	RemainingRequests float64
	ResetRequests     time.Duration
	LimitTokens       float64 // per minute
	RemainingTokens   float64
	ResetTokens       time.Duration
}

// ParseRateLimit reads the x-ratelimit-* headers.
func ParseRateLimit(h http.Header) RateLimit {
	return RateLimit{
		LimitRequests:     headerNumber(h, "x-ratelimit-limit-requests"),
		RemainingRequests: headerNumber(h, "x-ratelimit-remaining-requests"),
		ResetRequests:     headerDuration(h, "x-ratelimit-reset-requests"),
		LimitTokens:       headerNumber(h, "x-ratelimit-limit-tokens"),
		RemainingTokens:   headerNumber(h, "x-ratelimit-remaining-tokens"),
		ResetTokens:       headerDuration(h, "x-ratelimit-reset-tokens"),
	}
}

// Known reports whether any remaining-* header was read: the provider speaks about its
// budget, so a 429 with budget left is not the limit.
func (r RateLimit) Known() bool { return r.RemainingRequests >= 0 || r.RemainingTokens >= 0 }

// Spent reports whether the remaining requests or tokens read 0.
func (r RateLimit) Spent() bool {
	return r.RemainingRequests == 0 || r.RemainingTokens == 0
}

// RequestsPerSecond is the request limit as a rate (0: not stated).
func (r RateLimit) RequestsPerSecond() float64 {
	if r.LimitRequests > 0 {
		return r.LimitRequests / 60
	}
	return 0
}

func headerNumber(h http.Header, k string) float64 {
	v := strings.TrimSpace(h.Get(k))
	if v == "" {
		return -1
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// headerDuration reads OpenAI's reset format ("1s", "6m0s", "20ms", "1.5s"); a bare
// number is seconds.
func headerDuration(h http.Header, k string) time.Duration {
	v := strings.TrimSpace(h.Get(k))
	if v == "" {
		return 0
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return d
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second))
	}
	return 0
}
