package producer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/wire"
)

// checkpointer reads and writes the producer's resume point (wire.ProducerCheckpoint)
// in the runs bucket.
type checkpointer struct {
	kv         jetstream.KeyValue
	run        string
	configHash string
}

func (c *checkpointer) key() string { return wire.ProducerCheckpointKey(c.run) }

func (c *checkpointer) load(ctx context.Context) (*wire.ProducerCheckpoint, error) {
	e, err := c.kv.Get(ctx, c.key())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint of run %s: %w", c.run, err)
	}
	var cp wire.ProducerCheckpoint
	if err := json.Unmarshal(e.Value(), &cp); err != nil {
		return nil, fmt.Errorf("decode checkpoint of run %s: %w", c.run, err)
	}
	return &cp, nil
}

func (c *checkpointer) save(ctx context.Context, through int, sum string) error {
	b, _ := json.Marshal(wire.ProducerCheckpoint{Through: through, RowsSHA256: sum, ConfigHash: c.configHash, Updated: time.Now().UTC()})
	if _, err := c.kv.Put(ctx, c.key(), b); err != nil {
		return fmt.Errorf("write checkpoint of run %s: %w", c.run, err)
	}
	return nil
}

// hashRow feeds one record into the rolling hash of the input: its index, its data (or
// raw text and error), so that a rerun can prove it reads the same rows.
func hashRow(h hash.Hash, rec input.Row) {
	b := []byte(rec.Raw)
	if rec.Err == nil {
		if j, err := rec.JSON(); err == nil {
			b = j
		}
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// flowControl keeps the producer at most `ahead` rows beyond the rows the collector has
// written (its status in the runs bucket), so that no stream holds a whole giant input.
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

// exists reports whether a stream holds a message on subject.
func (p *publisher) exists(ctx context.Context, stream, subject string) (bool, error) {
	s, err := p.js.Stream(ctx, stream)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", stream, err)
	}
	_, err = s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", subject, err)
	}
	return true, nil
}
