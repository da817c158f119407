// Package throttle owns the pacing of calls to one deployment, fleet-wide
// (docs/THROTTLE.md has the rule and the numbers behind it):
//
//   - a dispatch grid: every member derives the same evenly spaced slot schedule from the
//     fleet rate, the member list and the wall clock, so the fleet's calls reach the
//     provider evenly spaced instead of as a Poisson-like stream;
//   - a limit told from noise: a 429 is pressure only when its rate-limit headers show the
//     budget spent, or when it is one of at least MinSignals 429s that are at least
//     SignalShare of a window's answers; a lone 429 only delays its own job;
//   - pressure cuts the rate by Decrease, at most once per Window fleet-wide (the cut is
//     broadcast as a target); headers showing the budget spent, or 429s that are most of
//     the answers, also pause the fleet until the Retry-After;
//   - slow start doubles the rate each window until the first pressure and then continues
//     from what was served, never from StartRate; after a cut the rate returns fast to
//     RecoverTo x the last good rate, then probes with a growth that starts at Increase
//     and doubles every IncreaseDoubling.
//
// The Controller is pure arithmetic over an injected clock; Wait is the only blocking
// call. Permits are taken before a job is fetched, so no message waits in a worker while
// the deployment is paused.
package throttle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Params are the controller's parameters; DefaultParams has the defaults, and the worker
// configuration's deployments.<alias>.throttle block sets them (config.Throttle).
type Params struct {
	StartRate float64 // req/s at start, fleet-wide
	MinRate   float64 // floor
	MaxRate   float64 // ceiling
	// Increase is the probe's growth, a fraction of the rate per second, right after a
	// cut; it doubles every IncreaseDoubling without pressure, up to MaxIncrease.
	Increase         float64
	IncreaseDoubling time.Duration
	MaxIncrease      float64
	// Recover is the growth (fraction per second) back to RecoverTo x the last good rate
	// (what was served before the last cut).
	Recover   float64
	RecoverTo float64
	Decrease  float64       // factor of a cut
	Window    time.Duration // at most one cut per window; slow-start doubling period
	// MinSignals and SignalShare: 429s without rate-limit headers are pressure only when
	// at least MinSignals of them are at least SignalShare of a window's answers.
	MinSignals  int
	SignalShare float64
	// PauseShare: such 429s pause the fleet only when they are at least this share.
	PauseShare float64
	Period     time.Duration // dispatch grid period
	CatchUp    time.Duration // how late a slot may still be used (then it is lost, not banked)
	MaxPause   time.Duration // cap on a Retry-After pause, and on Pause
	// TokensPerMinute is the deployment's token budget, fleet-wide: the token gate's
	// (TokenGate, beside the controller; the controller does not read it). 0: none
	// configured (the provider's x-ratelimit-limit-tokens header may state one).
	TokensPerMinute float64
}

// DefaultParams returns the shipped parameters, the one source of the defaults
// (docs/THROTTLE.md has the rule and the model results behind each).
func DefaultParams() Params {
	return Params{
		StartRate:        5,
		MinRate:          0.5,
		MaxRate:          10000,
		Increase:         0.04,
		IncreaseDoubling: 2 * time.Second,
		MaxIncrease:      1,
		Recover:          1,
		RecoverTo:        0.95,
		Decrease:         0.9,
		Window:           250 * time.Millisecond,
		MinSignals:       5,
		SignalShare:      0.25,
		PauseShare:       0.5,
		Period:           time.Second,
		CatchUp:          50 * time.Millisecond,
		MaxPause:         60 * time.Second,
	}
}

// Validate checks the invariants, the one place they are checked. It returns every
// problem joined (errors.Join), each naming its parameter by its configuration key,
// e.g. "decrease: must be in (0,1), got 1.2".
func (p Params) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	// Negated comparisons also reject NaN.
	if !(p.Decrease > 0 && p.Decrease < 1) {
		add("decrease: must be in (0,1), got %g", p.Decrease)
	}
	if !(p.Increase > 0) {
		add("increase: must be > 0, got %g", p.Increase)
	}
	if p.Window <= 0 {
		add("window: must be > 0, got %s", p.Window)
	}
	if p.IncreaseDoubling <= 0 {
		add("increase_doubling: must be > 0, got %s", p.IncreaseDoubling)
	}
	if !(p.MaxIncrease >= p.Increase) {
		add("max_increase: must be >= increase (%g), got %g", p.Increase, p.MaxIncrease)
	}
	if !(p.Recover > 0) {
		add("recover: must be > 0, got %g", p.Recover)
	}
	if !(p.RecoverTo > 0 && p.RecoverTo <= 1) {
		add("recover_to: must be in (0,1], got %g", p.RecoverTo)
	}
	if p.MinSignals < 1 {
		add("min_signals: must be >= 1, got %d", p.MinSignals)
	}
	if !(p.SignalShare > 0 && p.SignalShare <= 1) {
		add("signal_share: must be in (0,1], got %g", p.SignalShare)
	}
	if !(p.PauseShare >= p.SignalShare && p.PauseShare <= 1) {
		add("pause_share: must be in [signal_share (%g),1], got %g", p.SignalShare, p.PauseShare)
	}
	if p.Period <= 0 {
		add("period: must be > 0, got %s", p.Period)
	}
	if p.CatchUp < 0 {
		add("catch_up: must be >= 0, got %s", p.CatchUp)
	}
	if !(p.MinRate > 0) {
		add("min_rate: must be > 0, got %g", p.MinRate)
	}
	if !(p.StartRate >= p.MinRate) {
		add("start_rate: must be >= min_rate (%g), got %g", p.MinRate, p.StartRate)
	}
	if !(p.MaxRate >= p.StartRate) {
		add("max_rate: must be >= start_rate (%g), got %g", p.StartRate, p.MaxRate)
	}
	if p.MaxPause <= 0 {
		add("max_pause: must be > 0, got %s", p.MaxPause)
	}
	if !(p.TokensPerMinute >= 0) || math.IsInf(p.TokensPerMinute, 0) {
		add("tokens_per_minute: must be >= 0 (0: none), got %g", p.TokensPerMinute)
	}
	return errors.Join(errs...)
}

// slowStartFactor is the slow-start growth per window.
const slowStartFactor = 2

// slowStartAhead: slow start stops doubling while the rate is more than this many times
// what the fleet is served (answers lag the rate by a heartbeat: about half of it during
// a normal ramp).
const slowStartAhead = 4

// Signal is one capacity answer (429/503/529), seen by this member or a peer.
type Signal struct {
	RetryAfter time.Duration
	// BudgetSpent: the answer's rate-limit headers show the budget spent
	// (x-ratelimit-remaining-requests or -tokens reads 0): the limit, not noise.
	BudgetSpent bool
	// BudgetLeft: the answer's rate-limit headers show budget left: not the limit
	// speaking (an overloaded backend, a gateway), so never pressure.
	BudgetLeft bool
}

// Decision is what the controller made of a signal.
type Decision struct {
	Pressure bool          // corroborated: the rate is cut (once per window) ...
	Cut      bool          // ... and this signal did it: Target is the new fleet rate
	Target   float64       // the rate after the cut
	Good     float64       // the last good rate recovery returns to
	Pause    time.Duration // the fleet pauses this long (0: no pause)
}

// Controller paces one deployment for one member of the fleet. Safe for concurrent use.
type Controller struct {
	mu    sync.Mutex
	p     Params
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error

	rate        float64 // the fleet's rate to the deployment (req/s)
	slowStart   bool
	good        float64 // last good rate: recovery returns to RecoverTo x good fast
	lastCut     time.Time
	holdUntil   time.Time // the probe holds until then (after a cut, a seed, an idle spell)
	confirmed   int       // consecutive cuts at about the same last good rate (noise.go)
	idleSince   time.Time // when growth last stopped (no member rate-bound)
	probeFrom   time.Time // the probe's growth doubles from here
	lastGrow    time.Time
	lastDouble  time.Time
	growth      bool // some member is rate-bound: the rate may grow
	served      float64
	answered    float64 // the fleet's answers per second, capacity errors included (0: not yet known)
	pausedUntil time.Time
	grid        grid
	cursor      slot // the last slot used
	lastWaited  time.Time
	recent      stamps // 429s seen fleet-wide within the last window (or probeHorizon)
	// taken are this member's permits of the last window, kept in slow start only
	// (windowRate): what the fleet dispatched, without a heartbeat's lag.
	taken stamps

	// What the provider and the fleet's memory say (learned.go).
	ceiling   float64   // req/s the provider's rate-limit headers allow (0: unknown)
	seeded    bool      // the rate started from the fleet's remembered rate
	servedAvg float64   // smoothed served rate (the rate the fleet remembers)
	joined    bool      // adopted a peer's rate once (a joiner takes the fleet's)
	steady    time.Time // when slow start ended
	// The noise estimate (noise.go): 429s not part of pressure, and answers, both
	// decayed with noiseMemory.
	noise429, noiseAnswers float64
	// The same, counted only while holding after a cut (below the limit just found):
	// a sample known not to be the limit, which bounds the estimate (noise.go).
	held429, heldAnswers float64
	budgets              int64 // answers whose headers showed the budget spent

	signals, lone, decreases, pauses int64
}

// Option adjusts a controller (tests inject the clock).
type Option func(*Controller)

// WithClock injects the clock.
func WithClock(now func() time.Time) Option { return func(c *Controller) { c.now = now } }

// WithSleep injects how Wait sleeps.
func WithSleep(s func(ctx context.Context, d time.Duration) error) Option {
	return func(c *Controller) { c.sleep = s }
}

// New returns a controller in slow start at p.StartRate, alone in its grid.
func New(p Params, opts ...Option) (*Controller, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{p: p, now: time.Now, sleep: sleepCtx, rate: p.StartRate, slowStart: true, growth: true,
		grid: grid{period: p.Period, cum: []float64{1}}}
	for _, o := range opts {
		o(c)
	}
	t := c.now()
	c.lastGrow, c.lastDouble, c.probeFrom = t, t, t
	c.lastCut = t.Add(-p.Window)
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

// grow applies the growth due since the last call, only while some member is rate-bound
// (never while the fleet idles or is slot-bound). dt is capped at one window.
func (c *Controller) grow(t time.Time) {
	dt := t.Sub(c.lastGrow)
	if dt <= 0 {
		return
	}
	c.lastGrow = t
	c.countAnswers(dt)
	// Paused (a Retry-After, an open breaker): nothing is dispatched, so nothing is
	// probed; a rate grown meanwhile would burst when the pause ends (a fleet blocked by
	// a refused key doubled to max_rate). Only the recovery toward the last good rate,
	// a rate that was served, goes on.
	paused := t.Before(c.pausedUntil) && (c.slowStart || c.rate >= c.good*c.p.RecoverTo)
	if !c.growth || paused {
		// Not rate-bound: nothing is probed, so the probe's acceleration waits too.
		c.lastDouble = t
		c.probeFrom = c.probeFrom.Add(dt)
		return
	}
	if c.slowStart {
		for t.Sub(c.lastDouble) >= c.p.Window {
			if c.served > 0 && c.rate > slowStartAhead*c.served {
				// The provider serves far less than the rate: the fleet does not keep
				// up with it (CPU-starved), or the rate is past the limit and the
				// 429s are on their way. Doubling further would only make the window's
				// shares of a nominal rate unreachable (the fleet would run
				// unthrottled) or the overshoot larger. Served, not answered: 429s
				// are answers too, and during an overshoot they grow with the rate.
				c.lastDouble = t
				break
			}
			c.rate = min(c.rate*slowStartFactor, c.maxRate())
			c.lastDouble = c.lastDouble.Add(c.p.Window)
		}
		if t.Sub(c.lastDouble) > c.p.Window { // idle: bank no doublings
			c.lastDouble = t
		}
		return
	}
	sec := min(dt, c.p.Window).Seconds()
	if floor := c.good * c.p.RecoverTo; c.rate < floor {
		c.rate = min(c.rate*math.Exp(c.p.Recover*sec), floor, c.maxRate())
		if c.rate >= floor {
			c.probeFrom = t
		}
		return
	}
	if t.Before(c.holdUntil) { // at the limit just found: hold before probing again
		c.probeFrom = t
		return
	}
	g := min(c.p.Increase*math.Exp2(t.Sub(c.probeFrom).Seconds()/c.p.IncreaseDoubling.Seconds()), c.p.MaxIncrease)
	c.rate = min(c.rate*math.Exp(g*sec), c.maxRate())
}

// next is this member's next slot from t (not taken).
func (c *Controller) next(t time.Time) (time.Time, slot, bool) {
	from := t.Add(-c.p.CatchUp)
	if from.Before(c.pausedUntil) {
		from = c.pausedUntil
	}
	return c.grid.next(from, c.rate, c.cursor)
}

// Next returns how long until this member's next slot (0: one is due now). It takes
// nothing: the rate or the grid may move before then, so callers plan again.
func (c *Controller) Next() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	at, _, _ := c.next(t)
	return max(at.Sub(t), 0)
}

// TryReserve takes this member's slot if one is due now.
func (c *Controller) TryReserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	at, s, ok := c.next(t)
	if !ok || at.After(t) {
		return false
	}
	c.cursor = s
	c.noteTaken(t)
	return true
}

// replanEvery bounds a wait for a slot: the rate and the grid may move meanwhile.
const replanEvery = 50 * time.Millisecond

// Wait blocks until this member's next slot, takes it, or returns when ctx ends.
func (c *Controller) Wait(ctx context.Context) error {
	for {
		if c.TryReserve() {
			return nil
		}
		d := c.Next()
		c.mu.Lock()
		c.lastWaited = c.now()
		c.mu.Unlock()
		if err := c.sleep(ctx, min(max(d, time.Millisecond), replanEvery)); err != nil {
			return err
		}
	}
}

// Want records that this member wanted a permit it could not take now: what Wait
// records while it waits, so that the fleet knows the member is rate-bound (the rate
// grows only then). A caller that picks among several controllers with TryReserve (a
// deployment pool) calls it on each it found without a slot.
func (c *Controller) Want() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastWaited = c.now()
}

// OnCapacity records a capacity answer seen by this member or a peer and decides whether
// it is pressure. A lone 429 (no headers showing the budget spent, too few or too small a
// share of the window's answers) changes nothing but the counters: only its own job waits.
// Pressure cuts the rate at most once per window and may pause the fleet.
func (c *Controller) OnCapacity(s Signal) Decision {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	c.signals++
	c.recent.add(t, t.Add(-max(c.p.Window, probeHorizon)))
	inWindow := c.recent.since(t.Add(-c.p.Window))
	n := float64(inWindow)
	answers := max(c.windowRate(t)*c.p.Window.Seconds(), 1)
	var d Decision
	switch {
	case s.BudgetSpent:
		d.Pressure = true
		d.Pause = s.RetryAfter
	case inWindow >= c.p.MinSignals && n >= c.p.SignalShare*answers:
		d.Pressure = true
		if n >= c.p.PauseShare*answers {
			d.Pause = s.RetryAfter
		}
	case !c.slowStart && c.aboveNoise(t):
		d.Pressure = true
	default:
		c.lone++
		// Slow start's 429s are its overshoot (the limit), not noise.
		if !c.slowStart && t.Sub(c.lastCut) > inFlightAfterCut {
			c.noise429++
			if c.holding(t) {
				c.held429++
			}
		}
		return d
	}
	if d.Pause > 0 {
		c.pause(t, min(d.Pause, c.p.MaxPause))
	}
	if t.Sub(c.lastCut) >= c.p.Window {
		d.Cut = true
		d.Target, d.Good = c.cutTarget(false)
		c.applyCut(t, d.Target, d.Good)
	}
	return d
}

// windowRate is the rate whose window share the window rule asks for: the rate, but in
// slow start not beyond what the fleet dispatched in the window, or twice what it
// answers when that is more. The doubling runs ahead of what is dispatched, most of all
// on a loaded machine, and a share of a nominal rate the fleet never dispatched is
// reached late: measured, a cold 4-worker fleet's first overshoot drew 21 429s in a
// second. The answers alone are not the measure either: they come from the heartbeats,
// a heartbeat behind a rate that doubles every window, and a 429 comes back at once
// where a served answer takes the call's latency, so a share of the answers counted
// random 429s as pressure (make demo, 5 % random 429s: 2 runs of 61 were cut in slow
// start at ~60 calls a second and ran 7.6 and 15.7 s instead of 2.9 s).
func (c *Controller) windowRate(t time.Time) float64 {
	if c.slowStart && c.answered > 0 {
		return min(c.rate, max(2*c.answered, c.dispatched(t)))
	}
	return c.rate
}

// noteTaken records a permit this member took at t, in slow start only.
func (c *Controller) noteTaken(t time.Time) {
	if !c.slowStart {
		c.taken = stamps{}
		return
	}
	c.taken.add(t, t.Add(-c.p.Window))
}

// dispatched is the fleet's dispatch rate over the window before t, from this member's
// permits and its part of the grid (every member paces the same grid).
func (c *Controller) dispatched(t time.Time) float64 {
	n := c.taken.since(t.Add(-c.p.Window))
	share := c.share()
	if !(share > 0) {
		share = 1
	}
	return float64(n) / share / c.p.Window.Seconds()
}

// share is this member's part of the grid.
func (c *Controller) share() float64 {
	share := c.grid.cum[c.grid.me]
	if c.grid.me > 0 {
		share -= c.grid.cum[c.grid.me-1]
	}
	return share
}

// cutTarget is the rate after a cut and the last good rate. Leaving slow start the cut is
// from what was served (at least the previous window's rate, which drew no pressure),
// never from the overshoot, and the last good rate is the cut's target: a served figure
// read during a doubling ramp holds the provider's burst and the overshoot (read as
// good, it put the hold above the limit: its 429s then counted as noise, and the noise
// bar rose with them). Otherwise the last good rate is what was served (smoothed over
// heartbeats: one heartbeat's figure is a handful of answers), but not less than
// Decrease x the rate: the served figure lags a growing rate.
//
// When a served answer's headers say the budget is spent (spent, OnBudget: no 429 yet),
// the rate was at the limit, not past it by an unknown amount: the last good rate is the
// rate itself.
// (From the served figure it came out at 0.95 of the limit, and the hold at 0.95 of
// that: measured, 8 s holds at 45 of 50 calls a second with no 429.)
func (c *Controller) cutTarget(spent bool) (target, good float64) {
	base := c.rate
	if c.slowStart {
		prev := c.rate / slowStartFactor // the previous window's rate ...
		if c.served > 0 {
			// ... but not far beyond what was answered: when answers lag the doubling
			// (many members, heartbeats behind the ramp) that rate drew pressure too,
			// only later (measured: a hold above the limit, its 429s read as noise).
			prev = min(prev, 2*c.served)
		}
		base = min(c.rate, max(c.served, prev))
		target = max(base*c.p.Decrease, c.p.MinRate)
		return target, target
	}
	good = base
	if served := c.servedAvg; served > 0 && !spent {
		// What was served, not counting noise 429s as a limit: under random 429s the
		// served rate is (1 - noise) x the rate, and a cut from it would ratchet down.
		good = min(base, max(served/(1-c.noiseShare()), base*c.p.Decrease))
	}
	return max(base*c.p.Decrease, c.p.MinRate), good
}

func (c *Controller) applyCut(t time.Time, target, good float64) {
	if t.Sub(c.lastCut) < c.p.Window { // the same cut, heard twice: align, count once
		c.rate = max(min(c.rate, target), c.p.MinRate)
		return
	}
	ceiling := target
	if c.slowStart {
		c.slowStart, c.steady = false, t // the last good rate is the target: hold there
	} else {
		// Never above the last good rate's floor: a cut detected late, from a rate far
		// above the limit, has a target above it too (a hold there drew 429s that counted
		// as noise, and the noise bar rose with them).
		ceiling = min(target, good*c.p.RecoverTo)
	}
	c.rate = max(min(c.rate, ceiling), c.p.MinRate)
	c.confirm(good)
	c.good = good
	c.unNoise(t)
	c.lastCut, c.probeFrom, c.lastGrow = t, t, t
	c.holdUntil = t.Add(c.hold())
	c.decreases++
}

// ApplyCut applies a cut a peer decided (the fleet's one cut of that window).
func (c *Controller) ApplyCut(target, good float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	c.applyCut(t, target, good)
}

func (c *Controller) pause(t time.Time, d time.Duration) {
	if until := t.Add(d); until.After(c.pausedUntil) {
		c.pausedUntil = until
		c.pauses++
	}
}

// Pause stops every permit for d without touching the rate (a deployment-wide error:
// the provider is not over capacity, it refuses us). Like a Retry-After, d is capped
// at MaxPause: a pause comes from a message any peer (or anyone on the subject) can
// send, and one message must not stop a deployment for ever; a deployment that keeps
// refusing is paused again by its next refusal.
func (c *Controller) Pause(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d = min(d, c.p.MaxPause)
	if until := c.now().Add(d); until.After(c.pausedUntil) {
		c.pausedUntil = until
		c.pauses++
	}
}

// Hold stops every permit for d without counting a pause (a joining member listens to
// the fleet before its first slot).
func (c *Controller) Hold(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until := c.now().Add(d); until.After(c.pausedUntil) {
		c.pausedUntil = until
	}
}

// PausedFor returns how long dispatch stays paused from now (0 if not paused).
func (c *Controller) PausedFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.pausedUntil.Sub(c.now()), 0)
}

// Snapshot is the controller's observable state.
type Snapshot struct {
	Rate      float64 // the fleet rate
	Share     float64 // this member's part of the grid
	Good      float64 // the last good rate
	SlowStart bool
	Signals   int64 // capacity answers seen, fleet-wide
	Lone      int64 // of which were not pressure: only their own job waited
	Decreases int64 // cuts applied
	Pauses    int64
	PausedFor time.Duration
	Ceiling   float64 // req/s the provider's headers allow (0: unknown)
	Source    string  // what the rate rests on: SourceHeaders, SourceLearned or SourceProbing
	Budgets   int64   // answers whose rate-limit headers showed the budget spent
}

// Snapshot returns the current state.
func (c *Controller) Snapshot() Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Snapshot{Rate: c.rate, Share: c.share(), Good: c.good, SlowStart: c.slowStart, Signals: c.signals,
		Lone: c.lone, Decreases: c.decreases, Pauses: c.pauses, PausedFor: max(c.pausedUntil.Sub(c.now()), 0),
		Ceiling: c.ceiling, Source: c.source(), Budgets: c.budgets}
}

// Share is this member's part of the fleet's grid (1/members: equal weights), as
// Snapshot's, without the rest of the snapshot.
func (c *Controller) Share() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.share()
}

// SetMembers places this member in the fleet's grid: weights are the members' demand
// weights in the order of their sorted ids, me this member's index.
func (c *Controller) SetMembers(weights []float64, me int) {
	var sum float64
	for _, w := range weights {
		if !(w > 0) {
			return
		}
		sum += w
	}
	if me < 0 || me >= len(weights) {
		return
	}
	cum := make([]float64, len(weights))
	acc := 0.0
	for i, w := range weights {
		acc += w / sum
		cum[i] = acc
	}
	cum[len(cum)-1] = 1
	c.mu.Lock()
	defer c.mu.Unlock()
	c.grid.cum, c.grid.me = cum, me
}

// SetAnswered sets the fleet's answer rate, capacity errors included (per second,
// summed from the members' heartbeats).
func (c *Controller) SetAnswered(r float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answered = r
}

// SetServed sets the fleet's served rate (answers other than capacity errors, per
// second), summed from the members' heartbeats.
func (c *Controller) SetServed(r float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.served = r
	if c.servedAvg == 0 { // the first figure: nothing to smooth yet
		c.servedAvg = r
		return
	}
	c.servedAvg += servedSmoothing * (r - c.servedAvg)
}

// SetGrowth allows or stops the rate's growth: it grows only while some member of the
// fleet is rate-bound (demand >= rate), never while the fleet idles or is slot-bound.
func (c *Controller) SetGrowth(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	switch {
	case !on && c.growth:
		c.idleSince = t
	case on && !c.growth:
		c.resume(t)
	}
	c.growth = on
}

// RateBound reports whether a permit had to wait within the last d: demand >= rate.
func (c *Controller) RateBound(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.lastWaited.IsZero() && c.now().Sub(c.lastWaited) <= d
}

// Adopt aligns the fleet rate with what peers report: a member that has not cut yet and
// still runs on its own start (slow start, or the fleet's remembered rate) takes the
// first peer's state that is past slow start (a joining worker adopts the running
// fleet's rate); otherwise it moves halfway to the peer's, so members converge on one
// grid.
func (c *Controller) Adopt(peerRate float64, peerSlowStart bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !(peerRate > 0) {
		return
	}
	rate := min(max(peerRate, c.p.MinRate), c.maxRate())
	if c.decreases == 0 && (c.slowStart || c.seeded && !c.joined) {
		switch {
		case !peerSlowStart:
			c.joined, c.slowStart = true, false
			c.rate, c.good = rate, rate
			c.probeFrom, c.steady = c.now(), c.now()
			c.holdUntil = c.now().Add(probeHold)
		case c.slowStart && rate > c.rate:
			// The peer doubled at the end of its window: this member's next doubling
			// is a window from now, not at the end of its own window (a member that
			// took a peer's rate and then doubled it at once leapfrogged the fleet,
			// and its cut, from that rate's half, was above the limit: measured,
			// 4 x 32 at 40 req/s cut at 72 and held above the limit, 5.2 % 429s).
			c.rate = rate
			c.lastDouble = c.now()
		}
		return
	}
	if peerSlowStart {
		return
	}
	c.rate = min(max((c.rate+peerRate)/2, c.p.MinRate), c.maxRate())
}
