package worker

import (
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/throttle"
	"github.com/multiquery/multiquery/internal/wire"
)

// poolOf builds a pool of members (alias -> weight), every one served here.
func poolOf(t *testing.T, weights map[string]float64) (*pool, map[string]*deployment) {
	t.Helper()
	served := map[string]*deployment{}
	var members []wire.PoolMember
	for alias, w := range weights {
		ctrl, err := throttle.New(throttle.DefaultParams())
		if err != nil {
			t.Fatal(err)
		}
		served[alias] = &deployment{alias: alias, ctrl: ctrl}
		members = append(members, wire.PoolMember{Alias: alias, Weight: w})
	}
	p := &pool{weights: map[string]float64{}, streak: map[string]int{}, down: map[string]time.Time{}}
	if !p.add(members, served) {
		t.Fatal("no member served")
	}
	return p, served
}

func noBreaker(string) bool { return false }

func TestPoolCandidates(t *testing.T) {
	t.Parallel()
	t.Run("members come first in proportion to their weights", func(t *testing.T) {
		p, _ := poolOf(t, map[string]float64{"east": 1, "west": 4})
		first := map[string]int{}
		for range 4000 {
			first[p.candidates(time.Now(), noBreaker, nil)[0].alias]++
		}
		if share := float64(first["west"]) / 4000; share < 0.75 || share > 0.85 {
			t.Fatalf("west first in %.2f of the draws, want about 0.8 (weights 1:4)", share)
		}
	})
	t.Run("a member not served here is skipped", func(t *testing.T) {
		p, served := poolOf(t, map[string]float64{"east": 1})
		p.add([]wire.PoolMember{{Alias: "elsewhere", Weight: 1}}, served)
		if c := p.candidates(time.Now(), noBreaker, nil); len(c) != 1 || c[0].alias != "east" {
			t.Fatalf("candidates %v, want east only", c)
		}
	})
	t.Run("an open breaker, a pause and a failed filter exclude a member", func(t *testing.T) {
		p, served := poolOf(t, map[string]float64{"a": 1, "b": 1, "c": 1, "d": 1})
		served["b"].ctrl.Pause(time.Minute)
		c := p.candidates(time.Now(), func(alias string) bool { return alias == "a" }, func(d *deployment) bool { return d.alias != "c" })
		if len(c) != 1 || c[0].alias != "d" {
			t.Fatalf("candidates %v, want d only", c)
		}
	})
	t.Run("three transient errors in a row take a member down until it answers", func(t *testing.T) {
		p, _ := poolOf(t, map[string]float64{"east": 1, "west": 1})
		now := time.Now()
		for i := range downStreak {
			if down := p.failed("east", now); down != (i == downStreak-1) {
				t.Fatalf("after %d errors down = %v", i+1, down)
			}
		}
		if c := p.candidates(now, noBreaker, nil); len(c) != 1 || c[0].alias != "west" {
			t.Fatalf("candidates %v while east is down, want west only", c)
		}
		if c := p.candidates(now.Add(downFor+time.Millisecond), noBreaker, nil); len(c) != 2 {
			t.Fatalf("%d candidates after the down time, want east probed again", len(c))
		}
		if !p.failed("east", now) {
			t.Fatal("a failed probe did not take east down again")
		}
		p.up("east")
		if c := p.candidates(now, noBreaker, nil); len(c) != 2 {
			t.Fatalf("%d candidates after east answered, want 2", len(c))
		}
	})
}

func TestInPool(t *testing.T) {
	t.Parallel()
	d := &deployment{alias: "east"}
	if !inPool(&wire.Job{}, d) {
		t.Fatal("a job without members takes any member")
	}
	if inPool(&wire.Job{Pool: []wire.PoolMember{{Alias: "west", Weight: 1}}}, d) {
		t.Fatal("a member the job does not name was accepted")
	}
}
