package worker

import (
	"context"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/wire"
)

// The token gate's part of a deployment's permits (throttle.TokenGate, docs/THROTTLE.md
// "Token budget"): a permit is a request slot of the fleet grid and a typical call's
// tokens; the call charges its estimate, its answer corrects it. A deployment without a
// gate (naive mode), or whose gate has no budget yet (none configured, none stated by
// the provider's headers), has request permits only: the gate costs such a job one
// atomic load per step, no lock.

// metered reports whether the deployment's permits include tokens.
func (d *deployment) metered() bool {
	return d.tokens != nil && d.tokens.Active()
}

// waitPermit waits for a request slot, then for a typical call's tokens.
func (d *deployment) waitPermit(ctx context.Context) error {
	if err := d.ctrl.Wait(ctx); err != nil {
		return err
	}
	if !d.metered() {
		return nil
	}
	return d.tokens.Wait(ctx, d.tokens.Typical())
}

// tryPermit takes a permit if one is there now: the tokens first (they can be given
// back, a grid slot cannot). gridBound reports a refusal by the request grid (the
// member is rate-bound), not by the token budget.
func (d *deployment) tryPermit() (ok, gridBound bool) {
	if !d.metered() {
		ok = d.ctrl.TryReserve()
		return ok, !ok
	}
	typical := d.tokens.Typical()
	if !d.tokens.TryReserve(typical) {
		return false, false
	}
	if !d.ctrl.TryReserve() {
		d.tokens.Refund(typical)
		return false, true
	}
	return true, false
}

// refundPermit gives back the tokens of a permit whose job made no call (d nil: the
// delivery holds no permit).
func (d *deployment) refundPermit() {
	if d != nil && d.metered() {
		d.tokens.Refund(d.tokens.Typical())
	}
}

// chargeTokens replaces a permit's reservation with the call's estimate, right before
// the call, and returns the estimate.
func (d *deployment) chargeTokens(req *wire.Request) float64 {
	if !d.metered() {
		return 0
	}
	est := d.tokens.Estimate(req)
	d.tokens.Charge(d.tokens.Typical(), est)
	return est
}

// settleTokens corrects a call's charge from its outcome: a capacity error counted
// nothing (the estimate is given back), an answer counts at least its usage; a stated
// token limit sets the gate's budget (and turns it on).
func (d *deployment) settleTokens(req *wire.Request, est float64, class callClass, ans *llm.Answer) {
	if d.tokens == nil {
		return
	}
	if ans != nil && ans.RateLimit.LimitTokens > 0 {
		d.tokens.SetStated(ans.RateLimit.LimitTokens)
	}
	if !d.metered() {
		return
	}
	switch {
	case class == classCapacity:
		d.tokens.Settle(req, est, false, nil)
	case ans != nil:
		d.tokens.Settle(req, est, true, &ans.Usage)
	}
}
