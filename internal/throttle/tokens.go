package throttle

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/multiquery/multiquery/internal/wire"
)

// TokenGate paces one deployment's tokens for one member of the fleet, beside the
// request Controller: a token bucket refilled at the member's part of the deployment's
// tokens per minute (the configured tokens_per_minute, or what the provider's
// x-ratelimit-limit-tokens header states, the lower of the two), TokenShare of it, over
// the fleet's members as the heartbeats count them. A permit reserves a typical call's
// tokens before the job is fetched (its request is not known yet); the call then
// charges its estimate (Charge), and its answer corrects it (Settle): the prompt's
// characters / 4, scaled by what the provider counted for earlier prompts, plus
// max_completion_tokens (or the completions seen, when unset). A gate without a budget
// admits everything. Safe for concurrent use.
//
// Why per member and not one fleet-wide bucket: the request grid shares a rate without
// messages because every slot is the same size; calls differ in tokens, so one shared
// budget would need a round trip per call (a compare-and-set on a KV key). Each member
// spends its part instead, a member's estimate error stays its own, and a member that
// joins or leaves changes the parts within a heartbeat. The price: an idle member's part
// is unused (the fleet runs below the budget while demand is uneven).
type TokenGate struct {
	// on: a budget is in force (configured or stated); it never goes off again. Read
	// without the lock (Active), so that a deployment without a budget pays nothing.
	on  atomic.Bool
	mu  sync.Mutex
	now func() time.Time

	configured float64 // tokens per minute, fleet-wide (0: none)
	stated     float64 // tokens per minute the provider's headers state (0: none)
	members    int
	level      float64 // tokens available; below 0 a debt the refill pays first
	last       time.Time
	// Learned from the answers: the charge of a typical call (what a permit reserves),
	// the provider's prompt tokens per estimated token, and the completion tokens of an
	// answer (the estimate when a request sets no max_completion_tokens).
	typical, ratio, completion float64
	charged, refunded          float64 // totals (tests, metrics)
}

// TokenShare is the part of the token budget the gate spends: estimates are estimates,
// and a provider's bucket that is drained by small errors answers with 429s.
const TokenShare = 0.95

// tokenBurst is the bucket's capacity in seconds of its refill (and at least one
// typical call): enough for the calls one grid period dispatches at once, not a burst
// the provider's own bucket would refuse.
const tokenBurst = time.Second

// tokenSmoothing weighs each answer in the learned figures.
const tokenSmoothing = 0.1

// NewTokenGate returns a gate with a budget of tpm tokens per minute, fleet-wide (0:
// none until headers state one). now is the clock (nil: time.Now).
func NewTokenGate(tpm float64, now func() time.Time) *TokenGate {
	if now == nil {
		now = time.Now
	}
	g := &TokenGate{now: now, configured: max(tpm, 0), members: 1, ratio: 1, last: now()}
	g.level = g.capacity()
	g.on.Store(g.configured > 0)
	return g
}

// Active reports whether a budget is in force (configured, or stated by the
// provider's headers). A caller may skip an inactive gate altogether: it admits
// everything and learns nothing (the learned figures start with the budget).
func (g *TokenGate) Active() bool { return g.on.Load() }

// Limit is the budget in force in tokens per minute, fleet-wide (0: none).
func (g *TokenGate) Limit() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limit()
}

func (g *TokenGate) limit() float64 {
	switch {
	case g.configured > 0 && g.stated > 0:
		return min(g.configured, g.stated)
	case g.configured > 0:
		return g.configured
	}
	return g.stated
}

// rate is this member's refill in tokens per second.
func (g *TokenGate) rate() float64 {
	return g.limit() * TokenShare / 60 / float64(max(g.members, 1))
}

func (g *TokenGate) capacity() float64 {
	return max(g.rate()*tokenBurst.Seconds(), g.typical)
}

func (g *TokenGate) refill(t time.Time) {
	if dt := t.Sub(g.last).Seconds(); dt > 0 {
		g.level = min(g.level+dt*g.rate(), g.capacity())
	}
	g.last = t
}

// SetMembers sets the number of fleet members that share the budget.
func (g *TokenGate) SetMembers(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refill(g.now())
	g.members = max(n, 1)
	g.level = min(g.level, g.capacity())
}

// SetStated records the budget a provider's x-ratelimit-limit-tokens header states
// (tokens per minute; <= 0: not stated, nothing changes).
func (g *TokenGate) SetStated(tpm float64) {
	if !(tpm > 0) || math.IsInf(tpm, 0) {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stated == tpm {
		return
	}
	g.refill(g.now())
	if g.limit() == 0 { // the first budget: start with a full bucket
		g.stated = tpm
		g.level = g.capacity()
		g.on.Store(true)
		return
	}
	g.stated = tpm
	g.level = min(g.level, g.capacity())
}

// Typical is what a permit reserves: the charge of a typical call so far.
func (g *TokenGate) Typical() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.typical
}

// TryReserve takes n tokens if the budget has them now (a bucket in debt has none; a
// gate without a budget always does).
func (g *TokenGate) TryReserve(n float64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.limit() == 0 {
		return true
	}
	g.refill(g.now())
	if g.level <= 0 || g.level < min(n, g.capacity()) {
		return false
	}
	g.level -= n
	return true
}

// Next returns how long until n tokens are there (0: now).
func (g *TokenGate) Next(n float64) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.limit() == 0 {
		return 0
	}
	g.refill(g.now())
	need := max(min(n, g.capacity()), math.SmallestNonzeroFloat64) - g.level
	if need <= 0 {
		return 0
	}
	return time.Duration(need / g.rate() * float64(time.Second))
}

// Wait blocks until n tokens are there and takes them, or returns when ctx ends.
func (g *TokenGate) Wait(ctx context.Context, n float64) error {
	for !g.TryReserve(n) {
		if err := sleepCtx(ctx, min(max(g.Next(n), time.Millisecond), replanEvery)); err != nil {
			return err
		}
	}
	return nil
}

// Refund gives back tokens reserved for a call that was not made.
func (g *TokenGate) Refund(n float64) {
	g.adjust(-n)
}

func (g *TokenGate) adjust(delta float64) {
	if delta == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refill(g.now())
	g.level = min(g.level-delta, g.capacity())
	if delta > 0 {
		g.charged += delta
	} else {
		g.refunded -= delta
	}
}

// Estimate is the tokens a request will count: its prompt (characters / 4, scaled by
// what the provider counted for earlier prompts) plus max_completion_tokens (or the
// completions seen so far, when the request sets none).
func (g *TokenGate) Estimate(req *wire.Request) float64 {
	chars := 0
	for _, m := range req.Messages {
		chars += utf8.RuneCountInString(m.Content) + 1
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	completion := g.completion
	if req.MaxCompletionTokens > 0 {
		completion = float64(req.MaxCompletionTokens)
	}
	return math.Ceil(float64(chars)/4*g.ratio) + completion
}

// Charge replaces a permit's reservation (reserved) with a call's estimate before the
// call: the difference is charged (or given back).
func (g *TokenGate) Charge(reserved, estimate float64) {
	g.mu.Lock()
	if g.typical == 0 { // before the first answer, the first estimate is typical
		g.typical = estimate
	}
	g.mu.Unlock()
	g.adjust(estimate - reserved)
}

// Settle corrects a call's charge (estimate) once it is answered. answered false: the
// provider refused it (a capacity error) and counted nothing, so the estimate is given
// back. Otherwise the call counts what the provider reported when that is more than
// the estimate (providers count a request at admission from its prompt and
// max_completion_tokens; some count what was used), and the learned figures move
// towards the answer's: the typical charge, the prompt ratio, the completion.
func (g *TokenGate) Settle(req *wire.Request, estimate float64, answered bool, usage *wire.Usage) {
	if !answered {
		g.adjust(-estimate)
		return
	}
	charge := estimate
	if usage != nil {
		charge = max(estimate, float64(usage.PromptTokens+usage.CompletionTokens))
	}
	g.adjust(charge - estimate)
	chars := 0
	for _, m := range req.Messages {
		chars += utf8.RuneCountInString(m.Content) + 1
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	learn := func(v *float64, x float64) {
		if *v == 0 {
			*v = x
			return
		}
		*v += tokenSmoothing * (x - *v)
	}
	learn(&g.typical, charge)
	if usage != nil && usage.PromptTokens > 0 && chars >= 4 {
		learn(&g.ratio, float64(usage.PromptTokens)/(float64(chars)/4))
		learn(&g.completion, float64(usage.CompletionTokens))
	}
}

// TokenSnapshot is the gate's observable state.
type TokenSnapshot struct {
	Limit    float64 // tokens per minute in force, fleet-wide (0: none)
	Rate     float64 // this member's refill, tokens per second
	Level    float64 // tokens available now (below 0: a debt)
	Typical  float64 // what a permit reserves
	Charged  float64 // tokens charged beyond the reservations, in all
	Refunded float64 // tokens given back, in all
}

// Snapshot returns the gate's state.
func (g *TokenGate) Snapshot() TokenSnapshot {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refill(g.now())
	return TokenSnapshot{Limit: g.limit(), Rate: g.rate(), Level: g.level, Typical: g.typical, Charged: g.charged, Refunded: g.refunded}
}
