#!/usr/bin/env python3
"""Model of the fleet-wide throttle against a token-bucket provider (see docs/THROTTLE.md).

Two designs, same provider (token bucket C req/s, burst B; optional random 429s that consume
no token, like llmsim's injected faults, and carry no rate-limit headers):

run_old  the design this replaces (the throttle as first built): W independent jittered
         pacers, every 429 broadcast, each worker cuts x0.9 at most once per window, a 429's
         Retry-After pauses the fleet, slow start x2 per window from start_rate.
run_new  one controller: (1) a fleet dispatch grid -- every member derives the same evenly
         spaced slot schedule from the fleet rate, the member list and the wall clock, so the
         aggregate is evenly spaced instead of Poisson; (2) a limit is told from noise -- a
         429 is pressure only if its rate-limit headers show the budget spent, or if it is
         one of >= K 429s that are >= F of a window's answers; anything else only delays its
         own job; (3) a cut is one per window fleet-wide, from the rate that was served, and
         is broadcast as a target so that members converge on one rate; (4) recovery: fast
         back to the last good rate, a 2 s hold (+2 s per cut at the same rate, up to 8 s), then a probe whose growth doubles every D
         seconds; (5) without headers, outside slow start, the 429s of the last second are
         pressure when the measured noise (lone 429s among the answers, bounded by what is
         seen while holding after a cut) would bring as many less than once in 1000 s.
         The model does not read rate-limit headers on served answers (docs/THROTTLE.md
         rule 6): its "headers" are those of the limiter's 429s only.

Plain python3, no numpy. Run: python3 aimd_fleet.py          (all tables, ~10 min on a busy
core; --quick: fewer seeds)."""
import heapq
import math
import random
import sys

PHI = (math.sqrt(5) - 1) / 2
PLASTIC = 0.7548776662466927


# ---------------------------------------------------------------------------------------------
# The replaced design (the first model of it, plus random 429s and the
# fleet-wide pause on every Retry-After, which the first model left out).
def run_old(W, C=50.0, B=5.0, beta=0.9, grow=0.04, window=0.25, jitter=0.2, start=5.0,
            T=70.0, warm=10.0, seed=1, C2=None, t_change=None, noise=0.0, noise_ra=1.0,
            max_rate=1e9):
    rnd = random.Random(seed)
    dt = 0.001
    tokens, cap = B, C
    rate = [start / W] * W
    nextd = [rnd.random() / r for r in rate]
    lastdec = [-1e9] * W
    lastgrow = 0.0
    paused_until = 0.0
    in_slow_start = True
    events, ok, rej, per_sec = [], 0, 0, {}
    for k in range(int(T / dt)):
        t = k * dt
        if t_change is not None and t >= t_change:
            cap = C2
        tokens = min(B, tokens + cap * dt)
        keep = []
        for at, w, ra in events:
            if at > t:
                keep.append((at, w, ra))
                continue
            if t - lastdec[w] >= window:
                rate[w] = max(0.1, rate[w] * beta)
                lastdec[w] = t
                in_slow_start = False
            paused_until = max(paused_until, t + ra)
        events = keep
        if in_slow_start and t - lastgrow >= window:
            rate = [min(r * 2, max_rate / W) for r in rate]
            lastgrow = t
        for i in range(W):
            if not in_slow_start:
                rate[i] = min(rate[i] + grow * rate[i] * dt, max_rate / W)
            if nextd[i] <= t and t < paused_until:
                nextd[i] = paused_until
            while nextd[i] <= t:
                nextd[i] += (1.0 / rate[i]) * (1 + jitter * (2 * rnd.random() - 1))
                s = per_sec.setdefault(int(t), [0, 0])
                ra = 0.0
                if noise and rnd.random() < noise:
                    refused, ra = True, noise_ra
                elif tokens >= 1:
                    tokens -= 1
                    refused = False
                else:
                    refused, ra = True, (1 - tokens) / cap
                if not refused:
                    s[0] += 1
                    ok += t >= warm
                else:
                    s[1] += 1
                    rej += t >= warm
                    for j in range(W):
                        events.append((t + (0.002 if j == i else 0.003), j, ra))
    return ok / (T - warm), rej / max(1, ok + rej), per_sec


# ---------------------------------------------------------------------------------------------
# The new design.
class Params:
    def __init__(self, **kw):
        self.start = 5.0          # start_rate (req/s, the fleet's)
        self.min_rate = 0.5
        self.max_rate = 10000.0
        self.beta = 0.9           # decrease
        self.grow = 0.04          # increase: fraction of the rate per second when probing
        self.double_every = 2.0   # the probe's growth doubles every this many seconds ...
        self.grow_max = 1.0       # ... up to this fraction per second
        self.recover = 1.0        # fraction per second back to recover_to x the last good rate
        self.recover_to = 0.95
        self.window = 0.25        # decisions: one cut per window fleet-wide
        self.ss_factor = 2.0      # slow start: x per window
        self.period = 1.0         # grid period
        self.K = 5                # corroboration: >= K 429s in a window ...
        self.F = 0.25             # ... that are >= F of the window's answers
        self.pause_share = 0.5    # ... and pause the fleet when they are this share
        self.headers = True       # a limiter 429 shows remaining = 0 (llmsim, Azure, OpenAI)
        self.grid = True          # False: independent jittered pacers (as before)
        self.jitter = 0.2         # only without the grid
        self.max_pause = 60.0
        self.catch_up = 0.05      # a slot may be used this late (then it is lost)
        self.adaptive = True      # rule 7: 429s beyond the measured noise are pressure
        self.horizon = 1.0        # rule 7's window (s) and its false-alarm probability
        self.alpha = 1e-3
        self.prior_k = 0.5
        self.prior_n = 100.0
        self.noise_tau = 60.0
        self.hold = 2.0           # after a cut the probe holds this long (s)
        self.zone = 'any'         # rule 7 applies outside slow start ('probe': only above good)
        self.holdnoise = True     # the noise estimate is bounded by what is seen while holding
        self.adjgood = True       # the last good rate is served / (1 - noise)
        self.confirm = 3          # a limit found again within confirm_tol of the last: the hold
        self.confirm_tol = 0.1    # grows by `hold` per confirmation, up to this many (0: off)
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError(k)
            setattr(self, k, v)


def poisson_tail(k, lam):
    """P(X >= k) for X ~ Poisson(lam)."""
    if lam <= 0:
        return 0.0 if k > 0 else 1.0
    term = math.exp(-lam)
    cdf = 0.0
    for i in range(k):
        cdf += term
        term *= lam / (i + 1)
    return max(0.0, 1.0 - cdf)


def _frac(x):
    return x - math.floor(x)


def grid_slots(rate, period, p):
    """Slot times of fleet period p at this rate: n evenly spaced slots, n = floor(rate*period
    + h(p)) so that the count is right on average (h is the same for every member)."""
    n = int(math.floor(rate * period + _frac(p * PLASTIC)))
    return n


def owner(j, p, cum):
    """The member owning slot j of period p: a low-discrepancy walk over the cumulative
    demand-weighted shares, so each member's slots are evenly spread too."""
    x = _frac(j * PHI + p * PLASTIC * 0.5)
    lo, hi = 0, len(cum) - 1
    while lo < hi:  # first index with cum[i] > x
        mid = (lo + hi) // 2
        if cum[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


def next_slot(me, after, rate, period, cum, cursor=None):
    """The first slot owned by member me at or after `after` (member's clock) and past its
    cursor (period, index) -- the last slot it used: a slot is identified by its index in
    its period, so a rate change that moves the grid never hands a member the slot it just
    used. Returns (time, (period, index))."""
    p = int(math.floor(after / period))
    if cursor is not None and cursor[0] > p:
        p = cursor[0]
    for _ in range(100000):
        n = grid_slots(rate, period, p)
        if n > 0:
            step = period / n
            j = max(0, int(math.floor((after - p * period) / step - 0.5)))
            if cursor is not None and cursor[0] == p:
                j = max(j, cursor[1] + 1)
            while j < n:
                at = p * period + (j + 0.5) * step
                if at >= after and owner(j, p, cum) == me:
                    return at, (p, j)
                j += 1
        p += 1
    raise RuntimeError("no slot")


class Ctl:
    """One member's controller (pure arithmetic, like internal/throttle)."""

    def __init__(self, P, t):
        self.P = P
        self.rate = P.start
        self.ss = True
        self.good = 0.0          # last good rate (what was served before the last cut)
        self.last_cut = -1e9
        self.probe_from = t
        self.last_grow = t
        self.ss_grow = t
        self.paused_until = 0.0
        self.sigs = []           # fleet 429s seen in the current decision window: times
        self.cuts = 0
        self.n429 = 0.0
        self.nans = 0.0
        self.h429 = 0.0
        self.hans = 0.0
        self.conf = 0            # consecutive cuts at about the same last good rate

    def noise(self):
        nu = (self.n429 + self.P.prior_k) / (self.nans + self.P.prior_n)
        if self.P.holdnoise and self.hans >= 40:
            nu = min(nu, (self.h429 + self.P.prior_k) / (self.hans + self.P.prior_n))
        return nu

    def grow(self, t):
        P = self.P
        dt = t - self.last_grow
        if dt <= 0:
            return
        self.last_grow = t
        dec = math.exp(-dt / P.noise_tau)
        self.n429 *= dec
        self.nans *= dec
        self.h429 *= dec
        self.hans *= dec
        if self.cuts > 0 and t - self.last_cut < P.hold * (1 + self.conf) and t - self.last_cut > 0.5:
            self.hans += self.rate * dt
        self.nans += self.rate * dt
        if self.ss:
            while t - self.ss_grow >= P.window:
                self.rate = min(self.rate * P.ss_factor, P.max_rate)
                self.ss_grow += P.window
            return
        floor = self.good * P.recover_to
        if self.rate < floor:  # fast back toward the last good rate
            self.rate = min(self.rate * math.exp(P.recover * dt), floor, P.max_rate)
            if self.rate >= floor:
                self.probe_from = t
            return
        # Probe: slow near the last good rate, faster the longer no pressure is seen.
        if t - self.last_cut < P.hold * (1 + self.conf):
            self.probe_from = t
            return
        g = min(P.grow * 2 ** ((t - self.probe_from) / P.double_every), P.grow_max)
        self.rate = min(self.rate * math.exp(g * dt), P.max_rate)

    def pressure(self, t, evidenced):
        """A 429 seen by this member or broadcast by a peer: is it pressure (cut), and does
        it pause the fleet? Headers showing the budget spent: both (Retry-After says when
        it refills). Otherwise >= K 429s that are >= F of the window's answers: a cut; a
        pause only if they are most of the answers (>= pause_share)."""
        P = self.P
        if evidenced and P.headers:
            return True, True
        keep = max(P.window, P.horizon)
        self.sigs = [s for s in self.sigs if s > t - keep]
        self.sigs.append(t)
        if self.cuts > 0 and P.hold * (1 + self.conf) > t - self.last_cut > 0.5:
            self.h429 += 1
        if t - self.last_cut > 0.5 and not self.ss:
            self.n429 += 1  # slow start's overshoot is not noise
        answers = max(self.rate * P.window, 1.0)
        n = sum(1 for s in self.sigs if s > t - P.window)
        cut = n >= P.K and n >= P.F * answers
        if not cut and P.adaptive and not self.ss and (self.rate > self.good or P.zone == 'any'):
            lam = self.noise() * self.rate * P.horizon
            k = sum(1 for s in self.sigs if s > t - P.horizon)
            if k >= 2 and poisson_tail(k, lam) < P.alpha:
                cut = True
        return cut, cut and n >= P.pause_share * answers

    def cut_target(self, served):
        """A cut: x beta from the rate; leaving slow start, from what was served (at least
        the previous window's rate, which drew no pressure), never from the overshoot.
        The last good rate, which recovery returns to fast, is what was served (not less
        than beta x the rate: the served figure lags a growing rate)."""
        P = self.P
        base = self.rate
        if self.ss:
            prev = self.rate / P.ss_factor
            if served > 0:  # not far beyond what was answered (answers lag the doubling)
                prev = min(prev, 2 * served)
            base = min(self.rate, max(served, prev))
            target = max(P.min_rate, base * P.beta)
            return target, target  # the last good rate leaving slow start is the target
        sv = served / max(1e-9, 1 - self.noise()) if P.adjgood else served
        good = min(base, max(sv, base * P.beta)) if served > 0 else base
        return max(P.min_rate, base * P.beta), good

    def apply_cut(self, t, target, good):
        if t - self.last_cut < self.P.window:
            self.rate = min(self.rate, target)  # the same cut seen twice: no second cut
            return
        found = self.cuts > 0
        if found and self.good > 0 and abs(good - self.good) <= self.P.confirm_tol * self.good:
            self.conf = min(self.conf + 1, self.P.confirm)
        else:
            self.conf = 0
        # Never above the last good rate's floor (a cut found late has a target above it).
        ceiling = target if self.ss else min(target, good * self.P.recover_to)
        self.ss = False
        self.rate = min(self.rate, ceiling)
        self.good = good
        h = sum(1 for s in self.sigs if s > t - self.P.horizon and s > self.last_cut + 0.5)
        self.n429 = max(0.0, self.n429 - h)
        self.last_cut = t
        self.probe_from = t
        self.last_grow = t
        self.cuts += 1


def run_new(W, P=None, C=50.0, B=5.0, T=70.0, warm=10.0, seed=1, C2=None, t_change=None,
            noise=0.0, noise_ra=1.0, skew=0.010, join=None):
    """Event-driven. Each member has its own controller, its own clock skew (U(-skew,
    skew)), a dispatch delay of 0.5 ms + Exp(2 ms) after its slot, 1 ms to the provider,
    50 ms +- 10 ms for an answer, 2 ms for a 429, 1-3 ms for a broadcast, heartbeats every
    250 ms that carry each member's rate and what was served in the last 250 ms."""
    P = P or Params()
    rnd = random.Random(seed)
    unlimited = C is None
    tokens, cap, last_fill = B, C, 0.0
    sk = [rnd.uniform(-skew, skew) for _ in range(W)]
    ctl = [Ctl(P, 0.0) for _ in range(W)]
    cum = [(i + 1) / W for i in range(W)]
    served_ok = []               # times of successes (for the heartbeat's served rate)
    served_est = [0.0] * W       # the fleet's served rate as each member last heard it
    ev, seq = [], [0]

    def push(at, kind, *data):
        seq[0] += 1
        heapq.heappush(ev, (at, seq[0], kind, data))

    pending = [None] * W        # each member's planned slot (a newer plan replaces it)
    cursor = [None] * W         # each member's last used slot (period, index)
    now = [0.0]

    def plan(i):
        c = ctl[i]
        # A slot missed by more than the catch-up allowance is lost, not banked.
        after = max(now[0] - P.catch_up, c.paused_until) + sk[i]
        at, idx = next_slot(i, after, c.rate, P.period, cum, cursor[i])
        return at - sk[i], idx

    def schedule(i):
        c = ctl[i]
        if P.grid:
            slot, idx = plan(i)
        else:
            slot = now[0] + (W / c.rate) * (1 + P.jitter * (2 * rnd.random() - 1))
            slot, idx = max(slot, c.paused_until), None
        pending[i] = (slot, idx)
        push(max(slot, now[0]), "dispatch", i, (slot, idx))

    def replan(i):
        """A member waiting for its slot re-plans on a cut and each heartbeat: the rate moved."""
        if not P.grid or pending[i] is None:
            return
        if plan(i) != pending[i]:
            schedule(i)

    for i in range(W):
        if P.grid:
            schedule(i)
        else:
            pending[i] = (rnd.random() * W / P.start, None)
            push(pending[i][0], "dispatch", i, pending[i])
        push(rnd.random() * 0.25, "hb", i)
    ok = rej = 0
    per_sec = {}
    rates = {}
    while ev:
        t, _, kind, data = heapq.heappop(ev)
        if t > T:
            break
        now[0] = t
        if t_change is not None and t >= t_change and cap != C2:
            if not unlimited:
                tokens = min(B, tokens + cap * (t - last_fill))
                last_fill = t
            cap = C2
        if kind == "dispatch":
            i, plan_ = data
            if pending[i] != plan_:
                continue  # re-planned
            c = ctl[i]
            c.grow(t)
            if t < c.paused_until - 1e-9:
                schedule(i)
                continue
            cursor[i] = plan_[1]
            # Fetch, then the HTTP request: 1.5 ms + Exp(2 ms) from the slot to the provider.
            push(t + 0.0015 + rnd.expovariate(1 / 0.002), "arrive", i)
            schedule(i)
            rates.setdefault(int(t), 0)
            rates[int(t)] += 1
        elif kind == "arrive":
            i, = data
            s = per_sec.setdefault(int(t), [0, 0])
            if noise and rnd.random() < noise:
                s[1] += 1
                rej += t >= warm
                push(t + 0.002, "429", i, False, noise_ra)
                continue
            if cap is not None:
                tokens = min(B, tokens + cap * (t - last_fill))
                last_fill = t
            if cap is None or tokens >= 1:
                if cap is not None:
                    tokens -= 1
                s[0] += 1
                ok += t >= warm
                push(t + 0.05 + rnd.uniform(-0.01, 0.01), "ok", i)
            else:
                s[1] += 1
                rej += t >= warm
                push(t + 0.002, "429", i, True, (1 - tokens) / cap)
        elif kind == "ok":
            served_ok.append(t)
        elif kind == "429":
            i, evidenced, ra = data
            # Seen locally, broadcast to the others.
            for j in range(W):
                push(t + (0 if j == i else rnd.uniform(0.001, 0.003)), "sig", j, evidenced, ra)
        elif kind == "sig":
            j, evidenced, ra = data
            c = ctl[j]
            c.grow(t)
            cut, pause = c.pressure(t, evidenced)
            if pause:
                c.paused_until = max(c.paused_until, t + min(ra, P.max_pause))
            if cut:
                if t - c.last_cut >= P.window:
                    target, good = c.cut_target(served_est[j])
                    for k in range(W):  # the cut is broadcast as a target
                        push(t + (0 if k == j else rnd.uniform(0.001, 0.003)), "cut", k, target, good)
        elif kind == "cut":
            k, target, good = data
            ctl[k].apply_cut(t, target, good)
            replan(k)
        elif kind == "hb":
            i, = data
            # Served over the last heartbeat period, as the sum of the peers' reports.
            while served_ok and served_ok[0] < t - 1.0:
                served_ok.pop(0)
            # Served over the last heartbeat period (250 ms), as the members report it.
            n = sum(1 for x in served_ok if x >= t - 0.25)
            served_est[i] = n / 0.25 if t >= 0.25 else n / max(t, 0.05)
            c = ctl[i]
            c.grow(t)
            # Adopt: pull toward the peers' mean rate (a joining member takes it).
            others = [ctl[k].rate for k in range(W) if k != i and not ctl[k].ss]
            if others and not c.ss:
                c.rate = (c.rate + sum(others) / len(others)) / 2
            replan(i)
            push(t + 0.25, "hb", i)
    cuts = max(c.cuts for c in ctl)
    return ok / (T - warm), rej / max(1, ok + rej), per_sec, cuts, rates, ctl


# ---------------------------------------------------------------------------------------------
def table(fn, Ws, seeds, C=50.0, **kw):
    cells = []
    for W in Ws:
        runs = [fn(W, seed=s, C=C, **kw) for s in seeds]
        g = min(r[0] for r in runs) / C
        rj = max(r[1] for r in runs)
        cells.append((W, g, rj))
    return cells


def fmt(cells):
    return "  ".join(f"W={W}: {g*100:5.1f}%/{r*100:4.1f}%" for W, g, r in cells)


def change(fn, W, down, seed=1, **kw):
    if down:
        r = fn(W, C=50.0, C2=20.0, t_change=40.0, T=80.0, seed=seed, **kw)
        win = [r[2].get(s, [0, 0]) for s in range(45, 75)]
        return sum(x[1] for x in win) / max(1, sum(sum(x) for x in win))
    r = fn(W, C=20.0, C2=50.0, t_change=40.0, T=100.0, seed=seed, **kw)
    first = next((s for s in range(40, 100) if r[2].get(s, [0, 0])[0] >= 45), None)
    return None if first is None else first - 40


def startup(fn, W, seed=1, **kw):
    """429s in the first 10 s and the peak second's answers / limit."""
    r = fn(W, C=50.0, T=12.0, warm=0.0, seed=seed, **kw)
    ps = r[2]
    n429 = sum(ps.get(s, [0, 0])[1] for s in range(0, 10))
    peak = max(sum(ps.get(s, [0, 0])) for s in range(0, 10)) / 50.0
    return n429, peak


def noise_unlimited(fn, W=2, seed=1, max_rate=2000.0, **kw):
    """5 % random 429s (Retry-After 1 s) at an endpoint with no limit, max_rate 2000."""
    if fn is run_old:
        r = fn(W, C=1e9, B=1e9, noise=0.05, noise_ra=1.0, T=20.0, warm=10.0, seed=seed, max_rate=max_rate)
    else:
        r = fn(W, P=Params(max_rate=max_rate, **kw), C=None, noise=0.05, noise_ra=1.0, T=20.0, warm=10.0, seed=seed)
    return r[0] / max_rate  # answered+refused per s in [10 s, 20 s] / max_rate ~ rate / max


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    seeds = range(1, 3 if quick else 4)
    Ws = (1, 2, 4, 8, 16, 32, 64)
    new = lambda W, **kw: run_new(W, **kw)
    print("goodput %% of the limit / 429 share, worst of %d seeds (C=50/s, burst 5, 60 s after 10 s)" % len(seeds))
    print("old  " + fmt(table(run_old, Ws, seeds)))
    print("new  " + fmt(table(new, Ws, seeds)))
    print("new, 5% random 429s  " + fmt(table(new, Ws, seeds, noise=0.05)))
    print("new, no rate-limit headers  " + fmt(table(lambda W, **kw: run_new(W, P=Params(headers=False), **kw), Ws, seeds)))
    print("new, no headers, 5% random 429s  " + fmt(table(lambda W, **kw: run_new(W, P=Params(headers=False), **kw), Ws, seeds, noise=0.05)))
    print("new without the grid (jittered pacers)  " + fmt(table(lambda W, **kw: run_new(W, P=Params(grid=False), **kw), Ws, seeds)))
    for W in (4, 16, 64):
        print(f"limit 50->20 at 40 s, W={W}: 429 share in [45 s, 75 s]: old {100*change(run_old, W, True):.1f}%  new {100*change(new, W, True):.1f}%")
        print(f"limit 20->50 at 40 s, W={W}: seconds to >= 90 % of 50: old {change(run_old, W, False)}  new {change(new, W, False)}")
    for W in (1, 8, 64):
        o, n = startup(run_old, W), startup(new, W)
        print(f"start-up W={W}: 429s in the first 10 s / peak second vs limit: old {o[0]} / {o[1]:.2f}x  new {n[0]} / {n[1]:.2f}x")
    for W in (2, 8):
        print(f"5% random 429s (Retry-After 1 s), no limit, max_rate 2000, W={W}: answered / max_rate over [10 s, 20 s]: old {noise_unlimited(run_old, W):.3f}  new {noise_unlimited(new, W):.3f}")
