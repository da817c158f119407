// Package deadletter owns reading and replaying the dead-letter stream (MQ_DEAD): job
// payloads that were terminated as poison or that reached MaxDeliver, each with the
// reason (Mq-Reason) and the subject it came from (Mq-Subject).
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/wire"
)

// Letter is one dead-lettered job.
type Letter struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Subject string    `json:"subject"` // the job's original subject
	Reason  string    `json:"reason"`
	Data    []byte    `json:"-"`
	Size    int       `json:"size"`
}

// List returns the dead letters of the deployment's dead-letter stream (names),
// optionally of one run only ("" = all).
func List(ctx context.Context, js jetstream.JetStream, names wire.Names, run string) ([]Letter, error) {
	s, err := js.Stream(ctx, names.StreamDead())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", names.StreamDead(), err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("info %s: %w", names.StreamDead(), err)
	}
	var out []Letter
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("get dead letter %d: %w", seq, err)
		}
		l := letter(m)
		if run != "" {
			if _, a, err := names.ParseJobSubject(l.Subject); err != nil || a.Run != run {
				continue
			}
		}
		out = append(out, l)
	}
	return out, nil
}

func letter(m *jetstream.RawStreamMsg) Letter {
	return Letter{Seq: m.Sequence, Time: m.Time, Subject: m.Header.Get(wire.HeaderSubject), Reason: m.Header.Get(wire.HeaderReason), Data: m.Data, Size: len(m.Data)}
}

// ErrHasResult means the dead letter's query already has a final result (the synthetic
// error published when it was dead-lettered) or its row has been emitted: replaying it
// could not change the row.
var ErrHasResult = errors.New("the query already has a final result or its row was emitted; rerun the row in a new run")

// ErrRowWritten means the dead letter's row is already written by the collector while
// its run is still open (its results purged): a replay would pay for a call whose
// result nobody reads.
var ErrRowWritten = errors.New("the row is already written; a replayed call's result would be ignored")

// Replay publishes a dead letter's payload again on its original subject and removes it
// from the deployment's dead-letter stream (names: MQ_DEAD with the default names). It
// refuses (ErrHasResult) when the query already has a final result, and
// (ErrRowWritten) when its row is already written.
func Replay(ctx context.Context, js jetstream.JetStream, names wire.Names, seq uint64) error {
	dead, err := js.Stream(ctx, names.StreamDead())
	if err != nil {
		return fmt.Errorf("open %s: %w", names.StreamDead(), err)
	}
	m, err := dead.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("get dead letter %d: %w", seq, err)
	}
	l := letter(m)
	_, a, err := names.ParseJobSubject(l.Subject)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	in, err := js.Stream(ctx, names.StreamInput())
	if err != nil {
		return fmt.Errorf("open %s: %w", names.StreamInput(), err)
	}
	// A row's input is on MQ_INPUT until its run ends: its input row message, or, for a
	// job that carries its row's data (wire.Job.Data), the run's open record.
	pending := names.InputRowSubject(a.Run, a.Row)
	if wire.RowData(l.Data) != nil {
		pending = names.InputOpenSubject(a.Run)
	}
	if _, err := in.GetLastMsgForSubject(ctx, pending); errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("dead letter %d (%s): %w", seq, l.Subject, ErrHasResult) // emitted: its run's input is purged
	} else if err != nil {
		return fmt.Errorf("look up the row of %s: %w", a, err)
	}
	if err := rowWritten(ctx, js, names, a); err != nil {
		return fmt.Errorf("dead letter %d (%s): %w", seq, l.Subject, err)
	}
	results, err := js.Stream(ctx, names.StreamResults())
	if err != nil {
		return fmt.Errorf("open %s: %w", names.StreamResults(), err)
	}
	if _, err := results.GetLastMsgForSubject(ctx, names.ResultSubject(a.Run, a.Row, a.Query)); err == nil {
		return fmt.Errorf("dead letter %d (%s): %w", seq, l.Subject, ErrHasResult)
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("look up the result of %s: %w", a, err)
	}
	msg := nats.NewMsg(l.Subject)
	msg.Data = l.Data
	msg.Header.Set(wire.HeaderMsgID, "replay."+strconv.FormatUint(seq, 10)+"."+wire.JobKey(a.Run, a.Row, a.Query))
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("republish %s: %w", l.Subject, err)
	}
	if err := dead.DeleteMsg(ctx, seq); err != nil {
		return fmt.Errorf("remove dead letter %d: %w", seq, err)
	}
	return nil
}

// rowWritten returns an error wrapping ErrRowWritten, naming the row, when the collector
// has written the row of a: below the run's watermark in its status (runs bucket), or
// present on MQ_ROWS. A row written in completion order above the watermark is found
// only when the MQ_ROWS sink is on.
func rowWritten(ctx context.Context, js jetstream.JetStream, names wire.Names, a wire.Addr) error {
	runs, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil {
		return fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	e, err := runs.Get(ctx, a.Run)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("read the status of run %s: %w", a.Run, err)
	default:
		var st wire.RunStatus
		if json.Unmarshal(e.Value(), &st) == nil && a.Row < st.Next {
			return fmt.Errorf("row %d of run %s is already written (every row below %d is): %w", a.Row, a.Run, st.Next, ErrRowWritten)
		}
	}
	rows, err := js.Stream(ctx, names.StreamRows())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", names.StreamRows(), err)
	}
	if _, err := rows.GetLastMsgForSubject(ctx, names.RowSubject(a.Run, a.Row)); err == nil {
		return fmt.Errorf("row %d of run %s is already written (on %s): %w", a.Row, a.Run, names.StreamRows(), ErrRowWritten)
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("look up the written row %d of run %s: %w", a.Row, a.Run, err)
	}
	return nil
}
