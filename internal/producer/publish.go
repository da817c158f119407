package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// publishPlan publishes a row's jobs, then the row once its jobs are acknowledged (the
// publisher holds rows back until then): an input row on the bus means every job of it
// is too, which is what a resuming producer relies on. With careful set (rows a crashed
// producer or a redelivered submission may have published in part), it first looks for
// each message on the bus and publishes only what is missing, so no job is ever called
// twice. The plan must have been through fit.
func publishPlan(ctx context.Context, pub *publisher, run string, pl plan, careful bool) (int, error) {
	rowSubj := pub.names.InputRowSubject(run, pl.row.Row)
	if careful {
		there, err := pub.exists(ctx, pub.names.StreamInput(), rowSubj)
		if err != nil {
			return 0, err
		}
		if there {
			return len(pl.jobs), nil
		}
	}
	for i := range pl.jobs {
		j := &pl.jobs[i]
		if careful {
			queued, err := pub.exists(ctx, pub.names.StreamJobs(), pl.jobMsgs[i].Subject)
			if err != nil {
				return i, err
			}
			answered, err := pub.exists(ctx, pub.names.StreamResults(), pub.names.ResultSubject(run, j.Row, j.Query))
			if err != nil {
				return i, err
			}
			if queued || answered {
				continue
			}
		}
		if err := pub.async(ctx, pl.jobMsgs[i]); err != nil {
			return i, err
		}
	}
	pub.later(pl.rowMsg)
	return len(pl.jobs), nil
}

// publisher publishes with a bounded window of unacknowledged messages; a message that
// a first-writer-wins stream already holds counts as published. Input rows wait (later)
// until every message published before them is acknowledged.
//
// Jobs and rows go out in atomic batches of up to batchMax messages (one ack per batch,
// not per message: two NATS messages a query less at one query per row). A batch the
// server refuses or does not answer is published again one message at a time (each
// with its Nats-Msg-Id, so nothing is stored twice); a stream that takes no batches
// (created by an older version, or by hand without allow_atomic) turns batching off.
type publisher struct {
	js      jetstream.JetStream
	names   wire.Names
	window  int
	log     zerolog.Logger
	pending []pending
	out     int         // messages in pending
	rows    []*nats.Msg // held back until the jobs before them are acknowledged
	open    []*nats.Msg // the batch being filled
	opened  time.Time   // when its first message came
	fill    int         // the open batch is sent at this size (batchFirst, doubling to batchMax)
	single  bool        // batches are off: publish one message at a time
}

// batchMax is the most messages in one atomic batch (the server's limit is 1000). A
// publisher's first batch holds at most batchFirst, each next one twice the last up to
// batchMax: the first jobs of a run go out within a millisecond, not once a thousand
// rows are read, and a run's steady state goes out in full batches (the server stages
// each atomic batch in a store of its own, created and synced per batch: ~1 ms of its
// CPU, 20 µs a query in batches of ~140). batchLinger bounds how long a slowly read
// input's batch waits to fill; a wait (the window, a checkpoint, the flow window, the
// end of the input) sends it at once.
const (
	batchMax    = 1000
	batchFirst  = 64
	batchLinger = 25 * time.Millisecond
)

type pending struct {
	msg     *nats.Msg
	fut     jetstream.PubAckFuture
	batch   []*nats.Msg // or an atomic batch,
	done    chan error  // and its outcome
	settled bool        // the outcome was read (the channels yield it once)
	err     error       // that outcome
}

func newMsg(subject, id string, v any) (*nats.Msg, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", subject, err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(wire.HeaderMsgID, id)
	m.Header.Set(wire.HeaderSchema, "1")
	return m, nil
}

func (p *publisher) sync(ctx context.Context, subject, id string, v any) error {
	m, err := newMsg(subject, id, v)
	if err != nil {
		return err
	}
	return p.publishSync(ctx, m)
}

// publishSync publishes m and waits for it to be stored; a full stream is waited out.
func (p *publisher) publishSync(ctx context.Context, m *nats.Msg) error {
	return queue.RetryPublish(ctx, p.log, p.names, m.Subject, func(ctx context.Context) error {
		_, err := p.js.PublishMsg(ctx, m)
		return err
	})
}

// async publishes m without waiting; past the window it settles what is out first.
func (p *publisher) async(ctx context.Context, m *nats.Msg) error {
	if p.single {
		if err := p.send(ctx, m); err != nil {
			return err
		}
	} else {
		if len(p.open) == 0 {
			p.opened = time.Now()
		}
		if p.fill == 0 {
			p.fill = batchFirst
		}
		if p.open = append(p.open, m); len(p.open) >= p.fill || time.Since(p.opened) >= batchLinger {
			p.fill = min(2*p.fill, batchMax)
			if err := p.flush(ctx); err != nil {
				return err
			}
		}
	}
	if p.out+len(p.open) >= p.window {
		return p.wait(ctx)
	}
	return nil
}

// flush publishes the open batch without waiting (its outcome is settled later).
func (p *publisher) flush(ctx context.Context) error {
	if len(p.open) == 0 {
		return nil
	}
	b := p.open
	p.open = nil
	if len(b) == 1 || p.single {
		for _, m := range b {
			if err := p.send(ctx, m); err != nil {
				return err
			}
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := jetstreamext.PublishMsgBatch(context.Background(), p.js, b, jetstreamext.BatchFlowControl{AckTimeout: p.js.Options().DefaultTimeout})
		done <- err
	}()
	p.pending = append(p.pending, pending{batch: b, done: done})
	p.out += len(b)
	return nil
}

// batchesRefused reports whether err says the stream takes no atomic batches.
func batchesRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstreamext.JSErrCodeBatchPublishNotEnabled ||
		apiErr.ErrorCode == jetstreamext.JSErrCodeBatchPublishUnsupportedHeader || apiErr.ErrorCode == jetstreamext.JSErrCodeBatchPublishExceedsLimit)
}

func (p *publisher) send(ctx context.Context, m *nats.Msg) error {
	fut, err := p.js.PublishMsgAsync(m)
	if err != nil {
		// Too many pending or disconnected: settle what is out, then publish synchronously.
		if werr := p.settle(ctx); werr != nil {
			return werr
		}
		return p.publishSync(ctx, m)
	}
	p.pending = append(p.pending, pending{msg: m, fut: fut})
	p.out++
	return nil
}

// later holds an input row back until wait has every message before it acknowledged.
func (p *publisher) later(m *nats.Msg) { p.rows = append(p.rows, m) }

// wait settles every pending publish, then publishes the rows held back and settles
// them too. Failed publishes (other than first-writer-wins) are retried synchronously,
// a full stream waited out, so nothing is dropped. After an error (ctx ended) what is
// not settled stays, and the next wait takes up where this one stopped.
func (p *publisher) wait(ctx context.Context) error {
	for {
		if err := p.flush(ctx); err != nil {
			return err
		}
		if err := p.settle(ctx); err != nil {
			return err
		}
		if len(p.rows) == 0 {
			return nil
		}
		for len(p.rows) > 0 {
			if p.single {
				if err := p.send(ctx, p.rows[0]); err != nil {
					return err
				}
			} else if p.open = append(p.open, p.rows[0]); len(p.open) >= batchMax {
				if err := p.flush(ctx); err != nil {
					return err
				}
			}
			p.rows = p.rows[1:]
		}
	}
}

// settle waits for every pending publish, republishing the failed ones (a failed batch
// one message at a time).
func (p *publisher) settle(ctx context.Context) error {
	for i := range p.pending {
		pd := &p.pending[i]
		if !pd.settled {
			var ok <-chan *jetstream.PubAck
			var failed <-chan error = pd.done
			if pd.fut != nil {
				ok, failed = pd.fut.Ok(), pd.fut.Err()
			}
			select {
			case <-ok:
			case pd.err = <-failed:
			case <-ctx.Done():
				p.keep(i)
				return ctx.Err()
			}
			pd.settled = true
		}
		if err := p.republish(ctx, pd); err != nil {
			p.keep(i)
			return err
		}
	}
	p.pending, p.out = p.pending[:0], 0
	return nil
}

// keep leaves the pending publishes from i on for the next settle, and counts their
// messages (a batch published again in part counts what is left of it).
func (p *publisher) keep(i int) {
	p.pending, p.out = p.pending[i:], 0
	for _, pd := range p.pending {
		p.out += max(len(pd.batch), 1)
	}
}

// republish publishes what a settled publish did not store.
func (p *publisher) republish(ctx context.Context, pd *pending) error {
	if pd.err == nil {
		return nil
	}
	if pd.batch == nil {
		if queue.IsFirstWriterLost(pd.err) {
			return nil
		}
		return p.publishSync(ctx, pd.msg)
	}
	if batchesRefused(pd.err) && !p.single {
		p.single = true
		p.log.Info().Err(pd.err).Msg("stream takes no atomic batches: publishing one message at a time")
	}
	for len(pd.batch) > 0 {
		m := pd.batch[0]
		for _, h := range []string{jetstreamext.BatchIDHeader, jetstreamext.BatchSeqHeader, jetstreamext.BatchCommitHeader} {
			m.Header.Del(h) // the message alone, not a batch's
		}
		if err := p.publishSync(ctx, m); err != nil {
			return err
		}
		pd.batch = pd.batch[1:]
	}
	return nil
}

// reset forgets every publish not yet settled (their submissions are redelivered and
// published again, carefully).
func (p *publisher) reset() {
	p.pending, p.rows, p.open, p.out = p.pending[:0], p.rows[:0], nil, 0
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
