package llmsim

import (
	"math"
	"sync"
	"time"
)

// epsilon absorbs float rounding so that exactly one refilled token counts as
// one token.
const epsilon = 1e-9

// bucket is a token bucket refilled continuously at rate tokens per second up
// to capacity. A zero rate means unlimited. It is not safe for concurrent use;
// limiter guards it.
type bucket struct {
	rate     float64
	capacity float64
	tokens   float64
	last     time.Time
}

func (b *bucket) unlimited() bool { return b.rate <= 0 }

func (b *bucket) refill(now time.Time) {
	if b.unlimited() {
		b.last = now
		return
	}
	if now.After(b.last) {
		b.tokens = math.Min(b.capacity, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
}

// cost caps n at the capacity: a request larger than the whole bucket needs a
// full bucket instead of being refused for ever.
func (b *bucket) cost(n float64) float64 { return math.Min(n, b.capacity) }

// wait reports how long until n tokens are available, 0 if they are now.
func (b *bucket) wait(n float64) time.Duration {
	if b.unlimited() {
		return 0
	}
	missing := b.cost(n) - b.tokens
	if missing <= epsilon {
		return 0
	}
	return time.Duration(math.Ceil(missing / b.rate * float64(time.Second)))
}

func (b *bucket) take(n float64) {
	if !b.unlimited() {
		b.tokens -= b.cost(n)
	}
}

// remaining is the whole number of tokens left, -1 when unlimited.
func (b *bucket) remaining() int {
	if b.unlimited() {
		return -1
	}
	return int(math.Floor(b.tokens + epsilon))
}

// untilFull is how long the bucket takes to refill to capacity, 0 when it is
// full or unlimited.
func (b *bucket) untilFull() time.Duration {
	missing := b.capacity - b.tokens
	if b.unlimited() || missing <= epsilon {
		return 0
	}
	return time.Duration(math.Ceil(missing / b.rate * float64(time.Second)))
}

// budget describes the bucket the way OpenAI's x-ratelimit-* headers do.
func (b *bucket) budget() budget {
	if b.unlimited() {
		return budget{}
	}
	return budget{
		perMinute: max(1, int(math.Round(b.rate*60))),
		remaining: b.remaining(),
		reset:     b.untilFull(),
	}
}

// configure changes rate and capacity, keeping the current level (clamped)
// so a live update does not hand out a fresh burst. A bucket that was
// unlimited starts full.
func (b *bucket) configure(now time.Time, rate, capacity float64) {
	wasUnlimited := b.unlimited()
	b.refill(now)
	b.rate, b.capacity = rate, capacity
	if wasUnlimited {
		b.tokens = capacity
	}
	b.tokens = math.Min(b.tokens, capacity)
	b.last = now
}

// verdict is a limiter decision.
type verdict struct {
	ok bool
	// retryAfter is the exact time until the request would be admitted.
	retryAfter time.Duration
	// tokenLimited is true when the token bucket, not the request bucket,
	// was the binding limit.
	tokenLimited bool
	// remainingRequests and remainingTokens are -1 when unlimited.
	remainingRequests int
	remainingTokens   int
}

// budget is one bucket in OpenAI's terms.
type budget struct {
	// perMinute is the refill rate per minute, at least 1; 0 when unlimited.
	perMinute int
	// remaining is the whole number of tokens left.
	remaining int
	// reset is the time until the bucket is full again.
	reset time.Duration
}

// budgets are both buckets right after a limiter decision.
type budgets struct {
	requests, tokens budget
}

// limiter admits requests against a request bucket and a token bucket,
// atomically: a request is charged to both or to neither.
type limiter struct {
	now func() time.Time

	mu       sync.Mutex
	requests bucket
	tokens   bucket
}

func newLimiter(now func() time.Time, s Settings) *limiter {
	l := &limiter{now: now}
	l.configure(s)
	return l
}

// bucketParams turns settings into (rate per second, capacity) pairs.
func bucketParams(s Settings) (reqRate, reqCap, tokRate, tokCap float64) {
	switch {
	case s.RPS > 0:
		reqRate, reqCap = s.RPS, float64(max(s.Burst, 1))
	case s.RPM > 0:
		reqRate = float64(s.RPM) / 60
		reqCap = float64(s.Burst)
		if s.Burst == 0 {
			reqCap = float64(max(s.RPM/6, 1))
		}
	}
	if s.TPM > 0 {
		tokRate, tokCap = float64(s.TPM)/60, float64(max(s.TPM/6, 1))
	}
	return reqRate, reqCap, tokRate, tokCap
}

func (l *limiter) configure(s Settings) {
	reqRate, reqCap, tokRate, tokCap := bucketParams(s)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests.configure(now, reqRate, reqCap)
	l.tokens.configure(now, tokRate, tokCap)
}

// admit charges one request of estTokens tokens, or reports how long to wait.
func (l *limiter) admit(estTokens int) verdict {
	v, _ := l.decide(estTokens)
	return v
}

// decide is admit that also reports both buckets as they are after the
// decision, read under the same lock.
func (l *limiter) decide(estTokens int) (verdict, budgets) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.requests.refill(now)
	l.tokens.refill(now)
	reqWait := l.requests.wait(1)
	tokWait := l.tokens.wait(float64(estTokens))
	v := verdict{ok: reqWait == 0 && tokWait == 0}
	if v.ok {
		l.requests.take(1)
		l.tokens.take(float64(estTokens))
	} else {
		v.retryAfter = max(reqWait, tokWait)
		v.tokenLimited = tokWait > reqWait
	}
	v.remainingRequests = l.requests.remaining()
	v.remainingTokens = l.tokens.remaining()
	return v, budgets{requests: l.requests.budget(), tokens: l.tokens.budget()}
}
