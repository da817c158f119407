package throttle

import (
	"math"
	"time"
)

// What the rate rests on (Snapshot.Source, metrics, mqctl status).
const (
	// SourceHeaders: the provider's rate-limit headers gave the limit; the rate never
	// exceeds CeilingShare of it.
	SourceHeaders = "headers"
	// SourceLearned: the rate started from the fleet's remembered rate and no pressure
	// has been seen since.
	SourceLearned = "learned"
	// SourceProbing: slow start, or the probe after pressure.
	SourceProbing = "probing"
)

const (
	// CeilingShare of the limit the headers state is the highest rate dispatched: evenly
	// spaced calls at exactly the limit empty a small-burst bucket on any jitter.
	CeilingShare = 0.97
	// LearnedHalfLife halves a remembered rate per this much age: a limit learned minutes
	// ago is trusted, one learned hours ago is probed for again from lower down.
	LearnedHalfLife = time.Hour
	// MaxLearnedAge: an older remembered rate is ignored (slow start from StartRate).
	MaxLearnedAge = 24 * time.Hour
	// servedSmoothing is the weight of each heartbeat's served rate in the remembered one
	// (heartbeats every 250 ms: a time constant of about 1.2 s).
	servedSmoothing = 0.2
	// learnSettle: the served average is remembered only this long after slow start
	// ended (it lags the ramp).
	learnSettle = 3 * time.Second
)

// Budget is what a successful answer's rate-limit headers say. OpenAI sends the limit,
// the remaining budget and its reset; Azure OpenAI the remaining budget; some providers
// and gateways nothing (then nothing changes).
type Budget struct {
	Ceiling float64 // req/s the limit allows (x-ratelimit-limit-requests / 60); 0: unknown
	Spent   bool    // x-ratelimit-remaining-requests or -tokens reads 0
}

// maxRate is the highest rate the controller may set: MaxRate, or the headers' ceiling.
func (c *Controller) maxRate() float64 {
	if c.ceiling > 0 {
		return min(c.p.MaxRate, c.ceiling)
	}
	return c.p.MaxRate
}

func (c *Controller) source() string {
	switch {
	case c.ceiling > 0:
		return SourceHeaders
	case c.seeded && c.decreases == 0:
		return SourceLearned
	default:
		return SourceProbing
	}
}

// OnBudget applies what a successful answer's rate-limit headers say: a stated limit
// caps the rate at CeilingShare of it (slow start stops there, before any 429); a budget
// read as spent is pressure before the first 429: a cut, at most once per window
// fleet-wide, without a pause (the answer was served).
func (c *Controller) OnBudget(b Budget) Decision {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now()
	c.grow(t)
	if b.Ceiling > 0 {
		c.ceiling = max(b.Ceiling*CeilingShare, c.p.MinRate)
		c.rate = min(c.rate, c.maxRate())
		c.good = min(c.good, c.maxRate())
	}
	var d Decision
	if !b.Spent {
		return d
	}
	c.budgets++
	d.Pressure = true
	if t.Sub(c.lastCut) >= c.p.Window {
		d.Cut = true
		d.Target, d.Good = c.cutTarget(true)
		c.applyCut(t, d.Target, d.Good)
	}
	return d
}

// Seed starts the rate from the fleet's remembered rate instead of slow start from
// StartRate: the rate learned age ago, halved per LearnedHalfLife of age, at RecoverTo of
// it, probing from there; ceiling (0: unknown) is the headers' limit remembered with it.
// Only a member still in slow start that has neither cut nor joined a running fleet is
// seeded; a remembered rate older than MaxLearnedAge is ignored. A remembered rate below
// StartRate (a start_rate set above what the provider was found to take) lowers slow
// start's first rate to it, halved per LearnedHalfLife of age: slow start from
// StartRate would overshoot the limit from the first call. A remembered rate above
// StartRate that age decayed to StartRate or less is ignored (slow start from StartRate
// finds it again). It reports whether the memory changed the start.
func (c *Controller) Seed(rate, ceiling float64, age time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.slowStart || c.decreases > 0 || c.joined || age > MaxLearnedAge {
		return false
	}
	if ceiling > 0 {
		c.ceiling = max(ceiling, c.p.MinRate)
		c.rate = min(c.rate, c.maxRate())
	}
	r := rate * math.Exp2(-max(age, 0).Hours()/LearnedHalfLife.Hours())
	if rate < c.p.StartRate {
		c.rate = min(max(r, c.p.MinRate), c.maxRate())
		return true
	}
	if !(r > c.p.StartRate) {
		return false
	}
	r = min(r, c.maxRate())
	c.slowStart, c.seeded = false, true
	c.good = r
	c.rate = max(r*c.p.RecoverTo, c.p.MinRate)
	t := c.now()
	c.probeFrom, c.lastGrow, c.steady = t, t, t
	c.holdUntil = t.Add(probeHold) // a remembered limit: hold before probing above it
	c.servedAvg = c.rate
	return true
}

// Learned is the rate the fleet may remember for this deployment: what was served
// (smoothed over heartbeats), not more than the rate or the last good rate; false in
// slow start, within learnSettle of its end, or before anything was served. The fleet stores it only while some member
// is rate-bound: a slot-bound or idle fleet's served rate says nothing of the limit.
func (c *Controller) Learned() (rate, ceiling float64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slowStart || c.now().Sub(c.steady) < learnSettle || !(c.servedAvg >= c.p.MinRate) {
		return 0, c.ceiling, false
	}
	return min(max(c.rate, c.good), c.servedAvg), c.ceiling, true
}
