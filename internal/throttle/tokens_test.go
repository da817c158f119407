package throttle

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/wire"
)

// admitted runs a member that takes a permit of n tokens whenever one is there, for d
// of simulated time in 10 ms steps, and returns the tokens admitted.
func admitted(g *TokenGate, c *clock, n float64, d time.Duration) float64 {
	total := 0.0
	for end := c.t.Add(d); c.t.Before(end); c.advance(10 * time.Millisecond) {
		for g.TryReserve(n) {
			total += n
		}
	}
	return total
}

func TestTokenGate(t *testing.T) {
	t.Parallel()
	t.Run("a gate without a budget admits everything", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(0, c.now)
		for range 1000 {
			if !g.TryReserve(1e6) {
				t.Fatal("refused a permit without a budget")
			}
		}
		if g.Next(1e6) != 0 {
			t.Fatal("Next > 0 without a budget")
		}
	})
	t.Run("is active from a configured budget, or from the first stated one on, and stays so", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		if !NewTokenGate(6000, c.now).Active() {
			t.Fatal("a configured budget is not active")
		}
		g := NewTokenGate(0, c.now)
		if g.Active() {
			t.Fatal("a gate without a budget is active: every call would pay for it")
		}
		g.SetStated(0) // a header that states nothing
		if g.Active() {
			t.Fatal("a stated 0 made the gate active")
		}
		g.SetStated(6000)
		if !g.Active() || g.Limit() != 6000 {
			t.Fatalf("after a stated budget: active %v, limit %g; want true, 6000", g.Active(), g.Limit())
		}
		g.SetStated(12000)
		if !g.Active() {
			t.Fatal("another stated budget turned the gate off")
		}
	})
	t.Run("paces a member to its share of the budget per minute", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(6000, c.now) // 100 tokens/s fleet-wide
		got := admitted(g, c, 10, time.Minute)
		want := 6000 * TokenShare
		if got < want-20 || got > want+100+20 { // + the full bucket it starts with
			t.Fatalf("admitted %v tokens in a minute, want about %v", got, want)
		}
	})
	t.Run("the fleet's members share the budget", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(6000, c.now)
		g.SetMembers(4)
		got := admitted(g, c, 10, time.Minute)
		want := 6000 * TokenShare / 4
		if got < want-20 || got > want+25+20 {
			t.Fatalf("admitted %v tokens in a minute as one of 4 members, want about %v", got, want)
		}
	})
	t.Run("a stated limit sets the budget, the lower of stated and configured wins", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(0, c.now)
		g.SetStated(1200)
		if g.Limit() != 1200 {
			t.Fatalf("limit %v, want the stated 1200", g.Limit())
		}
		g = NewTokenGate(6000, c.now)
		g.SetStated(1200)
		if g.Limit() != 1200 {
			t.Fatalf("limit %v, want the lower stated 1200", g.Limit())
		}
		g.SetStated(60000)
		if g.Limit() != 6000 {
			t.Fatalf("limit %v, want the lower configured 6000", g.Limit())
		}
	})
	t.Run("a call charged past its reservation is a debt that holds the next permit", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(6000, c.now) // 95 tokens/s, bucket 95
		if !g.TryReserve(10) {
			t.Fatal("a full bucket refused")
		}
		g.Charge(10, 190) // a large request: 85 left - 180 = -95
		if g.TryReserve(1) {
			t.Fatal("a permit while in debt")
		}
		if d := g.Next(1); d < 990*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("next permit in %v, want about 1 s (the debt paid back)", d)
		}
	})
	t.Run("a refused call gives its estimate back", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(6000, c.now)
		req := &wire.Request{Messages: []wire.Message{{Role: "user", Content: strings.Repeat("a", 399)}}, MaxCompletionTokens: 20}
		est := g.Estimate(req)
		if est != 120 {
			t.Fatalf("estimate %v, want 400/4 + 20", est)
		}
		before := g.Snapshot().Level
		g.Charge(0, est)
		g.Settle(req, est, false, nil)
		if after := g.Snapshot().Level; after != before {
			t.Fatalf("level %v after a refused call, want %v", after, before)
		}
	})
	t.Run("an answer that counted more than the estimate is charged, and the estimate learns", func(t *testing.T) {
		c := &clock{t: time.Unix(1000, 0)}
		g := NewTokenGate(60000, c.now)
		req := &wire.Request{Messages: []wire.Message{{Role: "user", Content: strings.Repeat("a", 399)}}, MaxCompletionTokens: 20}
		est := g.Estimate(req)
		g.Charge(0, est)
		before := g.Snapshot()
		g.Settle(req, est, true, &wire.Usage{PromptTokens: 200, CompletionTokens: 10})
		after := g.Snapshot()
		if got := before.Level - after.Level; got < 89.9 || got > 90.1 {
			t.Fatalf("charged %v more, want 210 - 120", got)
		}
		if e := g.Estimate(req); e <= est {
			t.Fatalf("estimate %v after a prompt counted twice the estimate, want above %v", e, est)
		}
	})
	t.Run("wait takes the tokens once they are there", func(t *testing.T) {
		g := NewTokenGate(600000, nil) // 9500 tokens/s
		if !g.TryReserve(9000) {
			t.Fatal("a full bucket refused")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := g.Wait(ctx, 5000); err != nil {
			t.Fatalf("wait: %v", err)
		}
	})
	t.Run("validation names tokens_per_minute", func(t *testing.T) {
		p := DefaultParams()
		p.TokensPerMinute = -1
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "tokens_per_minute") {
			t.Fatalf("Validate() = %v, want an error naming tokens_per_minute", err)
		}
	})
}

func TestWantMarksTheMemberRateBound(t *testing.T) {
	t.Parallel()
	c, clk := newCtl(t, params())
	if c.RateBound(time.Second) {
		t.Fatal("rate-bound before any wait")
	}
	c.Want()
	if !c.RateBound(time.Second) {
		t.Fatal("not rate-bound right after Want")
	}
	clk.advance(2 * time.Second)
	if c.RateBound(time.Second) {
		t.Fatal("still rate-bound 2 s after Want")
	}
}
