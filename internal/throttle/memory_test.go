package throttle

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/wire"
)

func memoryBucket(t *testing.T) (*nats.Conn, jetstream.KeyValue) {
	t.Helper()
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: wire.BucketThrottle, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return nc, kv
}

// A rate-bound fleet saves what it serves; a worker starting later begins from it, not
// from slow start at start_rate.
func TestAFleetRemembersItsRateAndALaterWorkerStartsFromIt(t *testing.T) {
	nc, kv := memoryBucket(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	p := params()
	p.StartRate, p.MaxRate = 5, 40 // slow start reaches 40/s, where it stays rate-bound
	first, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	f1 := NewFleet(nc, wire.Names{}, "dep", "a", first, zerolog.Nop())
	f1.Remember(kv)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = f1.Run(runCtx) }()
	go func() { // demand above the rate: every permit is waited for, and answered
		for first.Wait(runCtx) == nil {
			f1.Served()
		}
	}()
	// Slow start never saves; pressure ends it (the provider's headers read 0) once the
	// heartbeats report the 40/s served.
	time.Sleep(2 * time.Second)
	first.OnBudget(Budget{Spent: true})
	var saved wire.LearnedRate
	for ctx.Err() == nil {
		if e, err := kv.Get(ctx, "dep"); err == nil {
			if err := json.Unmarshal(e.Value(), &saved); err != nil {
				t.Fatalf("the saved rate is not a LearnedRate: %v", err)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	<-done
	if !(saved.Rate > 20 && saved.Rate <= 40) || time.Since(saved.Learned) > 30*time.Second {
		t.Fatalf("saved %+v; want about the 36-40/s the fleet was served, learned just now", saved)
	}

	second, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	f2 := NewFleet(nc, wire.Names{}, "dep", "b", second, zerolog.Nop())
	f2.Remember(kv)
	ctx2, stop2 := context.WithCancel(ctx)
	defer stop2()
	go func() { _ = f2.Run(ctx2) }()
	for ctx.Err() == nil && second.Snapshot().SlowStart {
		time.Sleep(10 * time.Millisecond)
	}
	s := second.Snapshot()
	if s.Source != SourceLearned || s.Rate < 0.9*saved.Rate || s.Rate > saved.Rate {
		t.Fatalf("the later worker: %+v; want it to start near the remembered %g/s (source learned)", s, saved.Rate)
	}
	if l, ok := f2.Learned(); !ok || l.Rate != saved.Rate {
		t.Fatalf("f2.Learned() = %+v %v, want the remembered record", l, ok)
	}
}

// A member that stops tells its peers, which hand its slots out at once.
func TestALeavingMemberIsDroppedAtOnce(t *testing.T) {
	nc, _ := memoryBucket(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, _ := New(params())
	b, _ := New(params())
	fa := NewFleet(nc, wire.Names{}, "dep", "a", a, zerolog.Nop())
	fb := NewFleet(nc, wire.Names{}, "dep", "b", b, zerolog.Nop())
	members := make(chan int, 100)
	fa.OnTick(func(_ Snapshot, n int) {
		select {
		case members <- n:
		default:
		}
	})
	go func() { _ = fa.Run(ctx) }()
	bctx, stopB := context.WithCancel(ctx)
	bdone := make(chan struct{})
	go func() { defer close(bdone); _ = fb.Run(bctx) }()
	for n := range members {
		if n == 2 {
			break
		}
	}
	stopB()
	<-bdone
	left := time.Now()
	for n := range members {
		if n == 1 {
			break
		}
	}
	// Without the leave message it would take memberTimeout (3 s).
	if d := time.Since(left); d >= memberTimeout*HeartbeatEvery {
		t.Fatalf("the stopped member was dropped after %s, want well before memberTimeout %s", d, memberTimeout*HeartbeatEvery)
	}
}

// The fleet publishes at most heartbeatFleet / HeartbeatEvery heartbeats a second
// whatever its size: a larger fleet beats slower.
func TestHeartbeatsSlowDownWithTheFleetSize(t *testing.T) {
	for _, tt := range []struct {
		members int
		every   time.Duration
	}{{1, 250 * time.Millisecond}, {32, 250 * time.Millisecond}, {33, 500 * time.Millisecond}, {64, 500 * time.Millisecond}, {256, 2 * time.Second}} {
		every := heartbeatPeriod(tt.members)
		if every != tt.every {
			t.Errorf("%d members: heartbeat every %s, want %s", tt.members, every, tt.every)
		}
		if rate := float64(tt.members) / every.Seconds(); rate > float64(heartbeatFleet)/HeartbeatEvery.Seconds() {
			t.Errorf("%d members publish %.0f heartbeats/s, above the bound", tt.members, rate)
		}
	}
}

// A member joining a fleet listens for a heartbeat period before its first slot: alone in
// its grid until it hears the others, it would take their slots (a burst of 429s at every
// join of a rolling restart).
func TestAJoiningMemberListensBeforeItsFirstSlot(t *testing.T) {
	nc, _ := memoryBucket(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctl, _ := New(params())
	f := NewFleet(nc, wire.Names{}, "dep", "a", ctl, zerolog.Nop())
	go func() { _ = f.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for ctl.PausedFor() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if p := ctl.PausedFor(); p <= 0 || p > HeartbeatEvery*2 {
		t.Fatalf("a joining member holds its slots for %s, want about one heartbeat period", p)
	}
	if s := ctl.Snapshot(); s.Pauses != 0 {
		t.Fatalf("the hold counted as a pause: %+v", s)
	}
}

// What a fleet remembers falls only with pressure: a run's tail, where members run out of
// jobs and the served rate falls, is not a lower limit.
func TestTheRememberedRateFallsOnlyAfterACut(t *testing.T) {
	nc, kv := memoryBucket(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctl, c := steady(t, 40)
	f := NewFleet(nc, wire.Names{}, "dep", "a", ctl, zerolog.Nop())
	f.Remember(kv)
	saved := func(served float64) float64 {
		t.Helper()
		for range 30 {
			ctl.SetServed(served)
		}
		c.advance(saveEvery + learnSettle)
		f.save(ctx, c.now())
		e, err := kv.Get(ctx, "dep")
		if err != nil {
			t.Fatal(err)
		}
		var l wire.LearnedRate
		if err := json.Unmarshal(e.Value(), &l); err != nil {
			t.Fatal(err)
		}
		return l.Rate
	}
	if got := saved(40); math.Abs(got-40) > 0.5 {
		t.Fatalf("saved %g, want the 40/s served", got)
	}
	if got := saved(20); math.Abs(got-40) > 0.5 {
		t.Fatalf("saved %g after the served rate fell without a cut, want still 40", got)
	}
	ctl.OnCapacity(Signal{BudgetSpent: true}) // pressure: the limit is lower now
	if got := saved(20); math.Abs(got-20) > 0.5 {
		t.Fatalf("saved %g after a cut with 20/s served, want 20", got)
	}
}
