package throttle

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Fleet timing.
const (
	HeartbeatEvery = 250 * time.Millisecond
	memberTimeout  = 4 * HeartbeatEvery
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
}

type heartbeat struct {
	Member    string  `json:"member"`
	Rate      float64 `json:"rate"`
	SlowStart bool    `json:"slow_start"`
	Demanding bool    `json:"demanding"`
}

type member struct {
	seen      time.Time
	demanding bool
}

// Fleet makes one deployment's Controllers, one per worker process, act as one
// throttle: a capacity signal seen by any worker is broadcast and applied by all (one
// decrease per window, a Retry-After pauses everyone); heartbeats carry membership,
// demand and the fleet rate, from which each worker takes its demand-weighted share. A
// worker cut off from the others keeps its last share on its local controller.
type Fleet struct {
	nc     *nats.Conn
	alias  string
	id     string
	ctrl   *Controller
	log    zerolog.Logger
	mu     sync.Mutex
	peers  map[string]member
	onTick func(Snapshot, int)
}

// NewFleet couples ctrl to the deployment's other pacers. id must be unique per process.
func NewFleet(nc *nats.Conn, alias, id string, ctrl *Controller, log zerolog.Logger) *Fleet {
	return &Fleet{nc: nc, alias: alias, id: id, ctrl: ctrl, log: log, peers: map[string]member{}}
}

// OnTick registers a function called after each heartbeat with the controller's state
// and the number of members (for metrics).
func (f *Fleet) OnTick(fn func(Snapshot, int)) { f.onTick = fn }

// Capacity applies a capacity signal locally and broadcasts it to the fleet.
func (f *Fleet) Capacity(status int, retryAfter time.Duration) {
	f.ctrl.OnCapacity(retryAfter)
	b, _ := json.Marshal(signal{Member: f.id, Status: status, RetryAfterMS: retryAfter.Milliseconds()})
	if err := f.nc.Publish(SignalSubject(f.alias), b); err != nil {
		f.log.Debug().Err(err).Msg("broadcast capacity signal")
	}
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
		f.ctrl.OnCapacity(time.Duration(s.RetryAfterMS) * time.Millisecond)
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
		f.peers[h.Member] = member{seen: time.Now(), demanding: h.Demanding}
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

// tick publishes this pacer's heartbeat and recomputes its share: among N live members
// of which D are rate-bound, a rate-bound member takes 1/D of the fleet rate, another
// 1/N. The rate grows only while some member is rate-bound.
func (f *Fleet) tick() {
	demanding := f.ctrl.RateBound(2 * HeartbeatEvery)
	snap := f.ctrl.Snapshot()
	b, _ := json.Marshal(heartbeat{Member: f.id, Rate: snap.Rate, SlowStart: snap.SlowStart, Demanding: demanding})
	if err := f.nc.Publish(HeartbeatSubject(f.alias), b); err != nil {
		f.log.Debug().Err(err).Msg("heartbeat")
	}
	now := time.Now()
	n, d := 1, 0
	if demanding {
		d = 1
	}
	f.mu.Lock()
	for id, m := range f.peers {
		if now.Sub(m.seen) > memberTimeout {
			delete(f.peers, id)
			continue
		}
		n++
		if m.demanding {
			d++
		}
	}
	f.mu.Unlock()
	if f.nc.IsConnected() { // cut off: keep the last share
		switch {
		case demanding:
			f.ctrl.SetShare(1 / float64(d))
		default:
			f.ctrl.SetShare(1 / float64(n))
		}
		f.ctrl.SetGrowth(d > 0)
	}
	if f.onTick != nil {
		f.onTick(f.ctrl.Snapshot(), n)
	}
}
