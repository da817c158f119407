package llm

import (
	"net/http"
	"testing"
	"time"
)

func TestRateLimitHeadersAreReadAsTheProvidersSendThem(t *testing.T) {
	for _, tt := range []struct {
		name    string
		headers map[string]string
		want    RateLimit
		rps     float64
		known   bool
	}{
		{"none (a gateway that sends nothing)", nil,
			RateLimit{LimitRequests: -1, RemainingRequests: -1, LimitTokens: -1, RemainingTokens: -1}, 0, false},
		{"OpenAI", map[string]string{
			"x-ratelimit-limit-requests": "2400", "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "50ms",
			"x-ratelimit-limit-tokens": "150000", "x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "6m0s"},
			RateLimit{LimitRequests: 2400, RemainingRequests: 3, ResetRequests: 50 * time.Millisecond,
				LimitTokens: 150000, RemainingTokens: 149000, ResetTokens: 6 * time.Minute}, 40, true},
		{"Azure (remaining only)", map[string]string{"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "900"},
			RateLimit{LimitRequests: -1, RemainingRequests: 0, LimitTokens: -1, RemainingTokens: 900}, 0, true},
		{"unreadable values count as absent", map[string]string{"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "-2", "x-ratelimit-reset-requests": "soon"},
			RateLimit{LimitRequests: -1, RemainingRequests: -1, LimitTokens: -1, RemainingTokens: -1}, 0, false},
		{"a reset in bare seconds", map[string]string{"x-ratelimit-reset-requests": "1.5"},
			RateLimit{LimitRequests: -1, RemainingRequests: -1, ResetRequests: 1500 * time.Millisecond, LimitTokens: -1, RemainingTokens: -1}, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.headers {
				h.Set(k, v)
			}
			got := ParseRateLimit(h)
			if got != tt.want {
				t.Fatalf("ParseRateLimit = %+v, want %+v", got, tt.want)
			}
			if got.RequestsPerSecond() != tt.rps || got.Known() != tt.known {
				t.Fatalf("RequestsPerSecond %g Known %v, want %g %v", got.RequestsPerSecond(), got.Known(), tt.rps, tt.known)
			}
		})
	}
}
