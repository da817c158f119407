package throttle

import (
	"math"
	"sort"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// params are DefaultParams with a start rate of 10/s and a floor of 1/s.
func params() Params {
	p := DefaultParams()
	p.StartRate, p.MinRate = 10, 1
	return p
}

func newCtl(t *testing.T, p Params) (*Controller, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1000, 0)}
	ctl, err := New(p, WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	return ctl, c
}

// steady returns a controller out of slow start at the given rate, with that rate served.
func steady(t *testing.T, rate float64) (*Controller, *clock) {
	t.Helper()
	p := params()
	p.StartRate = rate
	ctl, c := newCtl(t, p)
	ctl.Adopt(rate, false) // a peer's steady rate: out of slow start
	ctl.SetServed(rate)
	return ctl, c
}

func near(got, want float64) bool { return math.Abs(got-want) <= 1e-6*math.Max(1, math.Abs(want)) }

func TestValidateNamesEveryParameter(t *testing.T) {
	for field, mutate := range map[string]func(*Params){
		"decrease":          func(p *Params) { p.Decrease = 1 },
		"increase:":         func(p *Params) { p.Increase = 0 },
		"increase_doubling": func(p *Params) { p.IncreaseDoubling = 0 },
		"max_increase":      func(p *Params) { p.MaxIncrease = 0.01 },
		"recover:":          func(p *Params) { p.Recover = 0 },
		"recover_to":        func(p *Params) { p.RecoverTo = 1.5 },
		"window":            func(p *Params) { p.Window = 0 },
		"start_rate":        func(p *Params) { p.StartRate = 0.5 },
		"min_rate":          func(p *Params) { p.MinRate = 0 },
		"max_rate":          func(p *Params) { p.MaxRate = 5 },
		"min_signals":       func(p *Params) { p.MinSignals = 0 },
		"signal_share":      func(p *Params) { p.SignalShare = 0 },
		"pause_share":       func(p *Params) { p.PauseShare = 0.1 },
		"period":            func(p *Params) { p.Period = 0 },
		"catch_up":          func(p *Params) { p.CatchUp = -1 },
		"max_pause":         func(p *Params) { p.MaxPause = 0 },
	} {
		p := params()
		mutate(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate = %v, want an error naming it", field, err)
		}
	}
	if err := params().Validate(); err != nil {
		t.Errorf("the defaults: Validate = %v", err)
	}
}

func TestSlowStartDoublesEachWindowUntilPressure(t *testing.T) {
	ctl, c := newCtl(t, params())
	for i := range 4 {
		c.advance(250 * time.Millisecond)
		ctl.Next()
		if got, want := ctl.Snapshot().Rate, 10*float64(int(1)<<(i+1)); got != want {
			t.Fatalf("after %d windows rate = %g, want %g", i+1, got, want)
		}
	}
	if !ctl.Snapshot().SlowStart {
		t.Fatal("slow start ended without pressure")
	}
}

func TestAPeersSlowStartRateIsDoubledAWindowAfterItIsTaken(t *testing.T) {
	ctl, c := newCtl(t, params())
	c.advance(200 * time.Millisecond) // 50 ms before its own window ends, at 10/s
	ctl.Next()
	ctl.Adopt(20, true) // a peer doubled at the end of its window
	c.advance(100 * time.Millisecond)
	ctl.Next()
	if got := ctl.Snapshot().Rate; got != 20 {
		t.Fatalf("rate = %g a tenth of a second after taking a peer's 20/s, want 20: doubled again at once, the member runs a window ahead of the fleet", got)
	}
	c.advance(150 * time.Millisecond) // a window after it was taken
	ctl.Next()
	if got := ctl.Snapshot().Rate; got != 40 {
		t.Fatalf("rate = %g a window after taking 20/s, want 40", got)
	}
}

func TestLeavingSlowStartContinuesFromWhatWasServed(t *testing.T) {
	ctl, c := newCtl(t, params())
	c.advance(time.Second) // 10 -> 160/s
	ctl.Next()
	ctl.SetServed(100) // the provider answered 100/s of it
	d := ctl.OnCapacity(Signal{BudgetSpent: true})
	s := ctl.Snapshot()
	if !d.Cut || s.SlowStart || !near(s.Rate, 90) {
		t.Fatalf("after pressure at 160/s with 100/s served: %+v, rate %g; want slow start over at 0.9 x 100 = 90 (not from 160, not from the start rate)", d, s.Rate)
	}
	ctl2, c2 := newCtl(t, params())
	c2.advance(time.Second)
	ctl2.Next()
	ctl2.SetServed(50) // the served figure lags: not below the previous window's rate
	ctl2.OnCapacity(Signal{BudgetSpent: true})
	if got := ctl2.Snapshot().Rate; !near(got, 72) {
		t.Fatalf("rate = %g, want 0.9 x 80 (the previous window's rate drew no pressure)", got)
	}
	ctl3, c3 := newCtl(t, params())
	c3.advance(time.Second)
	ctl3.Next()
	ctl3.SetServed(20) // answers far behind the doubling: that window's rate drew pressure too
	ctl3.OnCapacity(Signal{BudgetSpent: true})
	if got := ctl3.Snapshot().Rate; !near(got, 36) {
		t.Fatalf("rate = %g, want 0.9 x 2 x 20 (not more than twice what was answered)", got)
	}
}

func TestALone429OnlyCounts(t *testing.T) {
	ctl, _ := steady(t, 50)
	d := ctl.OnCapacity(Signal{RetryAfter: time.Second})
	s := ctl.Snapshot()
	if d.Pressure || d.Pause != 0 || s.Decreases != 0 || s.Rate != 50 || s.PausedFor != 0 || s.Lone != 1 {
		t.Fatalf("a lone 429: decision %+v, snapshot %+v; want no cut, no pause, counted as lone", d, s)
	}
}

func TestFivePercentRandom429sNeverCut(t *testing.T) {
	ctl, c := steady(t, 50)
	// 60 s at 50 answers/s, every 20th a 429 without headers: 5 % noise, evenly spread.
	for i := range 3000 {
		c.advance(20 * time.Millisecond)
		if i%20 == 0 {
			ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
	}
	s := ctl.Snapshot()
	if s.Decreases != 0 || s.Pauses != 0 || s.Lone != 150 {
		t.Fatalf("after 150 random 429s: %+v, want no cut, no pause, 150 lone", s)
	}
}

// atGood is a steady controller held at its last good rate (not probing above it): the
// window rule alone tells pressure from noise there.
func atGood(t *testing.T, rate float64) (*Controller, *clock) {
	t.Helper()
	ctl, c := steady(t, rate)
	ctl.SetGrowth(false)
	return ctl, c
}

// noisy is atGood after a minute of 5 % random 429s: the noise estimate is 5 %, so only
// the window rule (or more 429s than the noise explains) makes pressure.
func noisy(t *testing.T, rate float64) (*Controller, *clock) {
	t.Helper()
	ctl, c := atGood(t, rate)
	every := time.Duration(float64(time.Second) / rate)
	for i := range int(60 * rate) {
		c.advance(every)
		ctl.Next()
		if i%20 == 0 {
			ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
	}
	c.advance(time.Second) // the last noise leaves the horizon
	if s := ctl.Snapshot(); s.Decreases != 0 {
		t.Fatalf("5 %% noise cut the rate: %+v", s)
	}
	return ctl, c
}

func TestCorroboratedPressureCuts(t *testing.T) {
	t.Run("min_signals 429s that are signal_share of the window's answers cut but do not pause", func(t *testing.T) {
		ctl, c := noisy(t, 44) // 11 answers a window
		var d Decision
		for range 5 {
			c.advance(10 * time.Millisecond)
			d = ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
		s := ctl.Snapshot()
		if !d.Cut || s.Decreases != 1 || !near(s.Rate, 39.6) || s.PausedFor != 0 {
			t.Fatalf("5 of 11 answers refused: decision %+v, snapshot %+v; want one cut to 39.6, no pause", d, s)
		}
	})
	t.Run("four 429s are not enough where 5 % noise is measured", func(t *testing.T) {
		ctl, c := noisy(t, 40)
		for range 4 {
			c.advance(10 * time.Millisecond)
			ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
		if s := ctl.Snapshot(); s.Decreases != 0 {
			t.Fatalf("%+v: want no cut below min_signals", s)
		}
	})
	t.Run("429s spread over more than a window, within the measured noise, are not corroborated", func(t *testing.T) {
		ctl, c := noisy(t, 40)
		for range 5 {
			c.advance(200 * time.Millisecond)
			ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
		if s := ctl.Snapshot(); s.Decreases != 0 {
			t.Fatalf("%+v: want no cut", s)
		}
	})
	t.Run("the same count at a high rate is noise", func(t *testing.T) {
		ctl, c := atGood(t, 1000) // 250 answers a window: 5 is 2 %
		for range 5 {
			c.advance(10 * time.Millisecond)
			ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
		if s := ctl.Snapshot(); s.Decreases != 0 {
			t.Fatalf("%+v: want no cut", s)
		}
	})
	t.Run("429s that are most of the answers also pause", func(t *testing.T) {
		ctl, c := atGood(t, 20) // 5 answers a window
		for range 5 {
			c.advance(10 * time.Millisecond)
			ctl.OnCapacity(Signal{RetryAfter: time.Second})
		}
		if s := ctl.Snapshot(); s.Decreases != 1 || s.PausedFor < 900*time.Millisecond {
			t.Fatalf("%+v: want a cut and a pause of ~1 s", s)
		}
	})
}

func TestHeadersShowingTheBudgetSpentArePressureOnTheirOwn(t *testing.T) {
	ctl, _ := steady(t, 50)
	d := ctl.OnCapacity(Signal{RetryAfter: 2 * time.Second, BudgetSpent: true})
	s := ctl.Snapshot()
	if !d.Cut || !near(s.Rate, 45) || s.PausedFor != 2*time.Second {
		t.Fatalf("decision %+v, snapshot %+v; want a cut to 45 and a 2 s pause", d, s)
	}
	ctl.OnCapacity(Signal{RetryAfter: time.Hour, BudgetSpent: true})
	if p := ctl.PausedFor(); p != 60*time.Second {
		t.Fatalf("pause = %s, want capped at max_pause 60s", p)
	}
}

func TestOneCutPerWindowFleetWide(t *testing.T) {
	ctl, c := steady(t, 50)
	for range 10 { // many members saw the same burst
		ctl.OnCapacity(Signal{BudgetSpent: true})
	}
	ctl.ApplyCut(45, 50) // and a peer broadcast its cut of the same window
	if s := ctl.Snapshot(); s.Decreases != 1 || !near(s.Rate, 45) {
		t.Fatalf("%+v: want one cut to 45 in one window", s)
	}
	ctl.ApplyCut(44, 50) // a peer's target a little lower: align, do not cut again
	if s := ctl.Snapshot(); s.Decreases != 1 || !near(s.Rate, 44) {
		t.Fatalf("%+v: want the rate aligned to 44, still one cut", s)
	}
	c.advance(250 * time.Millisecond)
	ctl.OnCapacity(Signal{BudgetSpent: true})
	if s := ctl.Snapshot(); s.Decreases != 2 {
		t.Fatalf("%+v: want a second cut in the next window", s)
	}
}

func TestRecoveryIsFastToTheLastGoodRateThenHoldsThenSlowThenFaster(t *testing.T) {
	ctl, c := steady(t, 50)
	ctl.OnCapacity(Signal{BudgetSpent: true}) // 50 -> 45, last good 50
	c.advance(100 * time.Millisecond)
	ctl.Next()
	if got := ctl.Snapshot().Rate; !near(got, 47.5) {
		t.Fatalf("0.1 s after the cut rate = %g, want back at 0.95 x 50 = 47.5", got)
	}
	c.advance(probeHold - 200*time.Millisecond)
	ctl.Next()
	if got := ctl.Snapshot().Rate; !near(got, 47.5) {
		t.Fatalf("%s after the cut rate = %g, want held at 47.5 (the limit was just found)", probeHold-100*time.Millisecond, got)
	}
	c.advance(200 * time.Millisecond) // the hold is over
	ctl.Next()
	held := ctl.Snapshot().Rate
	c.advance(250 * time.Millisecond)
	ctl.Next()
	slow := ctl.Snapshot().Rate / held
	for range 16 { // 4 s without pressure: the probe's growth doubled twice
		c.advance(250 * time.Millisecond)
		ctl.Next()
	}
	before := ctl.Snapshot().Rate
	c.advance(250 * time.Millisecond)
	ctl.Next()
	fast := ctl.Snapshot().Rate / before
	if slow > math.Exp(0.04*1.2*0.25) || fast < math.Exp(0.04*3.5*0.25) {
		t.Fatalf("growth per window right after recovery x%.4f, 4 s later x%.4f: want ~4 %%/s, then ~16 %%/s", slow, fast)
	}
}

func TestNoGrowthWhileNobodyIsRateBound(t *testing.T) {
	ctl, c := steady(t, 50)
	ctl.SetGrowth(false)
	for range 20 {
		c.advance(100 * time.Millisecond)
		ctl.Next()
	}
	if got := ctl.Snapshot().Rate; got != 50 {
		t.Fatalf("rate = %g, want 50: no growth without demand", got)
	}
}

func TestAJoiningMemberAdoptsTheFleetRate(t *testing.T) {
	ctl, _ := newCtl(t, params())
	ctl.Adopt(37, false)
	if s := ctl.Snapshot(); s.SlowStart || s.Rate != 37 {
		t.Fatalf("after adopting: %+v, want rate 37 out of slow start", s)
	}
	ctl.Adopt(41, false) // later heartbeats pull halfway
	if got := ctl.Snapshot().Rate; got != 39 {
		t.Fatalf("rate = %g, want 39 (halfway to the peer)", got)
	}
}

// members returns w controllers on one clock, placed in one grid, at the given rate.
func members(t *testing.T, weights []float64, rate float64) ([]*Controller, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1000, 0)}
	p := params()
	p.StartRate = rate
	var out []*Controller
	for i := range weights {
		ctl, err := New(p, WithClock(c.now))
		if err != nil {
			t.Fatal(err)
		}
		ctl.Adopt(rate, false)
		ctl.SetGrowth(false)
		ctl.SetMembers(weights, i)
		out = append(out, ctl)
	}
	return out, c
}

// dispatch steps the clock by 1 ms for d and returns every permit's time per member.
func dispatch(ctls []*Controller, c *clock, d time.Duration) [][]time.Time {
	out := make([][]time.Time, len(ctls))
	for end := c.t.Add(d); c.t.Before(end); c.advance(time.Millisecond) {
		for i, ctl := range ctls {
			for ctl.TryReserve() {
				out[i] = append(out[i], c.t)
			}
		}
	}
	return out
}

func TestTheGridSpacesTheFleetEvenly(t *testing.T) {
	for _, w := range []int{1, 2, 16, 64} {
		weights := make([]float64, w)
		for i := range weights {
			weights[i] = 1
		}
		ctls, c := members(t, weights, 47.5)
		var all []time.Time
		for _, ts := range dispatch(ctls, c, 4*time.Second) {
			all = append(all, ts...)
		}
		sort.Slice(all, func(i, j int) bool { return all[i].Before(all[j]) })
		if n := len(all); n < 188 || n > 192 {
			t.Errorf("W=%d: %d permits in 4 s, want 4 x 47.5 = 190", w, n)
		}
		// Evenly spaced: no two permits closer than the slot spacing (1 ms steps aside),
		// once the first catch-up allowance is spent.
		for i := 1; i < len(all); i++ {
			if all[i].Before(time.Unix(1000, 0).Add(100 * time.Millisecond)) {
				continue
			}
			if gap := all[i].Sub(all[i-1]); gap < 19*time.Millisecond {
				t.Errorf("W=%d: two permits %s apart at %s, want ~21 ms spacing", w, gap, all[i].Sub(time.Unix(1000, 0)))
				break
			}
		}
	}
}

func TestTheGridIsDemandWeighted(t *testing.T) {
	ctls, c := members(t, []float64{1, 0.25}, 100)
	got := dispatch(ctls, c, 10*time.Second)
	if a, b := len(got[0]), len(got[1]); a < 780 || a > 820 || b < 180 || b > 220 {
		t.Fatalf("permits %d and %d in 10 s at 100/s with weights 1 and 0.25, want ~800 and ~200", a, b)
	}
	if s := ctls[1].Snapshot().Share; !near(s, 0.2) {
		t.Fatalf("share = %g, want 0.2", s)
	}
}

func TestSlotsAreNotBanked(t *testing.T) {
	ctl, c := steady(t, 100)
	c.advance(10 * time.Second) // idle
	n := 0
	for ctl.TryReserve() {
		n++
	}
	if n > 6 { // catch_up 50 ms at 100/s
		t.Fatalf("took %d permits after idling, want at most the 5 of the catch-up allowance", n)
	}
	if w := ctl.Next(); w <= 0 || w > 10*time.Millisecond {
		t.Fatalf("next permit in %s, want within one 10 ms slot", w)
	}
}

func TestPauseStopsEveryPermit(t *testing.T) {
	ctl, c := steady(t, 100)
	ctl.Pause(2 * time.Second)
	if ctl.TryReserve() {
		t.Fatal("TryReserve succeeded during a pause")
	}
	if w := ctl.Next(); w < 2*time.Second {
		t.Fatalf("next permit in %s during a 2 s pause, want >= 2s", w)
	}
	c.advance(2*time.Second + 10*time.Millisecond)
	if !ctl.TryReserve() {
		t.Fatal("no permit once the pause passed")
	}
}

// Issue 8 item 15: one pause message cannot stop a deployment for ever: Pause is capped
// at MaxPause like a Retry-After.
func TestAPauseEndsByMaxPauseHoweverLongItAsks(t *testing.T) {
	p := params()
	p.MaxPause = 60 * time.Second
	ctl, c := newCtl(t, p)
	ctl.Pause(1000 * time.Hour)
	if got := ctl.PausedFor(); got <= 0 || got > p.MaxPause {
		t.Fatalf("paused for %s, want (0, %s]", got, p.MaxPause)
	}
	c.advance(p.MaxPause)
	if got := ctl.PausedFor(); got != 0 {
		t.Fatalf("still paused for %s after MaxPause", got)
	}
	if w := ctl.Next(); w > p.Period {
		t.Fatalf("next permit in %s after the pause, want within one grid period (%s)", w, p.Period)
	}
}

// heldFor cuts (as a header-shown spent budget) and returns how long the rate then stays
// flat before the probe grows it again, in steps of one window.
func heldFor(t *testing.T, ctl *Controller, c *clock) time.Duration {
	t.Helper()
	ctl.OnCapacity(Signal{BudgetSpent: true})
	c.advance(500 * time.Millisecond) // back at RecoverTo x the last good rate
	ctl.Next()
	start, last := c.now().Add(-500*time.Millisecond), ctl.Snapshot().Rate
	for range 60 {
		c.advance(250 * time.Millisecond)
		ctl.Next()
		if r := ctl.Snapshot().Rate; r > last {
			return c.now().Sub(start)
		}
	}
	t.Fatalf("no growth within 15 s of a cut")
	return 0
}

func TestALimitFoundAgainWhereItWasIsProbedLessOften(t *testing.T) {
	ctl, c := steady(t, 50)
	var got []time.Duration
	for range 5 { // the same limit, found again and again
		got = append(got, heldFor(t, ctl, c))
	}
	for range 20 { // the limit moved: the next cut's last good rate is far below
		ctl.SetServed(20)
	}
	got = append(got, heldFor(t, ctl, c))
	want := []time.Duration{probeHold, 2 * probeHold, 3 * probeHold, 4 * probeHold, 4 * probeHold, probeHold}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("holds after each cut %v, want %v (2 s, +2 s per cut at the same rate up to 8 s, back to 2 s when it moved)", got, want)
		}
	}
}

func TestAFleetResumingFromIdleStartsBelowItsLastGoodRateNotMidProbe(t *testing.T) {
	ctl, c := steady(t, 50)
	ctl.OnCapacity(Signal{BudgetSpent: true}) // last good 50
	for range 40 {                            // 10 s of probing: above the last good rate
		c.advance(250 * time.Millisecond)
		ctl.Next()
	}
	if r := ctl.Snapshot().Rate; !(r > 50) {
		t.Fatalf("rate %g after 10 s of probing: want above the last good rate 50", r)
	}
	ctl.SetGrowth(false) // the run ends
	c.advance(5 * time.Second)
	ctl.SetGrowth(true) // the next run starts
	if r := ctl.Snapshot().Rate; !near(r, 47.5) {
		t.Fatalf("rate %g on resuming: want 0.95 x the last good rate 50 = 47.5", r)
	}
	c.advance(probeHold - 250*time.Millisecond)
	ctl.Next()
	if r := ctl.Snapshot().Rate; !near(r, 47.5) {
		t.Fatalf("rate %g %s after resuming: want held at 47.5", r, probeHold-250*time.Millisecond)
	}
	ctl.SetGrowth(false) // a short gap (a slot-bound moment) changes nothing
	c.advance(100 * time.Millisecond)
	ctl.SetGrowth(true)
	c.advance(time.Second)
	ctl.Next()
	if r := ctl.Snapshot().Rate; !(r > 47.5) {
		t.Fatalf("rate %g after the hold: want the probe growing again", r)
	}
}

func TestACutDetectedLateHoldsBelowTheLastGoodRateNotAtItsTarget(t *testing.T) {
	ctl, c := steady(t, 40)
	ctl.OnCapacity(Signal{BudgetSpent: true}) // the limit: 40 served at 40/s
	for range 40 {                            // 10 s of probing without pressure
		c.advance(250 * time.Millisecond)
		ctl.Next()
	}
	rate := ctl.Snapshot().Rate
	if !(rate > 45) {
		t.Fatalf("rate %g after 10 s of probing: want well above the 40/s served", rate)
	}
	ctl.OnCapacity(Signal{BudgetSpent: true}) // found late: 0.9 x the rate is still above 40
	s := ctl.Snapshot()
	if want := s.Good * 0.95; s.Rate > want+1e-9 || s.Good > 0.9*rate+1e-9 {
		t.Fatalf("after a cut from %g with 40/s served: rate %g, last good %g; want the rate at most 0.95 x the last good rate", rate, s.Rate, s.Good)
	}
}
