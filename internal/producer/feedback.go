package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// What the service tells a submitter (docs/WIRE.md, "Submitting a run to the producer
// service"): each outcome is an event on the run's status subject (and on the record's
// Mq-Reply-To inbox, if it named one), and the run's submission state is kept in the
// runs bucket (wire.Submission), which is also how a reused run id is told from a
// redelivered open record.

// event publishes a run's event on its status subject, and to the record's reply inbox.
// Events are core NATS: a submitter not subscribed misses them (the runs bucket keeps
// the state), and one may repeat when its record is redelivered.
func (s *service) event(msg jetstream.Msg, ev wire.SubmitEvent) {
	b := s.encodeEvent(&ev)
	if err := s.nc.Publish(s.pub.names.StatusSubject(ev.Run), b); err != nil {
		s.log.Debug().Err(err).Str("run", ev.Run).Msg("publish submission event")
	}
	s.replyBytes(msg, b)
}

// reply publishes an event to the record's reply inbox only (a record naming no run).
func (s *service) reply(msg jetstream.Msg, ev wire.SubmitEvent) {
	s.replyBytes(msg, s.encodeEvent(&ev))
}

func (s *service) encodeEvent(ev *wire.SubmitEvent) []byte {
	ev.V, ev.Time = wire.Version, time.Now().UTC()
	b, _ := json.Marshal(ev)
	return b
}

// replyBytes publishes to the record's Mq-Reply-To header, only an inbox: the service
// may publish on input and job subjects, and a submitter must not make it publish there.
func (s *service) replyBytes(msg jetstream.Msg, b []byte) {
	h := msg.Headers()
	if h == nil {
		return
	}
	to := h.Get(wire.HeaderReplyTo)
	if !strings.HasPrefix(to, "_INBOX.") || strings.ContainsAny(to, " *>") {
		return
	}
	if err := s.nc.Publish(to, b); err != nil {
		s.log.Debug().Err(err).Str("reply_to", to).Msg("reply to a submitted record")
	}
}

// door refuses a record whose run id is not this submission's to use, with a reason:
// a finished run's (finished_run, as the file producer refuses it); for an open record,
// a run that exists already (reused_run_id, claim); for a row or seal, a run published
// without the service (reused_run_id); and a row beyond its run's seal
// (row_beyond_seal), which the collector would never write; and a row or seal of a
// run whose open record was rejected (run_rejected). A failed read is an error
// with no reason (the record is retried).
func (s *service) door(ctx context.Context, sub *submission) (reason string, err error) {
	st := sub.st
	// Read once per run, and again at every open record: a run id reused after its run
	// finished is seen at its new open record.
	if !st.checked || sub.kind == wire.InputOpen {
		var usage *UsageError
		err := refuseFinished(ctx, s.runs, sub.run)
		if err != nil && !errors.As(err, &usage) {
			return "", err
		}
		st.finished = err != nil
		st.checked = true
	}
	if st.finished {
		return RejectFinishedRun, fmt.Errorf("run %s already finished; a reused run id is refused (use a new one)", sub.run)
	}
	if sub.kind == wire.InputOpen {
		return s.claim(ctx, sub)
	}
	rec, err := s.submissionState(ctx, sub)
	if err != nil {
		return "", err
	}
	switch {
	case rec == nil && st.foreign:
		return RejectReusedRunID, fmt.Errorf("run %s exists already, published without the producer service; a reused run id is refused (use a new one)", sub.run)
	case rec != nil && rec.State == wire.SubmitRejected:
		return RejectRunRejected, fmt.Errorf("run %s was rejected (%s: %s); submit it again from its open record", sub.run, rec.Reason, rec.Message)
	case rec != nil && rec.State == wire.SubmitSealed && sub.kind == wire.InputRow && sub.row >= rec.Rows:
		return RejectRowBeyondSeal, fmt.Errorf("run %s is sealed with %d rows: row %d is not part of it", sub.run, rec.Rows, sub.row)
	}
	return "", nil
}

// claim makes an open record its run's submission (a new submission record, accepted),
// or refuses it (reused_run_id) when the run id is taken: another open record was
// accepted for it, or the run was published without the service (its open record is
// on the bus, or it has a status). A redelivery of the accepted open record is the same
// submission; a run id whose earlier submission was rejected may be submitted again.
func (s *service) claim(ctx context.Context, sub *submission) (reason string, err error) {
	var seq uint64
	if md, err := sub.msg.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	for range 3 {
		rec, rev, err := s.loadSubmission(ctx, sub.run)
		if err != nil {
			return "", err
		}
		if rec != nil && rec.State != wire.SubmitRejected && rec.OpenSeq != 0 {
			if rec.OpenSeq == seq {
				return "", nil // redelivered
			}
			return RejectReusedRunID, fmt.Errorf("run %s was submitted already (pipeline %s, %s since %s); a reused run id is refused (use a new one)",
				sub.run, rec.Pipeline, rec.State, rec.Updated.Format(time.RFC3339))
		}
		if rec == nil {
			taken, err := s.runExists(ctx, sub.run)
			if err != nil {
				return "", err
			}
			if taken {
				sub.st.foreign = true
				return RejectReusedRunID, fmt.Errorf("run %s exists already, published without the producer service; a reused run id is refused (use a new one)", sub.run)
			}
			rec = &wire.Submission{}
		}
		if rec.State == "" || rec.State == wire.SubmitRejected {
			rec.State, rec.Reason, rec.Message = wire.SubmitAccepted, "", ""
		}
		// A seal handled before its open record left a record without OpenSeq: take it.
		rec.Pipeline, rec.OpenSeq, rec.Updated = sub.name, seq, time.Now().UTC()
		b, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = s.runs.Create(ctx, wire.SubmissionKey(sub.run), b)
		} else {
			_, err = s.runs.Update(ctx, wire.SubmissionKey(sub.run), b, rev)
		}
		if err == nil {
			sub.st.subRead = time.Time{}
			return "", nil
		}
		if !queue.IsKeyExists(err) {
			return "", fmt.Errorf("write submission of run %s: %w", sub.run, err)
		}
	}
	return "", fmt.Errorf("write submission of run %s: lost the compare-and-set 3 times", sub.run)
}

// runExists reports whether a run was published without the service: its open record
// is on MQ_INPUT, or the collector has a status for it.
func (s *service) runExists(ctx context.Context, run string) (bool, error) {
	there, err := s.pub.exists(ctx, s.pub.names.StreamInput(), s.pub.names.InputOpenSubject(run))
	if err != nil || there {
		return there, err
	}
	_, err = s.runs.Get(ctx, run)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read status of run %s: %w", run, err)
	}
	return true, nil
}

// submissionState returns the run's submission record, read at most once a second; a
// run without one is looked up once (runExists) to tell a run published without the
// service (foreign) from one whose open record is not handled yet.
func (s *service) submissionState(ctx context.Context, sub *submission) (*wire.Submission, error) {
	st := sub.st
	if time.Since(st.subRead) < serviceControlFreshness {
		return st.sub, nil
	}
	rec, _, err := s.loadSubmission(ctx, sub.run)
	if err != nil {
		return nil, err
	}
	if rec == nil && !st.foreignChecked {
		if st.foreign, err = s.runExists(ctx, sub.run); err != nil {
			return nil, err
		}
		st.foreignChecked = true
	}
	st.sub, st.subRead = rec, time.Now()
	return rec, nil
}

// loadSubmission reads a run's submission record and its revision (nil, 0: none).
func (s *service) loadSubmission(ctx context.Context, run string) (*wire.Submission, uint64, error) {
	return loadSubmission(ctx, s.runs, run)
}

// loadSubmission reads a run's submission record from the runs bucket and its revision
// (nil, 0: none).
func loadSubmission(ctx context.Context, runs jetstream.KeyValue, run string) (*wire.Submission, uint64, error) {
	e, err := runs.Get(ctx, wire.SubmissionKey(run))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read submission of run %s: %w", run, err)
	}
	var rec wire.Submission
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode submission of run %s: %w", run, err)
	}
	return &rec, e.Revision(), nil
}

// updateSubmission changes a run's submission record by compare-and-set (creating it
// when there is none); change returns false to leave it as it is.
func (s *service) updateSubmission(ctx context.Context, run string, change func(*wire.Submission) bool) error {
	for range 5 {
		rec, rev, err := s.loadSubmission(ctx, run)
		if err != nil {
			return err
		}
		if rec == nil {
			rec = &wire.Submission{}
		}
		if !change(rec) {
			return nil
		}
		rec.Updated = time.Now().UTC()
		b, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = s.runs.Create(ctx, wire.SubmissionKey(run), b)
		} else {
			_, err = s.runs.Update(ctx, wire.SubmissionKey(run), b, rev)
		}
		if err == nil || !queue.IsKeyExists(err) {
			if err != nil {
				return fmt.Errorf("write submission of run %s: %w", run, err)
			}
			return nil
		}
	}
	return fmt.Errorf("write submission of run %s: lost the compare-and-set 5 times", run)
}

// recordRejected keeps a rejected open record's reason in the runs bucket, unless the
// run id belongs to a submission that was accepted (never overwritten). Advisory: a
// failure is logged.
func (s *service) recordRejected(ctx context.Context, run string, ev wire.SubmitEvent) {
	err := s.updateSubmission(ctx, run, func(r *wire.Submission) bool {
		if r.State != "" && r.State != wire.SubmitRejected {
			return false
		}
		*r = wire.Submission{State: wire.SubmitRejected, Pipeline: ev.Pipeline, Reason: ev.Reason, Message: ev.Message}
		return true
	})
	if err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Str("run", run).Msg("record a rejected submission")
	}
}

// rowRejected reports a submitted row that became an error row (malformed, failed to
// render, too large): an event naming the row, its reason and field, kept in the run's
// submission record too (the first MaxRowErrors rows).
func (s *service) rowRejected(ctx context.Context, sub *submission, e *wire.Error) {
	row := sub.row
	ev := wire.SubmitEvent{Run: sub.run, Pipeline: sub.name, State: wire.SubmitRowRejected, Reason: e.Reason, Message: e.Message,
		Subject: sub.msg.Subject(), Row: &row}
	if f, ok := e.Details["field"].(string); ok {
		ev.Field = f
	}
	s.event(sub.msg, ev)
	ev.Subject = ""
	err := s.updateSubmission(ctx, sub.run, func(r *wire.Submission) bool {
		if len(r.RowErrors) >= wire.MaxRowErrors {
			return false
		}
		for _, re := range r.RowErrors {
			if re.Row != nil && *re.Row == row {
				return false // a redelivered row
			}
		}
		r.RowErrors = append(r.RowErrors, ev)
		return true
	})
	if err != nil && ctx.Err() == nil {
		s.log.Warn().Err(err).Str("run", sub.run).Int("row", row).Msg("record a rejected row")
	}
}
