package producer

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/wire"
)

// flowControl keeps the producer at most `ahead` rows beyond the rows the collector has
// written (its status in the runs bucket), so that no stream holds a whole giant input.
// (The service, whose rows arrive in any order, uses service.inWindow instead.)
type flowControl struct {
	kv      jetstream.KeyValue
	run     string
	ahead   int
	emitted int
	// flush, if set, publishes what the producer holds back before it waits: rows held
	// until their jobs are acknowledged are what the collector needs to move on.
	flush func(ctx context.Context) error
}

// errCancelled stops a producer whose run was cancelled (mqctl cancel).
var errCancelled = errors.New("run cancelled")

// control reads the run's control state: cancelled stops the producer, paused holds it.
func (f *flowControl) control(ctx context.Context) error {
	for {
		var c wire.Control
		e, err := f.kv.Get(ctx, wire.ControlKey(f.run))
		if err != nil || json.Unmarshal(e.Value(), &c) != nil {
			return nil
		}
		switch c.State {
		case wire.ControlCancelled:
			return errCancelled
		case wire.ControlPaused:
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		default:
			return nil
		}
	}
}

// wait returns once row may be published: within `ahead` rows of what the collector has
// written. Every 100 rows it reads the control state first (errCancelled, or held
// while paused).
func (f *flowControl) wait(ctx context.Context, row int) error {
	if row%100 == 0 {
		if err := f.control(ctx); err != nil {
			return err
		}
	}
	for flushed := false; row-f.emitted >= f.ahead; flushed = true {
		if !flushed && f.flush != nil {
			if err := f.flush(ctx); err != nil {
				return err
			}
		}
		e, err := f.kv.Get(ctx, f.run)
		if err == nil {
			var st wire.RunStatus
			if json.Unmarshal(e.Value(), &st) == nil {
				f.emitted = st.Emitted
			}
		}
		if row-f.emitted < f.ahead {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// controlState returns the run's control state, read at most once a second.
func (s *service) controlState(ctx context.Context, run string, st *runState) string {
	if time.Since(st.controlRead) < serviceControlFreshness {
		return st.control
	}
	st.controlRead = time.Now()
	st.control = ""
	if e, err := s.runs.Get(ctx, wire.ControlKey(run)); err == nil {
		var c wire.Control
		if json.Unmarshal(e.Value(), &c) == nil {
			st.control = c.State
		}
	}
	return st.control
}

// inWindow reports whether a row may be published now: at most MaxAhead rows beyond
// the collector's watermark (every row below it is emitted). Rows arriving out of order
// cannot deadlock: a row below the window is always published, and the rows the
// collector waits for are always below it.
func (s *service) inWindow(ctx context.Context, run string, row, queries int, st *runState) bool {
	ahead := AheadRows(s.cfg.MaxAhead, queries)
	if row < st.watermark+ahead {
		return true
	}
	if time.Since(st.statusRead) < serviceStatusFreshness {
		return false
	}
	st.statusRead = time.Now()
	if e, err := s.runs.Get(ctx, run); err == nil {
		var status wire.RunStatus
		if json.Unmarshal(e.Value(), &status) == nil {
			st.watermark = max(st.watermark, status.Next)
		}
	}
	return row < st.watermark+ahead
}

// park leaves a submitted row on the stream for later (NAK with ParkDelay), counted by
// cause, when it may not be published yet: its run is paused, or (not cancelled) the
// row is beyond its run's flow window.
func (s *service) park(ctx context.Context, msg jetstream.Msg, sub *submission, ctl string) (bool, error) {
	switch {
	case ctl == wire.ControlPaused:
		s.cfg.Metrics.parked.WithLabelValues("paused").Inc()
		return true, msg.NakWithDelay(s.cfg.ParkDelay)
	case ctl != wire.ControlCancelled && !s.inWindow(ctx, sub.run, sub.row, sub.p.QueryCount(), sub.st):
		s.cfg.Metrics.parked.WithLabelValues("flow_control").Inc()
		return true, msg.NakWithDelay(s.cfg.ParkDelay)
	}
	return false, nil
}
