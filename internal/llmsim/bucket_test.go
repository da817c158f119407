package llmsim

import (
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestLimiterAdmitsRateTimesWindowPlusBurst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		settings Settings
		window   time.Duration
		step     time.Duration
		want     int
	}{
		{"50 rps burst 5 over 1s", Settings{RPS: 50, Burst: 5}, time.Second, time.Millisecond, 55},
		{"50 rps default burst 1 over 1s", Settings{RPS: 50}, time.Second, time.Millisecond, 51},
		{"600 rpm default burst 100 over 2s", Settings{RPM: 600}, 2 * time.Second, time.Millisecond, 120},
		{"120 rpm burst 1 over 10s", Settings{RPM: 120, Burst: 1}, 10 * time.Second, 10 * time.Millisecond, 21},
		{"unlimited admits every attempt", Settings{}, 100 * time.Millisecond, time.Millisecond, 303},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			l := newLimiter(clock.Now, tt.settings)
			admitted := 0
			for elapsed := time.Duration(0); elapsed <= tt.window; elapsed += tt.step {
				// Overload: several attempts at every instant.
				for range 3 {
					if l.admit(1).ok {
						admitted++
					}
				}
				clock.Advance(tt.step)
			}
			if admitted != tt.want {
				t.Errorf("admitted %d over %v, want %d", admitted, tt.window, tt.want)
			}
		})
	}
}

func TestLimiterVerdict(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	l := newLimiter(clock.Now, Settings{RPS: 50, Burst: 2, TPM: 6000})
	// Token bucket: 100 tokens/s, capacity 1000.
	got := []verdict{l.admit(400), l.admit(400), l.admit(400)}
	want := []verdict{
		{ok: true, remainingRequests: 1, remainingTokens: 600},
		{ok: true, remainingRequests: 0, remainingTokens: 200},
		// Both buckets are short: requests need 20ms, tokens need 2s.
		{retryAfter: 2 * time.Second, tokenLimited: true, remainingRequests: 0, remainingTokens: 200},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(verdict{})); diff != "" {
		t.Fatalf("verdicts (-want +got):\n%s", diff)
	}

	clock.Advance(10 * time.Millisecond)
	if v := l.admit(1); v.ok || v.tokenLimited || v.retryAfter != 10*time.Millisecond {
		t.Errorf("after 10ms: %+v, want a request-limited verdict with 10ms to wait", v)
	}
}

func TestLimiterOversizedRequestNeedsFullBucket(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	l := newLimiter(clock.Now, Settings{TPM: 600}) // 10 tokens/s, capacity 100
	if v := l.admit(5000); !v.ok {
		t.Fatalf("first oversized request refused: %+v", v)
	}
	v := l.admit(5000)
	if v.ok || v.retryAfter != 10*time.Second {
		t.Fatalf("second oversized request: %+v, want refused with 10s to wait", v)
	}
	clock.Advance(10 * time.Second)
	if v := l.admit(5000); !v.ok {
		t.Fatalf("after a full refill: %+v, want admitted", v)
	}
}

func TestLimiterConfigureKeepsLevel(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	l := newLimiter(clock.Now, Settings{})
	// Unlimited to limited starts full.
	l.configure(Settings{RPS: 10, Burst: 3})
	for i := range 3 {
		if !l.admit(1).ok {
			t.Fatalf("request %d of the first burst refused", i)
		}
	}
	// A new, larger burst does not refill the bucket.
	l.configure(Settings{RPS: 10, Burst: 10})
	if v := l.admit(1); v.ok || v.retryAfter != 100*time.Millisecond {
		t.Fatalf("after reconfigure: %+v, want refused with 100ms to wait", v)
	}
	l.configure(Settings{})
	if v := l.admit(1); !v.ok || v.remainingRequests != -1 {
		t.Fatalf("after removing the limit: %+v, want admitted and unlimited", v)
	}
}
