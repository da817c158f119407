package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/queue"
)

// puller pulls one consumer's messages over one long-lived inbox subscription: a
// no-wait pull request per fetch, sized to the permits taken, answered on the same
// inbox. jetstream's FetchNoWait subscribes and unsubscribes an inbox per call.
// A puller is used by one goroutine (its deployment's fetch loop).
type puller struct {
	nc      *nats.Conn
	subject string // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
	size    int    // the largest batch asked for: the inbox channel holds it all
	sub     *nats.Subscription
	inbox   string
	msgs    chan *nats.Msg
	// pending is the consumer's backlog as the last pull read it, at read: the jobs
	// queued after the last one delivered, or 0 when the server had none (-1: not
	// pulled yet).
	pending int
	read    time.Time
}

// pullTimeout bounds the wait for the answer to one no-wait pull request (answered at
// once by a live server).
const pullTimeout = 5 * time.Second

func newPuller(nc *nats.Conn, stream, consumer string, size int) *puller {
	return &puller{nc: nc, subject: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + consumer, size: size, pending: -1}
}

func (p *puller) subscribe() error {
	p.close()
	// Not NewRespInbox: the request mux would take these messages too, and hand one to
	// a pending request whose reply it cannot match.
	p.inbox = nats.NewInbox()
	p.msgs = make(chan *nats.Msg, p.size+16)
	sub, err := p.nc.ChanSubscribe(p.inbox, p.msgs)
	if err != nil {
		return fmt.Errorf("pull inbox: %w", err)
	}
	p.sub = sub
	return nil
}

// close drops the subscription: a message still on its way to it is not lost, it is
// redelivered after AckWait.
func (p *puller) close() {
	if p.sub != nil {
		_ = p.sub.Unsubscribe()
		p.sub = nil
	}
}

// notePending reads the consumer's backlog from the last message a pull delivered
// (nil: none, the backlog stays as it was read).
func (p *puller) notePending(last *nats.Msg) {
	if last == nil {
		return
	}
	if md, err := last.Metadata(); err == nil {
		p.pending, p.read = int(md.NumPending), time.Now()
	}
}

// errPullStatus is a pull request answered by an error status (the consumer is gone,
// no responders, ...).
var errPullStatus = errors.New("pull request failed")

// fetch asks for up to n messages that are there now and hands each to start. It
// returns when n came, or the server said there are no more (404/408).
func (p *puller) fetch(ctx context.Context, n int, start func(jetstream.Msg)) (int, error) {
	return p.pull(ctx, n, 0, start)
}

// pull asks for up to n messages, waiting up to expires for them to come (0: only those
// there now), and hands each to start as it comes.
func (p *puller) pull(ctx context.Context, n int, expires time.Duration, start func(jetstream.Msg)) (int, error) {
	if n > p.size {
		n = p.size
	}
	if p.sub == nil || !p.sub.IsValid() {
		if err := p.subscribe(); err != nil {
			return 0, err
		}
	}
	req := `{"batch":` + strconv.Itoa(n) + `,"no_wait":true}`
	if expires > 0 {
		req = `{"batch":` + strconv.Itoa(n) + `,"expires":` + strconv.FormatInt(expires.Nanoseconds(), 10) + `}`
	}
	if err := p.nc.PublishRequest(p.subject, p.inbox, []byte(req)); err != nil {
		return 0, fmt.Errorf("pull request: %w", err)
	}
	timer := time.NewTimer(pullTimeout + expires)
	defer timer.Stop()
	got := 0
	var last *nats.Msg
	defer func() { p.notePending(last) }()
	for got < n {
		select {
		case m := <-p.msgs:
			if len(m.Data) == 0 && m.Header.Get("Status") != "" {
				switch status := m.Header.Get("Status"); status {
				case "404", "408": // no more messages now
					p.pending, p.read, last = 0, time.Now(), nil
					return got, nil
				case "100": // a heartbeat: not asked for, ignored
					continue
				default:
					return got, fmt.Errorf("%w: %s %s", errPullStatus, status, m.Header.Get("Description"))
				}
			}
			start(&pulledMsg{m: m, nc: p.nc})
			last = m
			got++
		case <-timer.C:
			p.close() // late answers go nowhere: redelivered after AckWait
			return got, fmt.Errorf("pull request: no answer in %s", pullTimeout)
		case <-ctx.Done():
			p.close()
			return got, ctx.Err()
		}
	}
	return got, nil
}

// pulledMsg is a job delivered to a puller's inbox, with the jetstream.Msg methods the
// worker uses: acknowledgements are plain publishes to the reply subject, as in jetstream.
type pulledMsg struct {
	m     *nats.Msg
	nc    *nats.Conn
	acked atomic.Bool
}

var _ jetstream.Msg = (*pulledMsg)(nil)

func (p *pulledMsg) Metadata() (*jetstream.MsgMetadata, error) {
	md, err := p.m.Metadata()
	if err != nil {
		return nil, err
	}
	return &jetstream.MsgMetadata{
		Sequence:     jetstream.SequencePair{Stream: md.Sequence.Stream, Consumer: md.Sequence.Consumer},
		NumDelivered: md.NumDelivered, NumPending: md.NumPending, Timestamp: md.Timestamp,
		Stream: md.Stream, Consumer: md.Consumer, Domain: md.Domain,
	}, nil
}

func (p *pulledMsg) Data() []byte         { return p.m.Data }
func (p *pulledMsg) Headers() nats.Header { return p.m.Header }
func (p *pulledMsg) Subject() string      { return p.m.Subject }
func (p *pulledMsg) Reply() string        { return p.m.Reply }

// final sends an acknowledgement that ends the delivery, once.
func (p *pulledMsg) final(body string) error {
	if !p.acked.CompareAndSwap(false, true) {
		return jetstream.ErrMsgAlreadyAckd
	}
	return p.nc.Publish(p.m.Reply, []byte(body))
}

func (p *pulledMsg) Ack() error { return p.final("+ACK") }

func (p *pulledMsg) DoubleAck(ctx context.Context) error {
	if !p.acked.CompareAndSwap(false, true) {
		return jetstream.ErrMsgAlreadyAckd
	}
	_, err := p.nc.RequestWithContext(ctx, p.m.Reply, []byte("+ACK"))
	return err
}

func (p *pulledMsg) Nak() error { return p.final("-NAK") }

func (p *pulledMsg) NakWithDelay(delay time.Duration) error {
	return p.final(`-NAK {"delay":` + strconv.FormatInt(delay.Nanoseconds(), 10) + `}`)
}

func (p *pulledMsg) InProgress() error {
	if p.acked.Load() {
		return jetstream.ErrMsgAlreadyAckd
	}
	return p.nc.Publish(p.m.Reply, []byte("+WPI"))
}

func (p *pulledMsg) Term() error { return p.final("+TERM") }

func (p *pulledMsg) TermWithReason(reason string) error { return p.final("+TERM " + reason) }

// pullers are a deployment's pullers, one per run in its rotation, owned by its fetch
// loop: a run that leaves the rotation (dormant, paused, finished) has its inbox
// dropped.
type pullers struct {
	nc     *nats.Conn
	stream string // the jobs stream
	alias  string
	size   int
	by     map[*runConsumer]*puller
}

func newPullers(nc *nats.Conn, stream, alias string, size int) *pullers {
	return &pullers{nc: nc, stream: stream, alias: alias, size: size, by: map[*runConsumer]*puller{}}
}

// of returns a run's puller.
func (ps *pullers) of(rc *runConsumer) *puller {
	p := ps.by[rc]
	if p == nil {
		p = newPuller(ps.nc, ps.stream, queue.JobConsumerName(ps.alias, rc.run), ps.size)
		ps.by[rc] = p
	}
	return p
}

// backlog is the jobs queued for runs, as their pullers last read it, and when the
// oldest of those readings was made; -1 when a run's is not known yet.
func (ps *pullers) backlog(runs []*runConsumer) (n int, read time.Time) {
	for i, rc := range runs {
		p := ps.by[rc]
		if p == nil || p.pending < 0 {
			return -1, time.Time{}
		}
		n += p.pending
		if i == 0 || p.read.Before(read) {
			read = p.read
		}
	}
	return n, read
}

// keep drops the pullers of runs not in the rotation.
func (ps *pullers) keep(runs []*runConsumer) {
	if len(ps.by) == len(runs) {
		return
	}
	in := make(map[*runConsumer]bool, len(runs))
	for _, rc := range runs {
		in[rc] = true
	}
	for rc, p := range ps.by {
		if !in[rc] {
			p.close()
			delete(ps.by, rc)
		}
	}
}

func (ps *pullers) close() {
	for rc, p := range ps.by {
		p.close()
		delete(ps.by, rc)
	}
}
