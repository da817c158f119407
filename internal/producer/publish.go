package producer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// publishPlan publishes a row's jobs, then the row once its jobs are acknowledged (the
// publisher holds rows back until then): an input row on the bus means every job of it
// is too, which is what a resuming producer relies on. With careful set (rows a crashed
// producer or a redelivered submission may have published in part), it first looks for
// each message on the bus and publishes only what is missing, so no job is ever called
// twice. The plan must have been through fit.
//
// A row carried in its first job (plan.carried: a run in input order) has no input row
// message to find: a job neither queued nor answered may also be one whose row is
// already written and its result purged, which the run's watermark then covers (read
// after the lookups: the collector publishes its watermark before it purges).
func publishPlan(ctx context.Context, pub *publisher, run string, pl plan, careful bool) (int, error) {
	if careful && pl.rowMsg != nil {
		there, err := pub.exists(ctx, pub.names.StreamInput(), pub.names.InputRowSubject(run, pl.row.Row))
		if err != nil {
			return 0, err
		}
		if there {
			return len(pl.jobs), nil
		}
	}
	var missing []bool // careful: the jobs neither queued nor answered
	if careful {
		missing = make([]bool, len(pl.jobs))
		for i := range pl.jobs {
			j := &pl.jobs[i]
			queued, err := pub.exists(ctx, pub.names.StreamJobs(), pl.jobMsgs[i].Subject)
			if err != nil {
				return 0, err
			}
			answered, err := pub.exists(ctx, pub.names.StreamResults(), pub.names.ResultSubject(run, j.Row, j.Query))
			if err != nil {
				return 0, err
			}
			missing[i] = !queued && !answered
		}
		if pl.carried() && slices.Contains(missing, true) {
			written, err := pub.written(ctx, run, pl.row.Row)
			if err != nil {
				return 0, err
			}
			if written {
				return len(pl.jobs), nil
			}
		}
	}
	for i := range pl.jobs {
		if careful && !missing[i] {
			continue
		}
		if err := pub.async(ctx, pl.jobMsgs[i]); err != nil {
			return i, err
		}
	}
	if pl.rowMsg != nil {
		pub.later(pl.rowMsg)
	}
	return len(pl.jobs), nil
}

// publisher publishes with a bounded window of unacknowledged messages; a message that
// a first-writer-wins stream already holds counts as published. Input rows wait (later)
// until every message published before them is acknowledged.
//
// Jobs and rows go out in fast-ingest batches of up to batchMax messages (a few acks
// per batch, not one per message: two NATS messages a query less at one query per row;
// unlike an atomic batch, which the server stages in a store of its own and copies at
// the commit, a fast batch is stored as it comes). A batch that fails in any way is
// published again one message at a time (each with its Nats-Msg-Id, and on a
// first-writer-wins stream, so whatever of it was stored is not stored twice); a
// stream that takes no fast batches (created by an older version, by hand without
// allow_batched, or on a server before 2.14) turns batching off.
type publisher struct {
	js      jetstream.JetStream
	names   wire.Names
	window  int
	log     zerolog.Logger
	pending []pending
	out     int            // messages in pending
	rows    []*nats.Msg    // held back until the jobs before them are acknowledged
	open    []*nats.Msg    // the batch being filled
	opened  time.Time      // when its first message came
	fill    int            // the open batch is sent at this size (batchFirst, doubling to batchMax)
	single  bool           // batches are off: publish one message at a time
	checked bool           // the streams were asked whether they take batches
	batches sync.WaitGroup // batch publishes still running (drain)
}

// batchMax is the most messages in one batch (a batch costs a subscription, a first
// ack and a commit ack, so small ones cost a query more). A publisher's first batch
// holds at most batchFirst, each next one twice the last up to batchMax: the first
// jobs of a run go out within a millisecond, not once a thousand rows are read, and a
// run's steady state goes out in full batches. batchLinger bounds how long a slowly
// read input's batch waits to fill; a wait (the window, a checkpoint, the flow window,
// the end of the input) sends it at once.
const (
	batchMax    = 1000
	batchFirst  = 64
	batchLinger = 25 * time.Millisecond
)

type pending struct {
	msg     *nats.Msg
	fut     jetstream.PubAckFuture
	batch   []*nats.Msg // or a batch,
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
	m.Header.Set(wire.HeaderMsgID, id) // the only header: every record and job carries "v" in its body
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
	if !p.checked {
		p.checked = true
		p.single = !p.streamsTakeBatches(ctx)
	}
	if len(b) == 1 || p.single {
		for _, m := range b {
			if err := p.send(ctx, m); err != nil {
				return err
			}
		}
		return nil
	}
	done := make(chan error, 1)
	p.batches.Add(1)
	go func() {
		defer p.batches.Done()
		done <- p.publishBatch(b)
	}()
	p.pending = append(p.pending, pending{batch: b, done: done})
	p.out += len(b)
	return nil
}

// publishBatch publishes b as one fast-ingest batch and returns once the server has
// committed it (or failed it: then what of it is stored is not known).
func (p *publisher) publishBatch(b []*nats.Msg) error {
	timeout := p.js.Options().DefaultTimeout
	// The server's refusal of a batch's first message reaches only the error handler
	// (orbit.go v0.3.2), and the first add waits out its ack timeout: the refusal is
	// returned then, so that batchesRefused sees it.
	var mu sync.Mutex
	var refused error
	onErr := jetstreamext.WithFastPublisherErrorHandler(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if refused == nil {
			refused = err
		}
	})
	fp, err := jetstreamext.NewFastPublisher(p.js, jetstreamext.FastPublishFlowControl{Flow: batchMax, AckTimeout: timeout}, onErr)
	if err != nil {
		return err
	}
	for _, m := range b[:len(b)-1] {
		if _, err := fp.AddMsg(m); err != nil {
			mu.Lock()
			defer mu.Unlock()
			if refused != nil {
				return fmt.Errorf("%w (%w)", refused, err)
			}
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ack, err := fp.CommitMsg(ctx, b[len(b)-1])
	if err != nil {
		return err
	}
	// A message the stream rejects (full, say) ends the batch there, and the commit
	// still succeeds: its count says how much of the batch was stored.
	mu.Lock()
	defer mu.Unlock()
	if ack.BatchSize != uint64(len(b)) || refused != nil {
		return fmt.Errorf("batch of %d stored %d: %v", len(b), ack.BatchSize, refused)
	}
	return nil
}

// streamsTakeBatches reports whether both streams the publisher writes to take fast
// batches, as the server states their configuration: a server before 2.14 does not
// know allow_batched and leaves it out, so it gets one message at a time. A stream it
// cannot look up is taken as taking none (a wrong guess costs speed, not messages).
func (p *publisher) streamsTakeBatches(ctx context.Context) bool {
	for _, name := range []string{p.names.StreamJobs(), p.names.StreamInput()} {
		s, err := p.js.Stream(ctx, name)
		if err != nil || !s.CachedInfo().Config.AllowBatchPublish {
			p.log.Info().Err(err).Str("stream", name).Msg("stream takes no fast batches: publishing one message at a time")
			return false
		}
	}
	return true
}

// codeBatchDisabled is nats-server's JSBatchPublishDisabledErr: the stream takes no
// fast batches (orbit.go v0.3.2 names other numbers for it).
const codeBatchDisabled jetstream.ErrorCode = 10205

// batchesRefused reports whether err says the stream takes no fast batches.
func batchesRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == codeBatchDisabled ||
		apiErr.ErrorCode == jetstreamext.JSErrCodeFastBatchNotEnabled)
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
		p.log.Info().Err(pd.err).Msg("stream takes no fast batches: publishing one message at a time")
	}
	for len(pd.batch) > 0 {
		m := pd.batch[0]
		m.Reply = "" // the message alone, not a batch's
		if err := p.publishSync(ctx, m); err != nil {
			return err
		}
		pd.batch = pd.batch[1:]
	}
	return nil
}

// drain returns once no batch publish runs any more: one that a cancelled wait left
// behind ends with the server's answer, or after its ack timeout when none comes (a
// fast batch's first add cannot be cancelled), and must not outlive its publisher.
func (p *publisher) drain() { p.batches.Wait() }

// reset forgets every publish not yet settled (their submissions are redelivered and
// published again, carefully).
func (p *publisher) reset() {
	p.pending, p.rows, p.open, p.out = p.pending[:0], p.rows[:0], nil, 0
}

// written reports whether row is below its run's watermark (wire.RunStatus, written by
// the collector): written, its results possibly purged.
func (p *publisher) written(ctx context.Context, run string, row int) (bool, error) {
	kv, err := p.js.KeyValue(ctx, p.names.BucketRuns())
	if err != nil {
		return false, fmt.Errorf("open kv %s: %w", p.names.BucketRuns(), err)
	}
	st, err := status.Read(ctx, kv, run)
	return err == nil && st != nil && row < st.Next, err
}

// exists reports whether a stream holds a message on subject.
func (p *publisher) exists(ctx context.Context, stream, subject string) (bool, error) {
	m, err := lastMsg(ctx, p.js, stream, subject)
	return m != nil, err
}

// lastMsg returns the last message of subject in stream, nil when there is none.
func lastMsg(ctx context.Context, js jetstream.JetStream, stream, subject string) (*jetstream.RawStreamMsg, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", stream, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", subject, err)
	}
	return m, nil
}
