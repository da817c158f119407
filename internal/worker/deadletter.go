package worker

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/wire"
)

// maxDeliveriesAdvisory is the part of the server's advisory we read.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// AdvisorySubject is where the server announces jobs that hit MaxDeliver (any consumer).
const AdvisorySubject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + wire.StreamJobs + ".*"

// watchMaxDeliveries dead-letters jobs that reached the consumer's MaxDeliver: after it
// the message stays in the work-queue stream and nobody would ever finish its row. One
// worker of the fleet handles each advisory (a queue group).
func (w *Worker) watchMaxDeliveries(ctx context.Context) {
	nc := w.js.Conn()
	jobs, err := w.js.Stream(ctx, wire.StreamJobs)
	if err != nil {
		w.log.Error().Err(err).Msg("max-deliveries watch")
		return
	}
	ch := make(chan *nats.Msg, 64)
	sub, err := nc.ChanQueueSubscribe(AdvisorySubject, "mq-advisory", ch)
	if err != nil {
		w.log.Error().Err(err).Msg("max-deliveries watch")
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			var a maxDeliveriesAdvisory
			if err := json.Unmarshal(m.Data, &a); err != nil {
				continue
			}
			if err := w.deadLetterSeq(ctx, jobs, a); err != nil {
				w.log.Error().Err(err).Uint64("seq", a.StreamSeq).Msg("dead-letter a job past MaxDeliver")
			}
		}
	}
}

func (w *Worker) deadLetterSeq(ctx context.Context, jobs jetstream.Stream, a maxDeliveriesAdvisory) error {
	raw, err := jobs.GetMsg(ctx, a.StreamSeq)
	if err != nil {
		return fmt.Errorf("get job %d: %w", a.StreamSeq, err)
	}
	reason := fmt.Sprintf("delivered %d times (MaxDeliver)", a.Deliveries)
	alias, addr, subjErr := wire.ParseJobSubject(raw.Subject)
	if subjErr != nil {
		alias = "unknown"
	}
	dead := nats.NewMsg(wire.DeadSubject(alias, orUnknown(addr.Run)))
	dead.Data = raw.Data
	dead.Header.Set(wire.HeaderReason, reason)
	dead.Header.Set(wire.HeaderSubject, raw.Subject)
	dead.Header.Set(wire.HeaderMsgID, fmt.Sprintf("dead.%s.%d", alias, a.StreamSeq))
	if _, err := w.js.PublishMsg(ctx, dead); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	if subjErr == nil {
		res := &wire.Result{V: wire.Version, Run: addr.Run, Row: addr.Row, Query: addr.Query, Worker: w.cfg.Name,
			Error: &wire.Error{Reason: wire.ReasonMaxDeliveries, Message: reason, Details: map[string]any{"deliveries": a.Deliveries}}}
		if err := w.publishResult(ctx, res); err != nil {
			return err
		}
	}
	w.m.poison.WithLabelValues(alias).Inc()
	if err := jobs.DeleteMsg(ctx, a.StreamSeq); err != nil {
		return fmt.Errorf("delete job %d: %w", a.StreamSeq, err)
	}
	w.log.Warn().Str("subject", raw.Subject).Uint64("deliveries", a.Deliveries).Msg("job past MaxDeliver dead-lettered")
	return nil
}
