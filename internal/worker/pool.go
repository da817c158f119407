package worker

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Deployment pools (docs/WIRE.md "Deployment pools"). A pool's jobs are published on
// the pool's subject (jobs.<pool>.<run>...) and fetched from one consumer per pool and
// run, like an alias's; what differs is the permit and the call. A worker serves a pool
// when it serves one of its members (the others are skipped). Before it fetches a job it
// takes a permit of a member with spare capacity: breaker closed, not paused, not down,
// and a slot of its fleet grid and tokens due now (members tried in a weighted random
// order, each preferred in proportion to its weight). The call goes to that member; a
// capacity error, a deployment-wide error or a transient error (5xx, no connection)
// fails over within the same delivery to another member that has a permit within
// failoverWait, each member called at most once per delivery. Only when no other member
// has one does the error count toward the job's budgets (capacity_retry_timeout,
// retry_exhausted) and NAK it, as for a single deployment: a capacity error counts only
// when all members are throttled. The result, acked once, is the same exactly-once
// path: the job's subject, its consumer and its result subject are the pool's.

// failoverWait bounds the wait for another member's permit after a failed call.
const failoverWait = time.Second

// A member is down after downStreak transient errors in a row, for downFor; a call
// after that (a probe) that fails again puts it down again at once.
const (
	downStreak = 3
	downFor    = 5 * time.Second
)

// pool is what a pool's deployment (a deployment whose alias is the pool's name) adds:
// the members this worker serves and their health.
type pool struct {
	mu      sync.Mutex
	members []*deployment
	weights map[string]float64
	streak  map[string]int
	down    map[string]time.Time
}

// add adds the members a run names that this worker serves; it reports whether any is.
func (p *pool) add(members []wire.PoolMember, served map[string]*deployment) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	found := false
	for _, m := range members {
		d, ok := served[m.Alias]
		if !ok {
			continue // served by other workers, or none: skipped here
		}
		found = true
		if _, known := p.weights[m.Alias]; !known {
			p.members = append(p.members, d)
		}
		p.weights[m.Alias] = m.Weight
	}
	return found
}

// failed counts a transient error of a member; it reports whether the member is down.
func (p *pool) failed(alias string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.streak[alias]++
	if p.streak[alias] >= downStreak {
		p.down[alias] = now.Add(downFor)
		return true
	}
	return false
}

// up records an answer of a member: its streak ends.
func (p *pool) up(alias string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.streak, alias)
	delete(p.down, alias)
}

// candidates are the members usable now (ok, not down, breaker closed, not paused), in a
// weighted random order: each comes first with a probability proportional to its weight.
func (p *pool) candidates(now time.Time, breakerOpen func(string) bool, ok func(*deployment) bool) []*deployment {
	p.mu.Lock()
	type keyed struct {
		d   *deployment
		key float64
	}
	ks := make([]keyed, 0, len(p.members))
	for _, d := range p.members {
		if now.Before(p.down[d.alias]) || (ok != nil && !ok(d)) {
			continue
		}
		// The exponential race: the smallest Exp(weight) draw wins.
		ks = append(ks, keyed{d: d, key: -math.Log(1-rand.Float64()) / p.weights[d.alias]})
	}
	p.mu.Unlock()
	sort.Slice(ks, func(i, j int) bool { return ks[i].key < ks[j].key })
	out := make([]*deployment, 0, len(ks))
	for _, k := range ks {
		if !breakerOpen(k.d.alias) && k.d.ctrl.PausedFor() == 0 {
			out = append(out, k.d)
		}
	}
	return out
}

// tryMember takes a permit of a usable member (ok filters them) if one has one now.
// The members the grid refused are marked rate-bound: their fleets' rates may grow.
func (w *Worker) tryMember(p *deployment, ok func(*deployment) bool) (*deployment, []*deployment) {
	cands := p.pool.candidates(time.Now(), w.ctl.breakerOpen, ok)
	for _, m := range cands {
		got, gridBound := m.tryPermit()
		if got {
			return m, cands
		}
		if gridBound {
			m.ctrl.Want()
		}
	}
	return nil, cands
}

// waitMember waits for a permit of a usable member, up to maxWait (0: until ctx ends).
// It returns nil at once when no member is usable and maxWait is set.
func (w *Worker) waitMember(ctx context.Context, p *deployment, ok func(*deployment) bool, maxWait time.Duration) *deployment {
	var deadline time.Time
	if maxWait > 0 {
		deadline = time.Now().Add(maxWait)
	}
	for ctx.Err() == nil {
		m, cands := w.tryMember(p, ok)
		if m != nil {
			return m
		}
		if len(cands) == 0 && maxWait > 0 {
			return nil
		}
		next := 50 * time.Millisecond
		for _, c := range cands {
			d := c.ctrl.Next()
			if c.tokens != nil {
				d = max(d, c.tokens.Next(c.tokens.Typical()))
			}
			next = min(next, d)
		}
		next = max(next, time.Millisecond)
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return nil
			}
			next = min(next, left)
		}
		sleep(ctx, next)
	}
	return nil
}

// servePool adds a run to a pool's rotation when this worker serves one of the pool's
// members, creating the pool (and starting its fetch loop) the first time; it reports
// whether it serves the pool.
func (w *Worker) servePool(ctx context.Context, pl wire.Pool, run string) bool {
	p, fresh := w.poolFor(pl)
	if p == nil {
		return false
	}
	if fresh {
		w.log.Info().Str("pool", pl.Name).Int("members", len(p.pool.members)).Msg("serving a deployment pool")
		w.startPool(p)
	}
	c, err := queue.EnsureJobConsumer(ctx, w.js, w.cfg.Topology, pl.Name, run)
	if err != nil {
		w.log.Error().Err(err).Str("pool", pl.Name).Str("run", run).Msg("job consumer")
		return true
	}
	if w.finished(ctx, run) {
		_ = w.js.DeleteConsumer(ctx, w.names.StreamJobs(), queue.JobConsumerName(pl.Name, run))
		return true
	}
	p.addRun(run, c)
	return true
}

// poolFor returns the pool's deployment (nil when no member is served here), and
// whether it was created now.
func (w *Worker) poolFor(pl wire.Pool) (*deployment, bool) {
	w.poolsMu.Lock()
	defer w.poolsMu.Unlock()
	if p, ok := w.pools[pl.Name]; ok {
		p.pool.add(pl.Members, w.deps)
		return p, false
	}
	pp := &pool{weights: map[string]float64{}, streak: map[string]int{}, down: map[string]time.Time{}}
	if !pp.add(pl.Members, w.deps) {
		return nil, false
	}
	p := &deployment{alias: pl.Name, slots: w.cfg.Concurrency, added: make(chan struct{}, 1), pool: pp}
	if w.pools == nil {
		w.pools = map[string]*deployment{}
	}
	w.pools[pl.Name] = p
	w.cache.m.init(pl.Name) // a pool's jobs are looked up under its name (cache.go)
	return p, true
}

// startPool starts a pool's fetch loop, fetchLoop as for an alias (Run's launcher: the
// loop is one of Run's goroutines and stops with the others).
func (w *Worker) startPool(p *deployment) {
	w.launch(p)
}

// fetched returns every deployment with runs to fetch: the aliases and the pools.
func (w *Worker) fetched() []*deployment {
	out := make([]*deployment, 0, len(w.deps))
	for _, d := range w.deps {
		out = append(out, d)
	}
	w.poolsMu.Lock()
	defer w.poolsMu.Unlock()
	for _, p := range w.pools {
		out = append(out, p)
	}
	return out
}

// servedNames are the names this worker registers in the fleet registry: its aliases
// and the pools it serves.
func (w *Worker) servedNames() []string {
	out := make([]string, 0, len(w.deps))
	for a := range w.deps {
		out = append(out, a)
	}
	w.poolsMu.Lock()
	defer w.poolsMu.Unlock()
	for name := range w.pools {
		out = append(out, name)
	}
	return out
}

// fetchPool is fetchLoop's turn for a pool's runs whose jobs take their permits at
// fetch, one slot taken: a permit of a member with spare capacity per job (waited for
// the first, taken while there are slots and permits for more), then a fetch of at most
// as many jobs (and at most `most`), each handled with its member's permit. It reports
// false when ctx ended.
func (w *Worker) fetchPool(ctx context.Context, p *deployment, pulls *pullers, runs []*runConsumer, slots chan struct{}, most int, handlers chan<- fetched) bool {
	first := w.waitMember(ctx, p, nil, 0)
	if first == nil {
		<-slots
		return false
	}
	granted := make([]*deployment, 1, cap(slots))
	granted[0] = first
	for len(granted) < most && tryTake(slots) {
		m, _ := w.tryMember(p, nil)
		if m == nil {
			<-slots
			break
		}
		granted = append(granted, m)
	}
	i := 0
	got := w.fetch(ctx, p, pulls, runs, len(granted), true, func(msg jetstream.Msg) {
		handlers <- fetched{msg: msg, permit: granted[i]}
		i++
	})
	for _, m := range granted[got:] {
		m.refundPermit()
		<-slots
	}
	return true
}

// inPool reports whether a job of a pool names a member (a job without members takes
// any member the pool has here).
func inPool(job *wire.Job, d *deployment) bool {
	if job.Pool == nil {
		return true
	}
	for _, m := range job.Pool {
		if m.Alias == d.alias {
			return true
		}
	}
	return false
}

// routePool checks, before a pool job's call, that its member is still usable (and one
// of the job's members): else it takes another member's permit now if one has one
// (keeping the first when none has).
func (w *Worker) routePool(dl *delivery) {
	m := dl.d
	if inPool(dl.job, m) && !w.ctl.breakerOpen(m.alias) && m.ctrl.PausedFor() == 0 {
		return
	}
	next, _ := w.tryMember(dl.pool, func(d *deployment) bool { return d != m && inPool(dl.job, d) })
	if next != nil {
		m.refundPermit()
		dl.d = next
	}
}

// failover is asked after each call of a pool job: for a capacity, deployment-wide or
// transient error it returns another member that has a permit (within failoverWait),
// having done what the failed call entails for its own member (the capacity signal to
// its fleet, its breaker); nil when the delivery ends with this call (then tally counts
// the error toward the job's budgets as for a single deployment).
func (w *Worker) failover(ctx context.Context, dl *delivery, c callResult, callErr error) *deployment {
	if dl.pool == nil || ctx.Err() != nil {
		return nil
	}
	m, p := dl.d, dl.pool.pool
	switch c.class {
	case classOK:
		p.up(m.alias)
		return nil
	case classTransient:
		if p.failed(m.alias, time.Now()) {
			dl.log.Warn().Str("member", m.alias).Str("error", c.message).Msg("pool member down after a streak of errors: calls go to the other members")
		}
	case classCapacity, classDeployment:
	default:
		return nil
	}
	if dl.tried == nil {
		dl.tried = map[*deployment]bool{}
	}
	dl.tried[m] = true
	next := w.waitMember(ctx, dl.pool, func(d *deployment) bool { return !dl.tried[d] && inPool(dl.job, d) }, failoverWait)
	if next == nil {
		return nil
	}
	var (
		capErr *llm.CapacityError
		depErr *llm.DeploymentError
	)
	switch {
	case errors.As(callErr, &capErr):
		w.m.capacity.WithLabelValues(m.alias).Inc()
		m.capacity(capErr)
	case errors.As(callErr, &depErr):
		dl.log.Error().Str("member", m.alias).Int("status", depErr.StatusCode).Str("code", depErr.Code).Msg("deployment-wide error: pausing the pool member fleet-wide")
		w.openBreaker(ctx, m, depErr)
	}
	w.m.failovers.WithLabelValues(dl.pool.alias, m.alias).Inc()
	dl.log.Debug().Str("from", m.alias).Str("to", next.alias).Int("status", c.status).Msg("pool failover")
	return next
}

// memberPermit takes, for a pool's job fetched without a permit (its run's jobs use
// the prompt cache) that the cache did not answer, the permit of a member with spare
// capacity that the job names; the call goes to it. It fails only when ctx ends.
func (w *Worker) memberPermit(ctx context.Context, dl *delivery) error {
	m := w.waitMember(ctx, dl.pool, func(d *deployment) bool { return inPool(dl.job, d) }, 0)
	if m == nil {
		return ctx.Err()
	}
	dl.d = m
	return nil
}

// auditJob is the job as its audit record names it: a pool's job under the member
// called.
func auditJob(dl *delivery) *wire.Job {
	if dl.pool == nil {
		return dl.job
	}
	j := *dl.job
	j.Deployment = dl.d.alias
	return &j
}
