package throttle

import (
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func params() Params {
	return Params{StartRate: 10, MinRate: 1, MaxRate: 1000, Increase: 0.04, Decrease: 0.9,
		Window: 250 * time.Millisecond, Jitter: 0, MaxPause: 60 * time.Second, Burst: 1}
}

func newCtl(t *testing.T, p Params) (*Controller, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1000, 0)}
	ctl, err := New(p, WithClock(c.now), WithRand(func() float64 { return 0.5 }))
	if err != nil {
		t.Fatal(err)
	}
	return ctl, c
}

func TestValidateNamesTheParameter(t *testing.T) {
	for field, mutate := range map[string]func(*Params){
		"decrease": func(p *Params) { p.Decrease = 1 },
		"increase": func(p *Params) { p.Increase = 0 },
		"window":   func(p *Params) { p.Window = 0 },
		"rates":    func(p *Params) { p.StartRate = 0.5 },
		"jitter":   func(p *Params) { p.Jitter = 1 },
	} {
		p := params()
		mutate(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate = %v, want an error naming it", field, err)
		}
	}
}

func TestSlowStartDoublesEachWindowUntilTheFirstSignal(t *testing.T) {
	ctl, c := newCtl(t, params())
	for i := range 4 {
		c.advance(250 * time.Millisecond)
		ctl.Reserve()
		if got, want := ctl.Snapshot().Rate, 10*float64(int(1)<<(i+1)); got != want {
			t.Fatalf("after %d windows rate = %g, want %g", i+1, got, want)
		}
	}
	ctl.OnCapacity(0)
	s := ctl.Snapshot()
	if s.SlowStart || s.Rate != 160*0.9 {
		t.Fatalf("after a signal: %+v, want slow start over and rate %g", s, 160*0.9)
	}
}

func TestDecreaseAtMostOncePerWindow(t *testing.T) {
	ctl, c := newCtl(t, params())
	for range 10 { // many workers saw the same 429 burst
		ctl.OnCapacity(0)
	}
	if got := ctl.Snapshot().Rate; got != 9 {
		t.Fatalf("rate = %g after one window of signals, want 9", got)
	}
	c.advance(250 * time.Millisecond)
	ctl.OnCapacity(0)
	if got := ctl.Snapshot().Rate; got != 9*0.9 {
		t.Fatalf("rate = %g after a second window, want %g", got, 9*0.9)
	}
}

func TestAdditiveIncreaseOnlyWhileDemanded(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.OnCapacity(0) // leave slow start at 9/s
	c.advance(10 * time.Second)
	ctl.Reserve() // idle for 10 s: growth is capped at one window
	if got := ctl.Snapshot().Rate; got > 9*(1+0.04*0.25)+1e-9 {
		t.Fatalf("rate = %g after idling, want no more than one window of growth", got)
	}
}

func TestPacingSpacesPermitsAtTheRate(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.OnCapacity(0) // 9/s, no slow start
	c.advance(time.Second)
	var waits []time.Duration
	for range 3 {
		waits = append(waits, ctl.Reserve())
	}
	interval := time.Duration(float64(time.Second) / ctl.Snapshot().Rate)
	if waits[0] != 0 || waits[1] < interval*9/10 || waits[2] < 2*interval*9/10 {
		t.Fatalf("waits = %v, want 0, ~%s, ~%s", waits, interval, 2*interval)
	}
}

func TestRetryAfterPausesEveryPermit(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.OnCapacity(2 * time.Second)
	if w := ctl.Reserve(); w < 2*time.Second {
		t.Fatalf("wait during a 2 s pause = %s, want >= 2s", w)
	}
	if ctl.TryReserve() {
		t.Fatal("TryReserve succeeded during a pause")
	}
	c.advance(3 * time.Second)
	if ctl.PausedFor() != 0 {
		t.Fatal("still paused after the Retry-After passed")
	}
	ctl.OnCapacity(time.Hour)
	if p := ctl.PausedFor(); p != 60*time.Second {
		t.Fatalf("pause = %s, want capped at max_pause 60s", p)
	}
}

func TestBurstAllowsSlotsAtOnce(t *testing.T) {
	p := params()
	p.Burst = 50
	ctl, _ := newCtl(t, p)
	n := 0
	for ctl.TryReserve() {
		n++
	}
	if n != 50 {
		t.Fatalf("took %d permits at once, want the burst of 50", n)
	}
}

func TestAJoiningPacerAdoptsTheFleetRate(t *testing.T) {
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

func TestShareScalesThePacingInterval(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.OnCapacity(0) // 9/s fleet-wide
	ctl.SetShare(0.25)
	c.advance(time.Second)
	ctl.Reserve()
	if w := ctl.Reserve(); w < 400*time.Millisecond || w > 500*time.Millisecond {
		t.Fatalf("wait = %s, want about 1/(9 x 0.25) s = 444ms", w)
	}
	if !ctl.RateBound(time.Second) {
		t.Fatal("a pacer that made a permit wait is not rate-bound")
	}
}

func TestNoGrowthWhileNobodyIsRateBound(t *testing.T) {
	ctl, c := newCtl(t, params())
	ctl.OnCapacity(0)
	ctl.SetGrowth(false)
	for range 20 {
		c.advance(100 * time.Millisecond)
		ctl.Reserve()
	}
	if got := ctl.Snapshot().Rate; got != 9 {
		t.Fatalf("rate = %g, want 9: no growth without demand", got)
	}
}

func TestLeavingSlowStartDecreasesFromTheRateActuallyDispatched(t *testing.T) {
	p := params()
	p.Burst = 32
	ctl, _ := newCtl(t, p)
	n := 0
	for ctl.TryReserve() { // a burst of free slots at 10/s nominal
		n++
	}
	ctl.OnCapacity(0)
	want := float64(n) / 0.25 * 0.9 // 32 permits in one window, x0.9
	if got := ctl.Snapshot().Rate; got < want*0.99 || got > want*1.01 {
		t.Fatalf("rate = %g after a 429 on a burst of %d, want about %g", got, n, want)
	}
}

// Issue 8 item 15: one pause message cannot stop a deployment for ever: Pause is capped
// at MaxPause like a Retry-After.
func TestAPauseEndsByMaxPauseHoweverLongItAsks(t *testing.T) {
	for name, maxPause := range map[string]time.Duration{"configured cap": 60 * time.Second, "default cap": 0} {
		t.Run(name, func(t *testing.T) {
			p := params()
			p.MaxPause = maxPause
			ctl, c := newCtl(t, p)
			ctl.Pause(1000 * time.Hour)
			limit := maxPause
			if limit == 0 {
				limit = DefaultMaxPause
			}
			if got := ctl.PausedFor(); got <= 0 || got > limit {
				t.Fatalf("paused for %s, want (0, %s]", got, limit)
			}
			c.advance(limit)
			if got := ctl.PausedFor(); got != 0 {
				t.Fatalf("still paused for %s after MaxPause", got)
			}
			if ctl.TryReserve() == false {
				t.Fatal("no permit after MaxPause")
			}
		})
	}
}
