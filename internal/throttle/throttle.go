// Package throttle owns the AIMD pacing of calls to one deployment: a rate that starts
// low and doubles each window (slow start) until the first capacity signal, then grows
// by a fraction of itself per second and shrinks multiplicatively at most once per
// window; a Retry-After pauses dispatch until it passes. Dispatch permits are spaced by
// jittered intervals so that many pacers never phase-lock into bursts.
//
// The controller is pure arithmetic over an injected clock; Wait is the only blocking
// call. Permits are taken before a job is fetched, so no message waits in a worker
// while the deployment is paused.
package throttle

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Params are the controller's parameters (see config.Throttle for the defaults).
type Params struct {
	StartRate float64       // req/s at start
	MinRate   float64       // floor
	MaxRate   float64       // ceiling
	Increase  float64       // fraction of the rate added per second after slow start
	Decrease  float64       // factor applied on a capacity signal, at most once per Window
	Window    time.Duration // decrease window and slow-start doubling period
	Jitter    float64       // pacing intervals are multiplied by U(1-Jitter, 1+Jitter)
	MaxPause  time.Duration // cap on a Retry-After pause, and on Pause (where 0 = DefaultMaxPause)
	Burst     int           // permits that may be taken at once after idling (>= 1)
}

// Validate checks the invariants; each error names the parameter.
func (p Params) Validate() error {
	var errs []error
	if !(p.Decrease > 0 && p.Decrease < 1) {
		errs = append(errs, fmt.Errorf("decrease: must be in (0,1), got %g", p.Decrease))
	}
	if !(p.Increase > 0) {
		errs = append(errs, fmt.Errorf("increase: must be > 0, got %g", p.Increase))
	}
	if p.Window <= 0 {
		errs = append(errs, fmt.Errorf("window: must be > 0, got %s", p.Window))
	}
	if !(p.MinRate > 0 && p.MinRate <= p.StartRate && p.StartRate <= p.MaxRate) {
		errs = append(errs, fmt.Errorf("rates: need 0 < min_rate <= start_rate <= max_rate, got %g <= %g <= %g", p.MinRate, p.StartRate, p.MaxRate))
	}
	if p.Jitter < 0 || p.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("jitter: must be in [0,1), got %g", p.Jitter))
	}
	if p.MaxPause < 0 {
		errs = append(errs, fmt.Errorf("max_pause: must be >= 0, got %s", p.MaxPause))
	}
	if p.Burst < 1 {
		errs = append(errs, fmt.Errorf("burst: must be >= 1, got %d", p.Burst))
	}
	return errors.Join(errs...)
}

// Controller paces one deployment. Safe for concurrent use.
type Controller struct {
	mu    sync.Mutex
	p     Params
	now   func() time.Time
	rand  func() float64
	sleep func(ctx context.Context, d time.Duration) error

	rate         float64 // the fleet's rate to the deployment (req/s)
	share        float64 // this pacer's part of it, in (0,1]
	growth       bool    // the fleet is rate-bound somewhere: the rate may grow
	lastWaited   time.Time
	slowStart    bool
	lastGrow     time.Time
	lastDecrease time.Time
	pausedUntil  time.Time
	next         time.Time // earliest time of the next permit
	signals      int64
	pauses       int64
	// Permits granted in the current window and the rate of the previous one: the
	// dispatch rate actually seen, which a burst can put above the nominal rate.
	winStart    time.Time
	winCount    int
	lastWinRate float64
}

// Option adjusts a controller (tests inject the clock and randomness).
type Option func(*Controller)

// WithClock injects the clock.
func WithClock(now func() time.Time) Option { return func(c *Controller) { c.now = now } }

// WithRand injects the jitter source (values in [0,1)).
func WithRand(r func() float64) Option { return func(c *Controller) { c.rand = r } }

// WithSleep injects how Wait sleeps.
func WithSleep(s func(ctx context.Context, d time.Duration) error) Option {
	return func(c *Controller) { c.sleep = s }
}

// New returns a controller in slow start at p.StartRate.
func New(p Params, opts ...Option) (*Controller, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{p: p, now: time.Now, rand: rand.Float64, sleep: sleepCtx, rate: p.StartRate, share: 1, growth: true, slowStart: true}
	for _, o := range opts {
		o(c)
	}
	t := c.now()
	c.lastGrow = t
	c.winStart = t
	c.lastDecrease = t.Add(-p.Window)
	// Start with a full bucket: Burst permits at once (a worker's slots), then the rate.
	c.next = t.Add(-c.interval(float64(p.Burst - 1)))
	return c, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// grow applies the increase due since the last call. Growth only happens while
// permits are being asked for (demand), never while idle: dt is capped at one window.
func (c *Controller) grow(t time.Time) {
	dt := t.Sub(c.lastGrow)
	if dt <= 0 {
		return
	}
	if !c.growth { // no demand above the rate anywhere: no inflation
		c.lastGrow = t
		return
	}
	if c.slowStart {
		for dt >= c.p.Window {
			c.rate = min(c.rate*2, c.p.MaxRate)
			dt -= c.p.Window
			c.lastGrow = c.lastGrow.Add(c.p.Window)
		}
		if t.Sub(c.lastGrow) > c.p.Window { // idle: do not bank doublings
			c.lastGrow = t
		}
		return
	}
	dt = min(dt, c.p.Window)
	c.rate = min(c.rate*(1+c.p.Increase*dt.Seconds()), c.p.MaxRate)
	c.lastGrow = t
}

// Reserve takes one permit and returns how long the caller must wait before using it.
func (c *Controller) Reserve() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	// Idle time banks at most Burst permits.
	if floor := t.Add(-c.interval(float64(c.p.Burst - 1))); c.next.Before(floor) {
		c.next = floor
	}
	at := c.next
	if at.Before(c.pausedUntil) {
		at = c.pausedUntil
	}
	c.count(t)
	interval := c.interval(1 + c.p.Jitter*(2*c.rand()-1))
	if at.Before(t) {
		c.next = c.next.Add(interval)
		return 0
	}
	c.next = at.Add(interval)
	c.lastWaited = t
	return at.Sub(t)
}

// Wait blocks until a permit may be used, or ctx ends.
func (c *Controller) Wait(ctx context.Context) error {
	return c.sleep(ctx, c.Reserve())
}

// OnCapacity records a capacity signal: a multiplicative decrease (at most once per
// window, however many calls saw it) and, with a Retry-After, a pause of every permit
// until it has passed (capped at MaxPause).
func (c *Controller) OnCapacity(retryAfter time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.signals++
	if c.slowStart {
		// Leaving slow start: decrease from the rate actually dispatched (a burst of
		// free slots can be well above the nominal rate), so the rate converges from
		// above in a few windows instead of crawling up from the start rate.
		seen := max(c.lastWinRate, float64(c.winCount)/max(t.Sub(c.winStart).Seconds(), c.p.Window.Seconds()))
		c.rate = min(max(c.rate, seen/c.share), c.p.MaxRate)
	}
	c.slowStart = false
	if t.Sub(c.lastDecrease) >= c.p.Window {
		c.rate = max(c.rate*c.p.Decrease, c.p.MinRate)
		c.lastDecrease = t
		c.lastGrow = t
	}
	if retryAfter > 0 {
		until := t.Add(min(retryAfter, c.p.MaxPause))
		if until.After(c.pausedUntil) {
			c.pausedUntil = until
			c.pauses++
		}
		if c.next.Before(c.pausedUntil) {
			c.next = c.pausedUntil // no burst banked across a pause
		}
	}
}

// DefaultMaxPause caps Pause when Params.MaxPause is zero.
const DefaultMaxPause = 60 * time.Second

func (c *Controller) maxPause() time.Duration {
	if c.p.MaxPause > 0 {
		return c.p.MaxPause
	}
	return DefaultMaxPause
}

// PausedFor returns how long dispatch stays paused from now (0 if not paused).
func (c *Controller) PausedFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.pausedUntil.Sub(c.now()); d > 0 {
		return d
	}
	return 0
}

// Snapshot is the controller's observable state.
type Snapshot struct {
	Rate      float64 // the fleet rate
	Share     float64 // this pacer's part of it
	SlowStart bool
	Signals   int64
	Pauses    int64
	PausedFor time.Duration
}

// Snapshot returns the current state.
func (c *Controller) Snapshot() Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{Rate: c.rate, Share: c.share, SlowStart: c.slowStart, Signals: c.signals, Pauses: c.pauses}
	if d := c.pausedUntil.Sub(c.now()); d > 0 {
		s.PausedFor = d
	}
	return s
}

// TryReserve takes a permit only if one is available now.
func (c *Controller) TryReserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	if floor := t.Add(-c.interval(float64(c.p.Burst - 1))); c.next.Before(floor) {
		c.next = floor
	}
	if c.next.After(t) || c.pausedUntil.After(t) {
		return false
	}
	c.count(t)
	c.next = c.next.Add(c.interval(1 + c.p.Jitter*(2*c.rand()-1)))
	return true
}

// count records a granted permit in the current window.
func (c *Controller) count(t time.Time) {
	if d := t.Sub(c.winStart); d >= c.p.Window {
		c.lastWinRate = float64(c.winCount) / d.Seconds()
		if d >= 2*c.p.Window { // idle in between
			c.lastWinRate = 0
		}
		c.winStart, c.winCount = t, 0
	}
	c.winCount++
}

// interval is n pacing intervals at this pacer's rate (fleet rate x share).
func (c *Controller) interval(n float64) time.Duration {
	return time.Duration(n / (c.rate * c.share) * float64(time.Second))
}

// SetShare sets this pacer's part of the fleet rate, in (0,1].
func (c *Controller) SetShare(s float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s > 0 && s <= 1 {
		c.share = s
	}
}

// SetGrowth allows or stops the rate's growth: it grows only while some pacer of the
// fleet is rate-bound (demand >= rate), never while the fleet idles or is slot-bound.
func (c *Controller) SetGrowth(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.growth = on
}

// RateBound reports whether a permit had to wait within the last d: demand >= rate.
func (c *Controller) RateBound(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.lastWaited.IsZero() && c.now().Sub(c.lastWaited) <= d
}

// Adopt aligns the fleet rate with what peers report: a pacer still in slow start
// that never saw a capacity signal takes the peers' state (a joining worker adopts the
// fleet's rate); otherwise it moves halfway to the peers' mean, so pacers that missed
// a signal converge.
func (c *Controller) Adopt(peerRate float64, peerSlowStart bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if peerRate <= 0 {
		return
	}
	if c.slowStart && c.signals == 0 {
		if !peerSlowStart {
			c.slowStart = false
			c.rate = min(max(peerRate, c.p.MinRate), c.p.MaxRate)
		} else if peerRate > c.rate {
			c.rate = min(peerRate, c.p.MaxRate)
		}
		return
	}
	if peerSlowStart {
		return
	}
	c.rate = min(max((c.rate+peerRate)/2, c.p.MinRate), c.p.MaxRate)
}

// Pause stops every permit for d without touching the rate (a deployment-wide error:
// the provider is not over capacity, it refuses us). Like a Retry-After, d is capped
// at MaxPause: a pause comes from a message any peer (or anyone on the subject) can
// send, and one message must not stop a deployment for ever; a deployment that keeps
// refusing is paused again by its next refusal.
func (c *Controller) Pause(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d = min(d, c.maxPause())
	if until := c.now().Add(d); until.After(c.pausedUntil) {
		c.pausedUntil = until
		c.pauses++
	}
	if c.next.Before(c.pausedUntil) {
		c.next = c.pausedUntil
	}
}

// Refund gives back n permits that were taken but not used (nothing was there to
// fetch), so an idle poll does not spend the burst.
func (c *Controller) Refund(n int) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next = c.next.Add(-c.interval(float64(n)))
	if floor := c.now().Add(-c.interval(float64(c.p.Burst - 1))); c.next.Before(floor) {
		c.next = floor
	}
	if c.next.Before(c.pausedUntil) {
		c.next = c.pausedUntil
	}
}
