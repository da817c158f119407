package throttle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/wire"
)

// Fleet timing.
const (
	// HeartbeatEvery is a member's heartbeat period in a fleet of up to heartbeatFleet
	// members; a larger fleet beats proportionally slower, so that the fleet publishes at
	// most heartbeatFleet / HeartbeatEvery (128) heartbeats a second whatever its size
	// (each delivered to every member: W x 128 deliveries a second; docs/THROTTLE.md).
	HeartbeatEvery = 250 * time.Millisecond
	heartbeatFleet = 32
	// memberTimeout, in heartbeat periods of the silent member, drops it slowly: counting
	// a departed member only leaves its slots unused for a while, but dropping a live one
	// whose heartbeats are late (a busy host) makes two members take the same slots. A
	// member that stops says so (leave) and is dropped at once.
	memberTimeout = 12
)

// heartbeatPeriod is the heartbeat period in a fleet of n members.
func heartbeatPeriod(n int) time.Duration {
	return HeartbeatEvery * time.Duration(max(1, (n+heartbeatFleet-1)/heartbeatFleet))
}

type signal struct {
	Member string `json:"member"`
	// Kind: "" a capacity answer | "deployment": paused, rate untouched | "budget": a
	// served answer's headers showed the budget spent (only its cut applies).
	Kind         string `json:"kind,omitempty"`
	Status       int    `json:"status"`
	RetryAfterMS int64  `json:"retry_after_ms"`
	// BudgetSpent: the 429's rate-limit headers read 0.
	BudgetSpent bool `json:"budget_spent,omitempty"`
	// Cut, when > 0, is the fleet rate after the cut the sender decided on this signal,
	// Good the last good rate: every member applies the same one cut.
	Cut  float64 `json:"cut,omitempty"`
	Good float64 `json:"good,omitempty"`
}

type heartbeat struct {
	Member    string  `json:"member"`
	Rate      float64 `json:"rate"`
	SlowStart bool    `json:"slow_start"`
	Demanding bool    `json:"demanding"`
	// Served is this member's answers other than capacity errors per second since its
	// last heartbeat: their sum is the fleet's served rate. Refused: its capacity
	// errors per second.
	Served  float64 `json:"served"`
	Refused float64 `json:"refused,omitempty"`
	// Counters of the member's controller (for operators and tests).
	Signals   int64 `json:"signals"`
	Lone      int64 `json:"lone"`
	Decreases int64 `json:"decreases"`
	Pauses    int64 `json:"pauses"`
	// What the rate rests on (headers | learned | probing) and the headers' ceiling.
	Source  string  `json:"source,omitempty"`
	Ceiling float64 `json:"ceiling,omitempty"`
	// Leaving: the member stops (drain); peers drop it from the grid at once.
	Leaving bool `json:"leaving,omitempty"`
	// EveryMS is the sender's heartbeat period: its silence for memberTimeout periods
	// drops it.
	EveryMS int64 `json:"every_ms,omitempty"`
}

type member struct {
	seen      time.Time
	every     time.Duration
	demanding bool
	served    float64
	refused   float64
}

// Fleet makes one deployment's Controllers, one per worker process, act as one
// throttle: every capacity signal is broadcast and counted by all; the member that sees
// pressure decides the window's one cut and broadcasts it with the signal; heartbeats
// carry membership, demand, the served rate and the fleet rate, from which each member
// places itself in the dispatch grid. A member cut off from the others keeps its last
// place on its local controller.
type Fleet struct {
	nc    *nats.Conn
	alias string
	id    string
	ctrl  *Controller
	log   zerolog.Logger
	// The deployment's subjects (core NATS, no persistence): capacity signals (only
	// useful now), and the pacers' membership and demand.
	sigSubject, hbSubject string

	mu      sync.Mutex
	peers   map[string]member
	refused int64 // own capacity answers since the last heartbeat
	answers int64 // own answers other than capacity errors since the last heartbeat
	lastHB  time.Time
	onTick  func(Snapshot, int)

	// The fleet's memory of the deployment's rate (nil: none).
	memory   jetstream.KeyValue
	learned  wire.LearnedRate // last read or written
	lastSave time.Time
	savedCut int64 // the controller's cuts when the rate was last saved
}

// Remember gives the fleet a KV bucket (wire.BucketThrottle) for the deployment's last
// good rate: Run starts from it, and the fleet's first member (by id) saves it every
// saveEvery while some member is rate-bound. Call before Run.
func (f *Fleet) Remember(kv jetstream.KeyValue) { f.memory = kv }

// Learned returns the deployment's remembered rate as last read or saved by this member.
func (f *Fleet) Learned() (wire.LearnedRate, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.learned, f.learned.Rate > 0
}

// Memory timing.
const (
	saveEvery = 5 * time.Second
	// saveAnyway: a remembered rate within saveChange of the current one is saved again
	// after this long, so that its age says when it was last confirmed.
	saveAnyway = time.Minute
	saveChange = 0.05
)

// recall seeds the controller from the remembered rate.
func (f *Fleet) recall(ctx context.Context) {
	if f.memory == nil {
		return
	}
	e, err := f.memory.Get(ctx, f.alias)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			f.log.Warn().Err(err).Msg("read the remembered rate")
		}
		return
	}
	var l wire.LearnedRate
	if err := json.Unmarshal(e.Value(), &l); err != nil || !(l.Rate > 0) {
		f.log.Warn().Err(err).Msg("ignore an unreadable remembered rate")
		return
	}
	f.mu.Lock()
	f.learned = l
	f.mu.Unlock()
	age := time.Since(l.Learned)
	if f.ctrl.Seed(l.Rate, l.Ceiling, age) {
		f.log.Info().Float64("rate", l.Rate).Float64("ceiling", l.Ceiling).Stringer("age", age).Msg("starting from the remembered rate")
	}
}

// save stores the fleet's learned rate (the first member only, while some member is
// rate-bound: an idle or slot-bound fleet's served rate says nothing of the limit).
func (f *Fleet) save(ctx context.Context, now time.Time) {
	if f.memory == nil || now.Sub(f.lastSave) < saveEvery {
		return
	}
	rate, ceiling, ok := f.ctrl.Learned()
	if !ok {
		return
	}
	f.mu.Lock()
	prev := f.learned
	f.mu.Unlock()
	snap := f.ctrl.Snapshot()
	if prev.Rate > 0 && math.Abs(rate-prev.Rate) < saveChange*prev.Rate && ceiling == prev.Ceiling && now.Sub(prev.Learned) < saveAnyway {
		return
	}
	if prev.Rate > 0 && rate < prev.Rate && snap.Decreases == f.savedCut {
		// Served less without pressure: demand fell (a run's tail, members out of
		// jobs), the limit did not. Only a cut lowers what the fleet remembers.
		rate = prev.Rate
	}
	f.lastSave, f.savedCut = now, snap.Decreases
	l := wire.LearnedRate{Rate: rate, Ceiling: ceiling, Source: snap.Source, Learned: now.UTC()}
	b, _ := json.Marshal(l)
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := f.memory.Put(sctx, f.alias, b); err != nil {
		if ctx.Err() == nil {
			f.log.Debug().Err(err).Msg("save the learned rate")
		}
		return
	}
	f.mu.Lock()
	f.learned = l
	f.mu.Unlock()
}

// NewFleet couples ctrl to the deployment's other pacers, on the throttle subjects of
// names (wire.Names.ThrottleSignalSubject, ThrottleHeartbeatSubject). id must be unique
// per process.
func NewFleet(nc *nats.Conn, names wire.Names, alias, id string, ctrl *Controller, log zerolog.Logger) *Fleet {
	return &Fleet{nc: nc, alias: alias, id: id, ctrl: ctrl, log: log, peers: map[string]member{},
		sigSubject: names.ThrottleSignalSubject(alias), hbSubject: names.ThrottleHeartbeatSubject(alias)}
}

// OnTick registers a function called after each heartbeat with the controller's state
// and the number of members (for metrics).
func (f *Fleet) OnTick(fn func(Snapshot, int)) { f.onTick = fn }

// Capacity applies a capacity answer of this member's own call and broadcasts it, with
// the cut it decided if it decided one.
func (f *Fleet) Capacity(status int, s Signal) Decision {
	d := f.ctrl.OnCapacity(s)
	f.mu.Lock()
	f.refused++
	f.mu.Unlock()
	msg := signal{Member: f.id, Status: status, RetryAfterMS: s.RetryAfter.Milliseconds(), BudgetSpent: s.BudgetSpent}
	if d.Cut {
		msg.Cut, msg.Good = d.Target, d.Good
	}
	b, _ := json.Marshal(msg)
	if err := f.nc.Publish(f.sigSubject, b); err != nil {
		f.log.Debug().Err(err).Msg("broadcast capacity signal")
	}
	return d
}

// Served counts an answer of this member's own call that was not a capacity error: the
// member's served rate in its heartbeats. (Answers, not dispatches less refusals: those
// lag each other by the call's latency, and during slow start's ramp the difference read
// as served was the overshoot.)
func (f *Fleet) Served() {
	f.mu.Lock()
	f.answers++
	f.mu.Unlock()
}

// Budget applies what a served answer's rate-limit headers say and broadcasts the cut it
// decided, if any (the budget read as spent).
func (f *Fleet) Budget(b Budget) Decision {
	d := f.ctrl.OnBudget(b)
	if d.Cut {
		m, _ := json.Marshal(signal{Member: f.id, Kind: "budget", Status: 200, Cut: d.Target, Good: d.Good})
		if err := f.nc.Publish(f.sigSubject, m); err != nil {
			f.log.Debug().Err(err).Msg("broadcast budget cut")
		}
	}
	return d
}

// Block pauses the deployment fleet-wide for d after a deployment-wide error (bad key,
// no quota, deployment not found): every worker stops dispatching, the rate is kept.
func (f *Fleet) Block(status int, d time.Duration) {
	f.ctrl.Pause(d)
	b, _ := json.Marshal(signal{Member: f.id, Kind: "deployment", Status: status, RetryAfterMS: d.Milliseconds()})
	if err := f.nc.Publish(f.sigSubject, b); err != nil {
		f.log.Debug().Err(err).Msg("broadcast deployment pause")
	}
}

// Run exchanges signals and heartbeats until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	sigSub, err := f.nc.Subscribe(f.sigSubject, func(m *nats.Msg) {
		var s signal
		if json.Unmarshal(m.Data, &s) != nil || s.Member == f.id {
			return
		}
		switch s.Kind {
		case "deployment":
			f.ctrl.Pause(time.Duration(s.RetryAfterMS) * time.Millisecond)
			return
		case "budget":
			if s.Cut > 0 {
				f.ctrl.ApplyCut(s.Cut, s.Good)
			}
			return
		}
		f.ctrl.OnCapacity(Signal{RetryAfter: time.Duration(s.RetryAfterMS) * time.Millisecond, BudgetSpent: s.BudgetSpent})
		if s.Cut > 0 {
			f.ctrl.ApplyCut(s.Cut, s.Good)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", f.sigSubject, err)
	}
	defer func() { _ = sigSub.Unsubscribe() }()
	hbSub, err := f.nc.Subscribe(f.hbSubject, func(m *nats.Msg) {
		var h heartbeat
		if json.Unmarshal(m.Data, &h) != nil || h.Member == f.id {
			return
		}
		f.mu.Lock()
		_, known := f.peers[h.Member]
		if h.Leaving {
			delete(f.peers, h.Member)
		} else {
			every := max(time.Duration(h.EveryMS)*time.Millisecond, HeartbeatEvery)
			f.peers[h.Member] = member{seen: time.Now(), every: every, demanding: h.Demanding, served: h.Served, refused: h.Refused}
		}
		f.mu.Unlock()
		if known == h.Leaving { // joined or left: the grid changes now, not at the next tick
			f.regrid(time.Now(), false, -1, -1)
		}
		if h.Leaving {
			return
		}
		f.ctrl.Adopt(h.Rate, h.SlowStart)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", f.hbSubject, err)
	}
	defer func() { _ = hbSub.Unsubscribe() }()

	f.recall(ctx)
	// Listen to the fleet for a heartbeat period before the first slot: alone in its grid
	// until it hears the others, a joiner would take slots that are theirs.
	f.ctrl.Hold(HeartbeatEvery + HeartbeatEvery/5)
	t := time.NewTimer(HeartbeatEvery)
	defer t.Stop()
	for {
		n := f.tick(ctx)
		t.Reset(heartbeatPeriod(n))
		select {
		case <-ctx.Done():
			f.leave()
			return nil
		case <-t.C:
		}
	}
}

// leave tells the peers this member stops, so they hand its slots out at once instead
// of after memberTimeout (a rolling restart replaces every member).
func (f *Fleet) leave() {
	b, _ := json.Marshal(heartbeat{Member: f.id, Leaving: true})
	if err := f.nc.Publish(f.hbSubject, b); err != nil {
		f.log.Debug().Err(err).Msg("leave")
	}
}

// tick publishes this member's heartbeat and recomputes its place in the grid: members
// sorted by id, equal weights. (Demand weights were measured to hurt on a busy host: a
// member sees its own demand before the others do, so during flicker the members' views
// of the shares add up to more than the whole, and slots are taken twice; an idle
// member's unused slots only cost goodput.) The rate grows only while some member is
// rate-bound; the fleet's served rate is the sum of the members'.
func (f *Fleet) tick(ctx context.Context) int {
	now := time.Now()
	f.mu.Lock()
	every := heartbeatPeriod(len(f.peers) + 1)
	f.mu.Unlock()
	demanding := f.ctrl.RateBound(2 * every)
	f.mu.Lock()
	elapsed := now.Sub(f.lastHB).Seconds()
	if f.lastHB.IsZero() || elapsed <= 0 {
		elapsed = every.Seconds()
	}
	f.lastHB = now
	refused, answers := f.refused, f.answers
	f.refused, f.answers = 0, 0
	f.mu.Unlock()
	served := float64(answers) / elapsed
	refusedRate := float64(refused) / elapsed
	snap := f.ctrl.Snapshot()
	b, _ := json.Marshal(heartbeat{Member: f.id, Rate: snap.Rate, SlowStart: snap.SlowStart, Demanding: demanding, Served: served, Refused: refusedRate,
		Signals: snap.Signals, Lone: snap.Lone, Decreases: snap.Decreases, Pauses: snap.Pauses, Source: snap.Source, Ceiling: snap.Ceiling,
		EveryMS: every.Milliseconds()})
	if err := f.nc.Publish(f.hbSubject, b); err != nil {
		f.log.Debug().Err(err).Msg("heartbeat")
	}
	n, me, anyDemanding := f.regrid(now, demanding, served, refusedRate)
	if me == 0 && anyDemanding && f.nc.IsConnected() {
		f.save(ctx, now)
	}
	if f.onTick != nil {
		f.onTick(f.ctrl.Snapshot(), n)
	}
	return n
}

// regrid places this member in the grid from the peers it hears (sorted ids, equal
// weights) and, on a heartbeat tick (served >= 0), sets the fleet's served rate and
// growth; it drops silent peers. It runs on every tick and whenever a peer joins or
// leaves, so that no member uses a departed member's slots, or a joiner's, for a period.
// Cut off from NATS, a member keeps its last place.
func (f *Fleet) regrid(now time.Time, demanding bool, served, refused float64) (n, me int, anyDemanding bool) {
	ids := []string{f.id}
	fleetServed, fleetRefused, anyDemanding := max(served, 0), max(refused, 0), demanding
	f.mu.Lock()
	for id, m := range f.peers {
		if now.Sub(m.seen) > memberTimeout*m.every {
			delete(f.peers, id)
			continue
		}
		ids = append(ids, id)
		fleetServed += m.served
		fleetRefused += m.refused
		anyDemanding = anyDemanding || m.demanding
	}
	f.mu.Unlock()
	sort.Strings(ids)
	weights := make([]float64, len(ids))
	for i, id := range ids {
		weights[i] = 1
		if id == f.id {
			me = i
		}
	}
	if f.nc.IsConnected() {
		f.ctrl.SetMembers(weights, me)
		if served >= 0 {
			f.ctrl.SetServed(fleetServed)
			f.ctrl.SetAnswered(fleetServed + fleetRefused)
			f.ctrl.SetGrowth(anyDemanding)
		}
	}
	return len(ids), me, anyDemanding
}
