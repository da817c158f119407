package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// maxDeliveriesAdvisory is the part of the server's advisory we read.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// watchMaxDeliveries dead-letters jobs that reached the consumer's MaxDeliver: after it
// the message stays in the work-queue stream and nobody would ever finish its row. The
// advisories are kept in MQ_ADVISORIES (an advisory sent while no worker runs waits
// there), and the fleet shares one durable consumer: each advisory is handled once,
// and acked only once its job is dead-lettered and answered.
func (w *Worker) watchMaxDeliveries(ctx context.Context) {
	jobs, err := w.js.Stream(ctx, w.names.StreamJobs())
	if err != nil {
		w.log.Error().Err(err).Msg("max-deliveries watch")
		return
	}
	var cons jetstream.Consumer
	err = queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		cons, err = w.js.CreateOrUpdateConsumer(ctx, w.names.StreamAdvisories(), jetstream.ConsumerConfig{
			Durable:     wire.AdvisoryConsumer,
			Description: "workers dead-letter jobs past MaxDeliver",
			AckPolicy:   jetstream.AckExplicitPolicy,
			AckWait:     time.Minute,
		})
		return err
	})
	if err != nil {
		w.log.Error().Err(err).Msg("max-deliveries watch")
		return
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(16, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			w.log.Debug().Err(err).Msg("fetch advisories")
			sleep(ctx, time.Second)
			continue
		}
		for m := range batch.Messages() {
			var a maxDeliveriesAdvisory
			if err := json.Unmarshal(m.Data(), &a); err != nil {
				_ = m.TermWithReason("undecodable advisory")
				continue
			}
			if err := w.deadLetterSeq(ctx, jobs, a); err != nil {
				w.log.Error().Err(err).Uint64("seq", a.StreamSeq).Msg("dead-letter a job past MaxDeliver; retried")
				_ = m.NakWithDelay(5 * time.Second)
				continue
			}
			_ = m.Ack()
		}
	}
}

func (w *Worker) deadLetterSeq(ctx context.Context, jobs jetstream.Stream, a maxDeliveriesAdvisory) error {
	raw, err := jobs.GetMsg(ctx, a.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // already dead-lettered (a redelivered advisory) or done
	}
	if err != nil {
		return fmt.Errorf("get job %d: %w", a.StreamSeq, err)
	}
	reason := fmt.Sprintf("delivered %d times (MaxDeliver)", a.Deliveries)
	alias, addr, subjErr := w.names.ParseJobSubject(raw.Subject)
	if subjErr != nil {
		alias = "unknown"
	}
	dead := nats.NewMsg(w.names.DeadSubject(alias, orUnknown(addr.Run)))
	dead.Data = raw.Data
	dead.Header.Set(wire.HeaderReason, reason)
	dead.Header.Set(wire.HeaderSubject, raw.Subject)
	dead.Header.Set(wire.HeaderMsgID, fmt.Sprintf("dead.%s.%d", alias, a.StreamSeq))
	if _, err := w.js.PublishMsg(ctx, dead); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	if subjErr == nil {
		// The job's calls so far were billed: the result carries them.
		job := wire.Job{Run: addr.Run, Row: addr.Row, Query: addr.Query, Deployment: alias}
		st := w.loadState(ctx, &job)
		res := &wire.Result{V: wire.Version, Run: addr.Run, Row: addr.Row, Query: addr.Query, Worker: w.cfg.Name,
			Error: &wire.Error{Reason: wire.ReasonMaxDeliveries, Message: reason, Details: map[string]any{"deliveries": a.Deliveries}},
			Data:  wire.RowData(raw.Data)}
		st.spent().apply(res)
		if err := w.publishResult(ctx, res); err != nil {
			return err
		}
		defer func() { _ = w.retry.Delete(ctx, wire.JobKey(addr.Run, addr.Row, addr.Query)) }()
	}
	w.m.poison.WithLabelValues(alias).Inc()
	if err := jobs.DeleteMsg(ctx, a.StreamSeq); err != nil {
		return fmt.Errorf("delete job %d: %w", a.StreamSeq, err)
	}
	w.log.Warn().Str("subject", raw.Subject).Uint64("deliveries", a.Deliveries).Msg("job past MaxDeliver dead-lettered")
	return nil
}
