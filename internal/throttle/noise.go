package throttle

import (
	"math"
	"time"
)

// Telling the limit from noise without rate-limit headers. A limit just crossed (a probe,
// or a limit lowered under the fleet) answers with a few 429s a second, far below the
// share the window rule needs at low rates (5 in a window of 10 answers at 40/s: a probe
// would climb to 1.5x the limit). Random 429s (an overloaded backend, a gateway) come at
// any rate. So the controller estimates the fleet's share of 429s that were lone (the
// noise), decayed over noiseMemory, starting from a prior of priorNoise429 in
// priorNoiseAnswers; outside slow start, the 429s within probeHorizon are pressure when
// noise that high would bring that many less than once in 1/probeAlpha horizons
// (Poisson tail). With no noise seen, 2-3 429s within a second are pressure; with 5 %
// random 429s the bar rises to where the window rule already is. After a cut the probe
// holds for probeHold: the limit was just found, and probing again at once is most of
// the 429s at a steady header-less limit (model: 4.2 % -> 2.4 %). A limit found again
// where it was found before (the last good rate within confirmTolerance of the previous
// one) is confirmed: the hold grows by probeHold per confirmation, up to maxConfirmed
// (a 2, 4, 6 then 8 s hold), so a steady limit is probed less often, while a limit that
// moved (a cut elsewhere) probes at the first hold's pace again. A fleet that resumes
// after an idle spell of idleReset resumes below its last good rate and holds, as after
// a cut there (it may have stopped mid-probe, above the limit). Slow start's 429s are its
// overshoot: they are not counted as noise.
const (
	probeHorizon      = time.Second
	probeAlpha        = 1e-3
	noiseMemory       = time.Minute
	priorNoise429     = 0.5
	priorNoiseAnswers = 100.0
	// inFlightAfterCut: 429s this soon after a cut answer calls sent before it.
	inFlightAfterCut = 500 * time.Millisecond
	probeHold        = 2 * time.Second
	confirmTolerance = 0.1
	maxConfirmed     = 3
	idleReset        = time.Second
	// minHeldAnswers: the held sample bounds the estimate from this many answers on.
	minHeldAnswers = 40
)

// countAnswers decays the noise estimate and adds the answers served over dt.
func (c *Controller) countAnswers(dt time.Duration) {
	decay := math.Exp(-dt.Seconds() / noiseMemory.Seconds())
	c.noise429 *= decay
	c.noiseAnswers = c.noiseAnswers*decay + c.served*dt.Seconds()
	c.held429 *= decay
	c.heldAnswers *= decay
	if c.holding(c.lastGrow) {
		c.heldAnswers += c.served * dt.Seconds()
	}
}

// holding reports whether t is in the hold after a cut (past the in-flight answers).
func (c *Controller) holding(t time.Time) bool {
	return c.decreases > 0 && t.Sub(c.lastCut) > inFlightAfterCut && t.Before(c.holdUntil)
}

// confirm counts a cut whose last good rate is where the previous cut, or the fleet's
// memory, found it (the limit found again) and resets the count when it moved. A rate
// adopted from peers or reached by slow start found no limit.
func (c *Controller) confirm(good float64) {
	found := c.decreases > 0 || c.seeded
	if found && c.good > 0 && math.Abs(good-c.good) <= confirmTolerance*c.good {
		c.confirmed = min(c.confirmed+1, maxConfirmed)
		return
	}
	c.confirmed = 0
}

// hold is how long the probe holds after a cut: longer the more often the limit was
// found at the same rate.
func (c *Controller) hold() time.Duration {
	return probeHold * time.Duration(1+c.confirmed)
}

// resume restarts growth after an idle spell as if the limit had just been found where
// it was last found: at RecoverTo x the last good rate at most, holding as long as after
// a cut there (a fleet may have stopped mid-probe above the limit, and the provider's
// bucket is full again).
func (c *Controller) resume(t time.Time) {
	if c.slowStart || c.idleSince.IsZero() || t.Sub(c.idleSince) < idleReset || !(c.good > 0) {
		return
	}
	c.rate = max(min(c.rate, c.good*c.p.RecoverTo), c.p.MinRate)
	c.probeFrom = t
	c.holdUntil = maxTime(c.holdUntil, t.Add(c.hold()))
}

// noiseShare is the estimated share of answers that are 429s unrelated to the rate:
// the lone 429s among all answers, bounded by those seen while holding below a limit
// just found once that sample is large enough. Without the bound, limit 429s that the
// rule has not yet called pressure count as noise, raise the bar, let more limit 429s
// through, and the estimate inflates itself (measured: 5-11 429s a second at the limit).
func (c *Controller) noiseShare() float64 {
	all := (c.noise429 + priorNoise429) / (c.noiseAnswers + priorNoiseAnswers)
	if c.heldAnswers >= minHeldAnswers {
		return min(all, (c.held429+priorNoise429)/(c.heldAnswers+priorNoiseAnswers))
	}
	return all
}

// aboveNoise reports whether the 429s within probeHorizon are more than the noise
// explains.
func (c *Controller) aboveNoise(t time.Time) bool {
	k := c.recent.since(t.Add(-probeHorizon))
	if k < 2 {
		return false
	}
	lambda := c.noiseShare() * c.rate * probeHorizon.Seconds()
	return poissonTail(k, lambda) < probeAlpha
}

// unNoise takes the 429s that led to a cut out of the noise estimate.
func (c *Controller) unNoise(t time.Time) {
	k := c.recent.since(maxTime(t.Add(-probeHorizon), c.lastCut.Add(inFlightAfterCut)))
	c.noise429 = max(c.noise429-float64(k), 0)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// poissonTail is P(X >= k) for X ~ Poisson(lambda).
func poissonTail(k int, lambda float64) float64 {
	if lambda <= 0 {
		if k > 0 {
			return 0
		}
		return 1
	}
	term, cdf := math.Exp(-lambda), 0.0
	for i := range k {
		cdf += term
		term *= lambda / float64(i+1)
	}
	return max(1-cdf, 0)
}
