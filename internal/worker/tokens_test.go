package worker

import (
	"testing"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/throttle"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestTokenPermits(t *testing.T) {
	t.Parallel()
	req := &wire.Request{Messages: []wire.Message{{Role: "user", Content: "rate this answer from 1 to 5 in json"}}, MaxCompletionTokens: 50}
	newDep := func(t *testing.T, tpm float64) *deployment {
		t.Helper()
		ctrl, err := throttle.New(throttle.DefaultParams())
		if err != nil {
			t.Fatal(err)
		}
		return &deployment{alias: "a", ctrl: ctrl, tokens: throttle.NewTokenGate(tpm, nil)}
	}
	t.Run("without a budget the gate is skipped: nothing is charged, estimated or learned", func(t *testing.T) {
		d := newDep(t, 0)
		if est := d.chargeTokens(req); est != 0 {
			t.Fatalf("charged an estimate of %g without a budget", est)
		}
		d.settleTokens(req, 0, classOK, &llm.Answer{Usage: wire.Usage{PromptTokens: 20, CompletionTokens: 30}})
		d.refundPermit()
		if s := d.tokens.Snapshot(); s.Charged != 0 || s.Refunded != 0 || s.Typical != 0 {
			t.Fatalf("gate without a budget moved: %+v", s)
		}
	})
	t.Run("a budget stated by an answer's headers turns the gate on and charges that answer", func(t *testing.T) {
		d := newDep(t, 0)
		est := d.chargeTokens(req)
		ans := &llm.Answer{Usage: wire.Usage{PromptTokens: 20, CompletionTokens: 30}, RateLimit: llm.RateLimit{LimitTokens: 60000}}
		d.settleTokens(req, est, classOK, ans)
		if !d.metered() {
			t.Fatal("a stated token limit did not turn the gate on")
		}
		if s := d.tokens.Snapshot(); s.Charged != 50 || s.Typical != 50 {
			t.Fatalf("after the first answer under a budget: %+v; want 50 charged (its usage) and typical", s)
		}
	})
	t.Run("with a budget a refused call and a permit without a call give their tokens back", func(t *testing.T) {
		d := newDep(t, 60000)
		est := d.chargeTokens(req)
		if est <= 50 {
			t.Fatalf("estimate %g, want the prompt's tokens plus max_completion_tokens 50", est)
		}
		d.settleTokens(req, est, classCapacity, nil) // a 429: nothing counted
		if s := d.tokens.Snapshot(); s.Refunded != est {
			t.Fatalf("a refused call's estimate given back: %g, want %g", s.Refunded, est)
		}
		d.refundPermit() // a permit whose job made no call
		if s := d.tokens.Snapshot(); s.Refunded != 2*est {
			t.Fatalf("refunded %g after a permit's refund, want %g (its typical call)", s.Refunded, 2*est)
		}
	})
	t.Run("no permit held: the refund is a no-op", func(t *testing.T) {
		var d *deployment
		d.refundPermit()
	})
}
