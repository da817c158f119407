package throttle

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Fleet timing.
const (
	HeartbeatEvery = 250 * time.Millisecond
	// memberTimeout drops a silent member slowly: counting a departed member only leaves
	// its slots unused for a while, but dropping a live one whose heartbeats are late (a
	// busy host) makes two members take the same slots.
	memberTimeout = 12 * HeartbeatEvery
)

// SignalSubject carries capacity signals of one deployment (core NATS, no persistence:
// a signal is only useful now).
func SignalSubject(alias string) string { return "mq.throttle." + alias + ".signal" }

// HeartbeatSubject carries the membership and demand of one deployment's pacers.
func HeartbeatSubject(alias string) string { return "mq.throttle." + alias + ".hb" }

type signal struct {
	Member       string `json:"member"`
	Kind         string `json:"kind,omitempty"` // "" capacity | "deployment": paused, rate untouched
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
	// last heartbeat: their sum is the fleet's served rate.
	Served float64 `json:"served"`
	// Counters of the member's controller (for operators and tests).
	Signals   int64 `json:"signals"`
	Lone      int64 `json:"lone"`
	Decreases int64 `json:"decreases"`
	Pauses    int64 `json:"pauses"`
}

type member struct {
	seen      time.Time
	demanding bool
	served    float64
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

	mu      sync.Mutex
	peers   map[string]member
	refused int64 // own capacity answers since the last heartbeat
	lastHB  time.Time
	onTick  func(Snapshot, int)
}

// NewFleet couples ctrl to the deployment's other pacers. id must be unique per process.
func NewFleet(nc *nats.Conn, alias, id string, ctrl *Controller, log zerolog.Logger) *Fleet {
	return &Fleet{nc: nc, alias: alias, id: id, ctrl: ctrl, log: log, peers: map[string]member{}}
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
	if err := f.nc.Publish(SignalSubject(f.alias), b); err != nil {
		f.log.Debug().Err(err).Msg("broadcast capacity signal")
	}
	return d
}

// Block pauses the deployment fleet-wide for d after a deployment-wide error (bad key,
// no quota, deployment not found): every worker stops dispatching, the rate is kept.
func (f *Fleet) Block(status int, d time.Duration) {
	f.ctrl.Pause(d)
	b, _ := json.Marshal(signal{Member: f.id, Kind: "deployment", Status: status, RetryAfterMS: d.Milliseconds()})
	if err := f.nc.Publish(SignalSubject(f.alias), b); err != nil {
		f.log.Debug().Err(err).Msg("broadcast deployment pause")
	}
}

// Run exchanges signals and heartbeats until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	sigSub, err := f.nc.Subscribe(SignalSubject(f.alias), func(m *nats.Msg) {
		var s signal
		if json.Unmarshal(m.Data, &s) != nil || s.Member == f.id {
			return
		}
		if s.Kind == "deployment" {
			f.ctrl.Pause(time.Duration(s.RetryAfterMS) * time.Millisecond)
			return
		}
		f.ctrl.OnCapacity(Signal{RetryAfter: time.Duration(s.RetryAfterMS) * time.Millisecond, BudgetSpent: s.BudgetSpent})
		if s.Cut > 0 {
			f.ctrl.ApplyCut(s.Cut, s.Good)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", SignalSubject(f.alias), err)
	}
	defer func() { _ = sigSub.Unsubscribe() }()
	hbSub, err := f.nc.Subscribe(HeartbeatSubject(f.alias), func(m *nats.Msg) {
		var h heartbeat
		if json.Unmarshal(m.Data, &h) != nil || h.Member == f.id {
			return
		}
		f.mu.Lock()
		f.peers[h.Member] = member{seen: time.Now(), demanding: h.Demanding, served: h.Served}
		f.mu.Unlock()
		f.ctrl.Adopt(h.Rate, h.SlowStart)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", HeartbeatSubject(f.alias), err)
	}
	defer func() { _ = hbSub.Unsubscribe() }()

	t := time.NewTicker(HeartbeatEvery)
	defer t.Stop()
	for {
		f.tick()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// tick publishes this member's heartbeat and recomputes its place in the grid: members
// sorted by id, equal weights. (Demand weights were measured to hurt on a busy host: a
// member sees its own demand before the others do, so during flicker the members' views
// of the shares add up to more than the whole, and slots are taken twice; an idle
// member's unused slots only cost goodput.) The rate grows only while some member is
// rate-bound; the fleet's served rate is the sum of the members'.
func (f *Fleet) tick() {
	now := time.Now()
	demanding := f.ctrl.RateBound(2 * HeartbeatEvery)
	f.mu.Lock()
	elapsed := now.Sub(f.lastHB).Seconds()
	if f.lastHB.IsZero() || elapsed <= 0 {
		elapsed = HeartbeatEvery.Seconds()
	}
	f.lastHB = now
	refused := f.refused
	f.refused = 0
	f.mu.Unlock()
	served := float64(max(f.ctrl.TakeDispatched()-refused, 0)) / elapsed
	snap := f.ctrl.Snapshot()
	b, _ := json.Marshal(heartbeat{Member: f.id, Rate: snap.Rate, SlowStart: snap.SlowStart, Demanding: demanding, Served: served,
		Signals: snap.Signals, Lone: snap.Lone, Decreases: snap.Decreases, Pauses: snap.Pauses})
	if err := f.nc.Publish(HeartbeatSubject(f.alias), b); err != nil {
		f.log.Debug().Err(err).Msg("heartbeat")
	}
	type entry struct {
		id        string
		demanding bool
	}
	members := []entry{{f.id, demanding}}
	fleetServed := served
	anyDemanding := demanding
	f.mu.Lock()
	for id, m := range f.peers {
		if now.Sub(m.seen) > memberTimeout {
			delete(f.peers, id)
			continue
		}
		members = append(members, entry{id, m.demanding})
		fleetServed += m.served
		anyDemanding = anyDemanding || m.demanding
	}
	f.mu.Unlock()
	if f.nc.IsConnected() { // cut off: keep the last place in the grid
		sort.Slice(members, func(i, j int) bool { return members[i].id < members[j].id })
		weights := make([]float64, len(members))
		me := 0
		for i, m := range members {
			weights[i] = 1
			if m.id == f.id {
				me = i
			}
		}
		f.ctrl.SetMembers(weights, me)
		f.ctrl.SetServed(fleetServed)
		f.ctrl.SetGrowth(anyDemanding)
	}
	if f.onTick != nil {
		f.onTick(f.ctrl.Snapshot(), len(members))
	}
}
