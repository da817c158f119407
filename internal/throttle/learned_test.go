package throttle

import (
	"math"
	"testing"
	"time"
)

func TestAStatedLimitCapsSlowStartBeforeAny429(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.OnBudget(Budget{Ceiling: 40}) // x-ratelimit-limit-requests: 2400 (per minute)
	c.advance(2 * time.Second)        // slow start would reach 10 x 2^8
	ctl.Next()
	s := ctl.Snapshot()
	if !near(s.Rate, 40*CeilingShare) || s.Ceiling != 40*CeilingShare || s.Source != SourceHeaders || s.Decreases != 0 {
		t.Fatalf("after 2 s of slow start under a stated 40/s: %+v; want the rate held at %g, source headers, no cut", s, 40*CeilingShare)
	}
}

func TestASpentBudgetOnAServedAnswerCutsOncePerWindowWithoutPause(t *testing.T) {
	ctl, c := steady(t, 50)
	d := ctl.OnBudget(Budget{Spent: true})
	s := ctl.Snapshot()
	if !d.Cut || !near(s.Rate, 45) || s.PausedFor != 0 || s.Signals != 0 || s.Budgets != 1 {
		t.Fatalf("remaining 0 on a 200: decision %+v, snapshot %+v; want one cut to 45, no pause, no 429 counted", d, s)
	}
	if d := ctl.OnBudget(Budget{Spent: true}); d.Cut {
		t.Fatalf("a second spent budget in the same window cut again: %+v", d)
	}
	c.advance(300 * time.Millisecond)
	if d := ctl.OnBudget(Budget{Spent: true}); !d.Cut {
		t.Fatalf("a spent budget a window later did not cut: %+v", d)
	}
	if d := ctl.OnBudget(Budget{}); d.Pressure {
		t.Fatalf("budget left is not pressure: %+v", d)
	}
}

func TestAColdMemberStartsFromTheRememberedRate(t *testing.T) {
	ctl, c := newCtl(t, params())
	if !ctl.Seed(40, 0, 2*time.Minute) {
		t.Fatal("Seed refused a fresh remembered rate")
	}
	s := ctl.Snapshot()
	want := 40 * math.Exp2(-2.0/60) * 0.95 // halved per hour of age, at RecoverTo
	if s.SlowStart || !near(s.Rate, want) || s.Source != SourceLearned {
		t.Fatalf("seeded with 40/s learned 2 min ago: %+v; want out of slow start at %g (RecoverTo x decayed), source learned", s, want)
	}
	// It holds there for probeHold, then probes gently: 1 s later less than 10 % above.
	c.advance(probeHold - 300*time.Millisecond)
	ctl.SetGrowth(true)
	ctl.Next()
	if r := ctl.Snapshot().Rate; !near(r, want) {
		t.Fatalf("within probeHold of the seed the rate moved to %g", r)
	}
	c.advance(1300 * time.Millisecond)
	ctl.Next()
	if r := ctl.Snapshot().Rate; r <= want || r > 1.1*want {
		t.Fatalf("1 s after the seed the rate is %g; want a gentle probe above %g", r, want)
	}
	// Pressure makes it an ordinary probing controller.
	ctl.OnCapacity(Signal{BudgetSpent: true})
	if src := ctl.Snapshot().Source; src != SourceProbing {
		t.Fatalf("after a cut the source is %q, want probing", src)
	}
}

func TestARememberedRateIsDecayedOrIgnored(t *testing.T) {
	for _, tt := range []struct {
		name string
		rate float64
		age  time.Duration
		ok   bool
	}{
		{"an hour old: half", 40, time.Hour, true},
		{"older than a day: ignored", 1000, 25 * time.Hour, false},
		{"decayed below the start rate: ignored", 30, 3 * time.Hour, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctl, _ := newCtl(t, params())
			if got := ctl.Seed(tt.rate, 0, tt.age); got != tt.ok {
				t.Fatalf("Seed(%g, age %s) = %v, want %v", tt.rate, tt.age, got, tt.ok)
			}
			s := ctl.Snapshot()
			if tt.ok && !near(s.Rate, 20*0.95) {
				t.Fatalf("an hour-old 40/s starts at %g, want 0.95 x 20", s.Rate)
			}
			if !tt.ok && (!s.SlowStart || s.Rate != 10) {
				t.Fatalf("ignored memory changed the controller: %+v", s)
			}
		})
	}
}

// A start_rate above what the provider was found to take would overshoot the limit from
// the first call of every cold start: the remembered rate lowers slow start's first rate
// instead (decayed with age like any remembered rate), and slow start goes on from there.
func TestARememberedRateBelowTheStartRateLowersTheStart(t *testing.T) {
	for _, tt := range []struct {
		name      string
		rate      float64
		age       time.Duration
		wantStart float64
	}{
		{"fresh", 8, 0, 8},
		{"an hour old: half", 8, time.Hour, 4},
		{"decayed below min_rate: min_rate", 8, 10 * time.Hour, params().MinRate},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctl, c := newCtl(t, params()) // start_rate 10
			if !ctl.Seed(tt.rate, 0, tt.age) {
				t.Fatalf("Seed(%g, age %s) reported the start unchanged", tt.rate, tt.age)
			}
			s := ctl.Snapshot()
			if !s.SlowStart || !near(s.Rate, tt.wantStart) || s.Source != SourceProbing {
				t.Fatalf("after Seed(%g, age %s): slow start %v at %g (%s), want slow start from %g, probing", tt.rate, tt.age, s.SlowStart, s.Rate, s.Source, tt.wantStart)
			}
			c.advance(params().Window)
			ctl.Next()
			if r := ctl.Snapshot().Rate; !near(r, 2*s.Rate) {
				t.Fatalf("a window later the rate is %g; want slow start to double from %g", r, s.Rate)
			}
		})
	}
}

func TestASeededMemberStillJoinsARunningFleetsRate(t *testing.T) {
	ctl, _ := newCtl(t, params())
	ctl.Seed(40, 0, 0)
	ctl.Adopt(25, false) // the running fleet found 25/s since
	if r := ctl.Snapshot().Rate; r != 25 {
		t.Fatalf("a seeded joiner's rate = %g, want the fleet's 25", r)
	}
	ctl.Adopt(35, false) // once joined, it converges halfway like every member
	if r := ctl.Snapshot().Rate; r != 30 {
		t.Fatalf("after joining, rate = %g, want halfway 30", r)
	}
}

func TestOnlyAServedRateOutsideSlowStartIsLearned(t *testing.T) {
	ctl, _ := newCtl(t, params())
	ctl.SetServed(30)
	if _, _, ok := ctl.Learned(); ok {
		t.Fatal("slow start has nothing to remember")
	}
	ctl2, c2 := steady(t, 50)
	if _, _, ok := ctl2.Learned(); ok {
		t.Fatal("the served average is remembered before it settled")
	}
	c2.advance(learnSettle)
	for range 20 {
		ctl2.SetServed(40) // slot-bound below its rate
	}
	r, _, ok := ctl2.Learned()
	if !ok || r < 39 || r > 40.5 {
		t.Fatalf("Learned = %g %v; want about the served 40/s (not the 50/s rate)", r, ok)
	}
}

// Without rate-limit headers, a few 429s end a probe when no noise has been seen; with
// 5 % random 429s measured, the same few are noise.
func TestAProbeEndsOnFew429sUnlessNoiseExplainsThem(t *testing.T) {
	t.Run("no noise seen: two 429s within a second cut", func(t *testing.T) {
		ctl, c := atGood(t, 40)
		for range 60 { // a clean minute at the last good rate
			c.advance(time.Second)
			ctl.Next()
		}
		ctl.SetGrowth(true) // resumes below the last good rate and holds 2 s
		for range 16 {      // then probes: the rate grew above the last good 40/s
			c.advance(250 * time.Millisecond)
			ctl.Next()
		}
		if s := ctl.Snapshot(); s.Rate <= s.Good {
			t.Fatalf("not probing: %+v", s)
		}
		ctl.OnCapacity(Signal{RetryAfter: time.Second})
		c.advance(400 * time.Millisecond)
		d := ctl.OnCapacity(Signal{RetryAfter: time.Second})
		if !d.Cut || d.Pause != 0 {
			t.Fatalf("two 429s 400 ms apart while probing with no noise seen: %+v; want a cut without pause", d)
		}
	})
	t.Run("5 % noise measured: two, three or four 429s within a second are noise", func(t *testing.T) {
		ctl, c := steady(t, 40)
		ctl.SetGrowth(false)
		for i := range 1500 { // 60 s at 40 answers/s, every 20th a 429: the noise estimate
			c.advance(25 * time.Millisecond)
			ctl.Next()
			if i%20 == 0 {
				ctl.OnCapacity(Signal{RetryAfter: time.Second})
			}
		}
		ctl.SetGrowth(true)
		c.advance(2 * time.Second)
		ctl.Next()
		for range 4 {
			c.advance(200 * time.Millisecond)
			if d := ctl.OnCapacity(Signal{RetryAfter: time.Second}); d.Pressure {
				t.Fatalf("4 429s in a second at 5 %% measured noise: %+v; want lone", d)
			}
		}
	})
}

func TestPoissonTail(t *testing.T) {
	for _, tt := range []struct {
		k      int
		lambda float64
		want   float64
	}{{0, 1, 1}, {1, 0, 0}, {1, 1, 1 - math.Exp(-1)}, {2, 0.5, 1 - math.Exp(-0.5)*1.5}} {
		if got := poissonTail(tt.k, tt.lambda); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("poissonTail(%d, %g) = %g, want %g", tt.k, tt.lambda, got, tt.want)
		}
	}
}

// A fleet that cannot keep up with the rate slow start raises (CPU-starved) answers far
// fewer calls than the rate: slow start stops doubling there, or the window's shares of
// a nominal rate would never be reached and the fleet would run unthrottled (seen: 192 of
// 442 calls refused, no cut).
func TestSlowStartStopsWhereTheFleetCannotKeepUp(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.SetServed(15) // what the fleet dispatches and hears back
	c.advance(2 * time.Second)
	ctl.Next()
	if r := ctl.Snapshot().Rate; r > slowStartAhead*15*slowStartFactor {
		t.Fatalf("slow start ran to %g/s with 15 answers a second; want it stopped near %d x 15", r, slowStartAhead)
	}
	var d Decision
	for range 6 {
		c.advance(20 * time.Millisecond)
		d = ctl.OnCapacity(Signal{RetryAfter: time.Second})
	}
	if !d.Pressure {
		t.Fatalf("6 429s in a window at %g/s: %+v; want pressure", ctl.Snapshot().Rate, d)
	}
}

// Limit 429s that the rule has not yet called pressure count as noise; unbounded, they
// raise the bar and let more limit 429s through (measured: 5-11 429s a second at a
// header-less limit). The 429s seen while holding below a limit just found bound it.
func TestTheNoiseEstimateIsBoundedByWhatIsSeenWhileHolding(t *testing.T) {
	ctl, c := atGood(t, 40)
	ctl.OnCapacity(Signal{BudgetSpent: true}) // a cut: the hold begins
	for range 7 {                             // 1.75 s of the hold, 40 answers a second, no 429
		c.advance(250 * time.Millisecond)
		ctl.Next()
	}
	ctl.mu.Lock()
	ctl.noise429, ctl.noiseAnswers = 50, 500 // 10 %: limit 429s counted as lone
	share := ctl.noiseShare()
	held := ctl.heldAnswers
	ctl.mu.Unlock()
	if held < minHeldAnswers || share > 0.02 {
		t.Fatalf("after a clean hold (%.0f answers) the noise estimate is %.3f; want it bounded near the held sample's, not the 10 %% counted", held, share)
	}
}

// Slow start's overshoot draws 429s from the limit: they are not noise. Lone 429s after
// it are.
func TestSlowStarts429sAreNotNoise(t *testing.T) {
	p := params()
	p.StartRate = 40
	ctl, c := newCtl(t, p)
	ctl.SetServed(40)
	prior := ctl.noiseShare()
	lone := func(n int, every time.Duration) {
		t.Helper()
		for range n {
			c.advance(every)
			ctl.Next()
			if d := ctl.OnCapacity(Signal{RetryAfter: time.Second}); d.Pressure {
				t.Fatalf("want a lone 429: %+v", d)
			}
		}
	}
	lone(4, 400*time.Millisecond) // slow start's overshoot (too few for the window rule)
	c.advance(time.Second)        // (the 429s of the last second before a cut are its own)
	ctl.OnCapacity(Signal{BudgetSpent: true})
	if got := ctl.noiseShare(); got > prior {
		t.Fatalf("noise %.4f after slow start's 429s, want at most the prior %.4f", got, prior)
	}
	c.advance(5 * time.Second)
	ctl.Next()
	before := ctl.noiseShare()
	lone(1, time.Second)
	if got := ctl.noiseShare(); !(got > before) {
		t.Fatalf("noise %.4f after a lone 429 outside slow start, want above the %.4f before it", got, before)
	}
}

// Past the limit, the answers slow start hears are mostly 429s: they grow with the rate
// and say nothing of what the provider serves. Slow start stops doubling where what is
// served, not what is answered, falls behind (measured: a cold fleet ran its first
// overshoot to 21 429s in a second).
func TestSlowStartStopsWhereTheServedRateFallsBehind(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.SetAnswered(300) // 429s included ...
	ctl.SetServed(20)    // ... of which the provider served 20/s
	c.advance(2 * time.Second)
	ctl.Next()
	if r := ctl.Snapshot().Rate; r > slowStartAhead*20*slowStartFactor {
		t.Fatalf("slow start ran to %g/s with 20 served a second; want it stopped near %d x 20", r, slowStartAhead)
	}
}

// In slow start the window rule asks for its share of what the fleet answers (at most
// twice it), not of a nominal rate the doubling ran up ahead of the answers: 5 429s in a
// window are pressure at a nominal 320/s when the fleet answers 40 a second.
func TestSlowStartsWindowRuleCountsWhatTheFleetAnswers(t *testing.T) {
	ctl, c := newCtl(t, params())
	c.advance(1250 * time.Millisecond) // 10 -> 320/s
	ctl.Next()
	if r := ctl.Snapshot().Rate; r < 300 {
		t.Fatalf("rate %g after 1.25 s of slow start; want 320", r)
	}
	ctl.SetAnswered(40)
	var d Decision
	for range 5 {
		c.advance(10 * time.Millisecond)
		d = ctl.OnCapacity(Signal{RetryAfter: time.Second})
	}
	if !d.Pressure || !d.Cut {
		t.Fatalf("5 429s in a window with 40 answers a second: %+v; want pressure and a cut", d)
	}
	// Without the answers known, the share of the nominal rate applies: not yet pressure.
	ctl2, c2 := newCtl(t, params())
	c2.advance(1250 * time.Millisecond)
	ctl2.Next()
	for range 5 {
		c2.advance(10 * time.Millisecond)
		d = ctl2.OnCapacity(Signal{RetryAfter: time.Second})
	}
	if d.Pressure {
		t.Fatalf("5 429s in a window of a nominal 320/s, answers unknown: %+v; want no pressure yet", d)
	}
}

// The answers the fleet reports lag a doubling rate by a heartbeat, and a 429 comes back
// at once where a served answer takes the call's latency: against the answers alone, 5
// random 429s (5 %) among a window's ~40 dispatches read as pressure and cut a cold
// fleet to a fraction of its slots for the rest of its run. The window rule asks for
// its share of what the fleet dispatched in the window when that is more.
func TestSlowStartsWindowRuleCountsWhatTheFleetDispatched(t *testing.T) {
	ramp := func() (*Controller, *clock, int) {
		ctl, c := newCtl(t, params())
		c.advance(time.Second) // 10 -> 160/s
		ctl.Next()
		taken := 0
		for range 250 { // a window at 160/s: this member (alone in its grid) takes ~40 slots
			c.advance(time.Millisecond)
			if ctl.TryReserve() {
				taken++
			}
		}
		ctl.SetAnswered(40) // the heartbeats' figure, behind the ramp
		return ctl, c, taken
	}
	// burst gives the controller n 429s 5 ms apart; the decision is pressure or a cut
	// when one of them was.
	burst := func(ctl *Controller, c *clock, n int) Decision {
		var any Decision
		for range n {
			c.advance(5 * time.Millisecond)
			d := ctl.OnCapacity(Signal{RetryAfter: time.Second})
			any.Pressure, any.Cut = any.Pressure || d.Pressure, any.Cut || d.Cut
		}
		return any
	}
	ctl, c, taken := ramp()
	if taken < 30 {
		t.Fatalf("took %d slots in a window at 160/s; want ~40", taken)
	}
	if d := burst(ctl, c, 5); d.Pressure {
		t.Fatalf("5 429s among %d dispatches of a window (answers reported: 40/s): %+v; want lone 429s, no cut", taken, d)
	}
	if s := ctl.Snapshot(); !s.SlowStart || s.Decreases != 0 {
		t.Fatalf("after 5 random 429s: %+v; want slow start going on", s)
	}
	// A limit crossed answers a quarter and more of the dispatches with 429s: pressure.
	ctl, c, taken = ramp()
	if d := burst(ctl, c, 12); !d.Pressure || !d.Cut {
		t.Fatalf("12 429s among %d dispatches of a window: %+v; want pressure and a cut", taken, d)
	}
}

// A served answer whose headers read the budget spent says the rate is at the limit
// (no 429 yet): the last good rate is that rate, and the fleet holds at recover_to of it
// — not at recover_to of a served figure that lags it (measured: holds of 8 s at 45 of
// 50 calls a second, 90 %, with no 429 at all).
func TestABudgetSpentAtTheLimitHoldsJustBelowIt(t *testing.T) {
	ctl, c := steady(t, 50)
	for range 8 { // the served figure lags at 47 a second
		ctl.SetServed(47)
	}
	d := ctl.OnBudget(Budget{Spent: true})
	if !d.Cut || !near(d.Good, 50) {
		t.Fatalf("budget spent at 50/s with 47 served: %+v; want a cut with last good rate 50", d)
	}
	c.advance(3 * time.Second) // recovery
	ctl.Next()
	if r := ctl.Snapshot().Rate; !near(r, 0.95*50) {
		t.Fatalf("rate %g after the recovery; want recover_to x 50 = 47.5", r)
	}
	// A 429 whose headers read the budget spent is past the limit: what was served, as
	// before, bounds the last good rate.
	ctl2, _ := steady(t, 50)
	for range 8 {
		ctl2.SetServed(40)
	}
	if d := ctl2.OnCapacity(Signal{BudgetSpent: true}); !d.Cut || d.Good > 45.0001 {
		t.Fatalf("a 429 with the budget spent at 50/s, 40 served: %+v; want the last good rate from what was served (<= 45)", d)
	}
}

// A paused deployment (an open breaker: a refused key, quota spent; or a Retry-After)
// dispatches nothing and learns nothing: its rate does not grow while the pause lasts, or
// the calls would burst when it ends (measured: a fleet blocked by a 401 from its first
// call climbed in slow start to max_rate). Recovery toward the last good rate still runs.
func TestTheRateDoesNotGrowWhilePaused(t *testing.T) {
	t.Run("slow start", func(t *testing.T) {
		ctl, c := newCtl(t, params())
		before := ctl.Snapshot().Rate
		ctl.Pause(15 * time.Second)
		for range 40 { // 10 s of waiting permits
			c.advance(250 * time.Millisecond)
			ctl.Next()
		}
		if s := ctl.Snapshot(); !near(s.Rate, before) || !s.SlowStart {
			t.Fatalf("after 10 s paused in slow start: %+v; want the rate still %g", s, before)
		}
		c.advance(6 * time.Second) // the pause is over: slow start goes on
		ctl.Next()
		if r := ctl.Snapshot().Rate; r <= before {
			t.Fatalf("after the pause slow start did not go on: rate %g", r)
		}
	})
	t.Run("probing", func(t *testing.T) {
		ctl, c := steady(t, 50)
		c.advance(5 * time.Second) // past any hold: probing
		ctl.Next()
		before := ctl.Snapshot().Rate
		ctl.Pause(15 * time.Second)
		for range 40 {
			c.advance(250 * time.Millisecond)
			ctl.Next()
		}
		if r := ctl.Snapshot().Rate; !near(r, before) {
			t.Fatalf("after 10 s paused while probing the rate is %g, want %g", r, before)
		}
	})
}
