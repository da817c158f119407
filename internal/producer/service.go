package producer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// ServiceConfig configures the producer service.
type ServiceConfig struct {
	Pipelines map[string]*config.Pipeline // by the name upstream systems submit under
	Topology  queue.Topology
	MaxAhead  int // flow control per run, as for the file producer (0: AheadRows)
	// ParkDelay is how long a row that may not be published yet (beyond its run's flow
	// window, or of a paused run) waits on the stream before it is looked at again.
	ParkDelay time.Duration
	// Metrics, if set, counts rejected and parked submissions (see NewMetrics).
	Metrics *Metrics
	// Started, if set, is called once the service takes submissions (after the streams
	// exist: it waits for mqctl provision when its user may not create them).
	Started func()
}

// Metrics are the producer service's counters.
type Metrics struct {
	rejected *prometheus.CounterVec
	parked   *prometheus.CounterVec
	accepted *prometheus.CounterVec
	runs     prometheus.Counter
	rows     prometheus.Counter
	jobs     prometheus.Counter
}

// NewMetrics returns unregistered service metrics; register Collectors() once. Every
// label value is known: each starts at 0.
func NewMetrics() *Metrics {
	m := &Metrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_producer_submitted_rejected_total",
			Help: "Submitted records terminated without being published, by reason (invalid_run_id, unknown_pipeline, malformed_subject, undecodable_open, undecodable_seal, finished_run, reused_run_id, row_beyond_seal, run_rejected)."}, []string{"reason"}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_producer_submitted_parked_total",
			Help: "Submitted rows left on the stream for later, by cause (flow_control: beyond the run's window; paused)."}, []string{"cause"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_producer_submitted_accepted_total",
			Help: "Submitted records converted and published, by kind (open, row, seal); a redelivered record counts again."}, []string{"kind"}),
		runs: prometheus.NewCounter(prometheus.CounterOpts{Name: "mq_producer_runs_published_total",
			Help: "Runs opened: open records published for submitted runs."}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "mq_producer_rows_published_total",
			Help: "Submitted rows published (error rows included)."}),
		jobs: prometheus.NewCounter(prometheus.CounterOpts{Name: "mq_producer_jobs_published_total",
			Help: "Query jobs published for submitted rows."}),
	}
	for _, r := range RejectReasons {
		m.rejected.WithLabelValues(r) // every series at 0 from the start: rate() sees the first
	}
	for _, c := range []string{"flow_control", "paused"} {
		m.parked.WithLabelValues(c)
	}
	for _, k := range []string{"open", "row", "seal"} {
		m.accepted.WithLabelValues(k)
	}
	return m
}

// Collectors returns the metrics for a process's /metrics.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.rejected, m.parked, m.accepted, m.runs, m.rows, m.jobs}
}

// Rejected returns the counter of submitted records rejected for reason.
func (m *Metrics) Rejected(reason string) prometheus.Counter {
	return m.rejected.WithLabelValues(reason)
}

// Reasons a submitted record is rejected (terminated, nothing published).
const (
	RejectInvalidRunID      = "invalid_run_id"
	RejectUnknownPipeline   = "unknown_pipeline"
	RejectMalformedSubject  = "malformed_subject"
	RejectUndecodableSeal   = "undecodable_seal"
	RejectFinishedRun       = "finished_run"
	RejectReusedRunID       = "reused_run_id"
	RejectUndecodableOpen   = "undecodable_open"
	RejectRowBeyondSeal     = "row_beyond_seal"
	RejectRunRejected       = "run_rejected"
	serviceFetch            = 64
	serviceMaxAckPending    = 100000
	serviceControlFreshness = time.Second
	serviceStatusFreshness  = 200 * time.Millisecond
)

// RejectReasons are every reason a submitted record is rejected for.
var RejectReasons = []string{RejectInvalidRunID, RejectUnknownPipeline, RejectMalformedSubject, RejectUndecodableOpen,
	RejectUndecodableSeal, RejectFinishedRun, RejectReusedRunID, RejectRowBeyondSeal, RejectRunRejected}

// ServiceConsumer is the durable consumer of submitted runs on the submit stream,
// shared by every replica.
const ServiceConsumer = "producer-service"

// Serve renders runs that upstream systems submit on submit.<pipeline>.<run>.* (open,
// rows, seal) into the same open record, jobs, input rows and seal as the file producer
// publishes. Every message stands alone (the pipeline is in its subject), so replicas
// share the work and a redelivery publishes nothing twice. It returns when ctx ends.
//
// Runs are independent: nothing of one run ever waits for another. A row that may not
// be published yet (beyond its run's flow window, or its run paused) is not held: it
// is NAKed with a delay and looked at again later, so rows may arrive in any order. A
// submitted record is acked only once everything it published is acknowledged by the
// server; a cancelled run's remaining rows become error rows (cancelled) so the run
// completes.
func Serve(ctx context.Context, js jetstream.JetStream, cfg ServiceConfig, log zerolog.Logger) error {
	if len(cfg.Pipelines) == 0 {
		return &UsageError{errors.New("pipelines: at least one is required")}
	}
	if cfg.ParkDelay <= 0 {
		cfg.ParkDelay = time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	log = log.With().Str("component", "producer-service").Logger()
	if err := queue.EnsureAwait(ctx, js, cfg.Topology, log); err != nil {
		return err
	}
	names := cfg.Topology.Names
	runs, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil {
		return fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	var cons jetstream.Consumer
	err = queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		// Parked rows count toward MaxAckPending while they wait: a bound in the default
		// range would let one run's parked rows stop deliveries for every run.
		cons, err = js.CreateOrUpdateConsumer(ctx, names.StreamSubmit(), jetstream.ConsumerConfig{
			Durable: ServiceConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1,
			MaxAckPending: serviceMaxAckPending, DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubject: names.SubmitSubjects(),
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", ServiceConsumer, err)
	}
	s := &service{cfg: cfg, js: js, nc: js.Conn(), runs: runs, log: log, pub: &publisher{js: js, names: names, window: 256, log: log},
		limit: js.Conn().MaxPayload(), states: map[string]*runState{}, seen: map[string]int{}}
	defer s.pub.drain()
	log.Info().Int("pipelines", len(cfg.Pipelines)).Msg("producer service: waiting for submitted runs")
	if cfg.Started != nil {
		cfg.Started()
	}
	for ctx.Err() == nil {
		batch, err := cons.Fetch(serviceFetch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("fetch submitted records")
				sleep(ctx, time.Second)
			}
			continue
		}
		var published []jetstream.Msg // acked once the server has every publish
		for msg := range batch.Messages() {
			held, err := s.handle(ctx, msg)
			switch {
			case err != nil && ctx.Err() != nil:
				_ = msg.Nak()
			case err != nil:
				log.Warn().Err(err).Str("subject", msg.Subject()).Msg("submitted record; retrying")
				_ = msg.NakWithDelay(time.Second)
			case held:
				published = append(published, msg)
			}
		}
		s.settle(ctx, published)
		s.checkpoint(ctx)
	}
	return nil
}

// settle acks the records whose publishes the server confirmed; if any publish failed,
// the records are NAKed and their redelivery publishes what is missing (carefully).
func (s *service) settle(ctx context.Context, published []jetstream.Msg) {
	if err := s.pub.wait(ctx); err != nil {
		s.pub.reset()
		if ctx.Err() == nil {
			s.log.Warn().Err(err).Int("records", len(published)).Msg("settle publishes; the records are redelivered")
		}
		for _, m := range published {
			_ = m.NakWithDelay(time.Second)
		}
		return
	}
	for _, m := range published {
		if err := m.Ack(); err != nil && ctx.Err() == nil {
			s.log.Debug().Err(err).Str("subject", m.Subject()).Msg("ack submitted record")
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

type service struct {
	cfg    ServiceConfig
	js     jetstream.JetStream
	nc     *nats.Conn // events (core NATS)
	runs   jetstream.KeyValue
	log    zerolog.Logger
	pub    *publisher
	limit  int64 // the server's max_payload
	states map[string]*runState
	seen   map[string]int // rows published per run since the last checkpoint (max index + 1)
}

// runState is what the service knows of one run's flow control and control state,
// read from the runs bucket and kept briefly.
type runState struct {
	watermark   int // every row below it is emitted (the collector's status)
	statusRead  time.Time
	control     string // running, paused or cancelled (mqctl)
	controlRead time.Time
	// checked: the run's status was read once; finished: it said the run had finished
	// before this service first saw it (a reused run id, refused).
	checked, finished bool
	// sub is the run's submission record as last read (subRead); foreign: the run was
	// published without the service (looked up once, foreignChecked).
	sub                     *wire.Submission
	subRead                 time.Time
	foreign, foreignChecked bool
}

func (s *service) state(run string) *runState {
	st := s.states[run]
	if st == nil {
		st = &runState{}
		s.states[run] = st
	}
	return st
}

// checkpoint records each active run's progress, which is how status tells a run whose
// upstream publisher is gone (stalled) from one that is still arriving.
func (s *service) checkpoint(ctx context.Context) {
	for run, through := range s.seen {
		ck := &checkpointer{kv: s.runs, run: run}
		if prev, err := ck.load(ctx); err == nil && prev != nil {
			through = max(through, prev.Through)
		}
		if err := ck.save(ctx, through, ""); err != nil {
			s.log.Warn().Err(err).Str("run", run).Msg("checkpoint")
		}
		delete(s.seen, run)
	}
}

// reject terminates a submitted record that can never be converted, with its reason
// logged and counted, and tells the submitter (reject's event). sub is nil when the
// record's subject names no valid run.
func (s *service) reject(ctx context.Context, msg jetstream.Msg, sub *submission, reason string, err error) {
	s.cfg.Metrics.rejected.WithLabelValues(reason).Inc()
	s.log.Error().Err(err).Str("subject", msg.Subject()).Str("reason", reason).Msg("submitted record rejected: terminated, nothing published")
	_ = msg.TermWithReason(truncate(reason+": "+err.Error(), 200))
	ev := wire.SubmitEvent{State: wire.SubmitRejected, Reason: reason, Message: err.Error(), Subject: msg.Subject()}
	if sub == nil {
		s.reply(msg, ev)
		return
	}
	ev.Run, ev.Pipeline = sub.run, sub.name
	if sub.kind == wire.InputRow {
		ev.Row = &sub.row
	}
	s.event(msg, ev)
	if sub.kind == wire.InputOpen && (reason == RejectUnknownPipeline || reason == RejectUndecodableOpen) {
		s.recordRejected(ctx, sub.run, ev)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// submission is a submitted record that passed the door (admit): its pipeline (and
// the name it was submitted under), run, kind and row (for a row record), what the
// service knows of its run, and the message.
type submission struct {
	p    *config.Pipeline
	name string
	run  string
	kind wire.InputKind
	row  int
	st   *runState
	msg  jetstream.Msg
}

// handle converts one submitted record. held reports that it published and must be
// acked once the publisher confirms; otherwise handle has acked, NAKed or terminated
// it. A record that can never be converted (bad subject, invalid run id, unknown
// pipeline, a reused run id) is terminated with its reason; a row that cannot be parsed
// or rendered, or that is too large for a message, becomes an error row, as with the
// file producer.
func (s *service) handle(ctx context.Context, msg jetstream.Msg) (held bool, err error) {
	sub, err := s.admit(ctx, msg)
	if sub == nil {
		return false, err
	}
	switch sub.kind {
	case wire.InputOpen:
		return s.handleOpen(ctx, sub)
	case wire.InputSeal:
		return s.handleSeal(ctx, sub)
	}
	return s.handleRow(ctx, sub)
}

// admit checks a submitted record at the door: its subject, run id and pipeline, an
// open record's body, and that the run id is this submission's to use (door). A nil
// submission means the record was terminated (rejected), or, with an error, that its
// run's records could not be read.
func (s *service) admit(ctx context.Context, msg jetstream.Msg) (*submission, error) {
	name, run, kind, row, err := s.pub.names.ParseSubmitSubject(msg.Subject())
	if err != nil {
		s.reject(ctx, msg, nil, RejectMalformedSubject, err)
		return nil, nil
	}
	if err := wire.ValidateRunID(run); err != nil {
		s.reject(ctx, msg, nil, RejectInvalidRunID, err)
		return nil, nil
	}
	sub := &submission{name: name, run: run, kind: kind, row: row, msg: msg}
	if sub.p = s.cfg.Pipelines[name]; sub.p == nil {
		s.reject(ctx, msg, sub, RejectUnknownPipeline, fmt.Errorf("pipeline %q is not served here (run %s)", name, run))
		return nil, nil
	}
	if kind == wire.InputOpen {
		var open struct {
			V int `json:"v"`
		}
		if err := wire.Decode(msg.Data(), &open); err != nil {
			s.reject(ctx, msg, sub, RejectUndecodableOpen, fmt.Errorf("run %s: open record: %w", run, err))
			return nil, nil
		}
	}
	sub.st = s.state(run)
	reason, err := s.door(ctx, sub)
	if reason != "" {
		s.reject(ctx, msg, sub, reason, err)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return sub, nil
}

// handleOpen publishes a submitted run's open record and says the run is accepted.
func (s *service) handleOpen(ctx context.Context, sub *submission) (bool, error) {
	open := openRecord(sub.p, sub.run, nil)
	if err := s.pub.sync(ctx, s.pub.names.InputOpenSubject(sub.run), "open."+sub.run, open); err != nil {
		return false, err
	}
	s.cfg.Metrics.accepted.WithLabelValues("open").Inc()
	s.cfg.Metrics.runs.Inc()
	s.event(sub.msg, wire.SubmitEvent{Run: sub.run, Pipeline: sub.name, State: wire.SubmitAccepted})
	return true, nil
}

// handleSeal publishes a submitted run's seal record and says the run is sealed. An
// undecodable seal is rejected, and so is a seal with another row count than the one
// the run was sealed with (a reused run id).
func (s *service) handleSeal(ctx context.Context, sub *submission) (bool, error) {
	var seal wire.Seal
	if err := wire.Decode(sub.msg.Data(), &seal); err != nil {
		s.reject(ctx, sub.msg, sub, RejectUndecodableSeal, fmt.Errorf("run %s: %w", sub.run, err))
		return false, nil
	}
	rec, _, err := s.loadSubmission(ctx, sub.run)
	if err != nil {
		return false, err
	}
	if rec != nil && rec.State == wire.SubmitSealed && rec.Rows != seal.Rows {
		s.reject(ctx, sub.msg, sub, RejectReusedRunID, fmt.Errorf("run %s is sealed already with %d rows, this seal says %d; a reused run id is refused (use a new one)", sub.run, rec.Rows, seal.Rows))
		return false, nil
	}
	seal.V, seal.Run = wire.Version, sub.run
	if err := s.pub.sync(ctx, s.pub.names.InputSealSubject(sub.run), "seal."+sub.run, seal); err != nil {
		return false, err
	}
	s.cfg.Metrics.accepted.WithLabelValues("seal").Inc()
	err = s.updateSubmission(ctx, sub.run, func(r *wire.Submission) bool {
		if r.State == wire.SubmitRejected {
			return false
		}
		r.State, r.Rows = wire.SubmitSealed, seal.Rows
		if r.Pipeline == "" {
			r.Pipeline = sub.name
		}
		return true
	})
	if err != nil {
		return false, err
	}
	sub.st.subRead = time.Time{} // read the sealed record again
	s.event(sub.msg, wire.SubmitEvent{Run: sub.run, Pipeline: sub.name, State: wire.SubmitSealed, Rows: seal.Rows})
	return true, nil
}

// handleRow publishes a submitted row as the file producer would (planRow, fit,
// publishPlan, always careful), unless it is parked (park). A row of a cancelled run
// becomes an error row (cancelled) with no job. A row that became an error row for
// what it holds is reported (row_rejected).
func (s *service) handleRow(ctx context.Context, sub *submission) (bool, error) {
	run, row, msg := sub.run, sub.row, sub.msg
	ctl := s.controlState(ctx, run, sub.st)
	if parked, err := s.park(ctx, msg, sub, ctl); parked {
		return false, err
	}
	rec, err := submittedRow(sub.p, msg.Data(), row)
	if err != nil {
		return false, err
	}
	pl := planRow(sub.p, sub.p.Queries(), run, rec, nil)
	if ctl == wire.ControlCancelled {
		// Its run was cancelled before this row was published: the row completes as an
		// error row and nothing of it is called.
		pl.jobs, pl.rowErr = nil, true
		if pl.row.Error == nil {
			pl.row.Error = &wire.Error{Reason: wire.ReasonCancelled, Message: fmt.Sprintf("row %d: run %s was cancelled before this row was published", row, run)}
		}
	}
	if pl, err = fit(pl, s.pub.names, s.limit); err != nil {
		return false, err
	}
	if pl.row.Error != nil && pl.row.Error.Reason == wire.ReasonRowTooLarge {
		s.log.Warn().Str("run", run).Int("row", row).Str("reason", pl.row.Error.Message).Msg("row too large for a message: published as an error row")
	}
	// Always careful: a redelivered record must not publish a job twice.
	jobs, err := publishPlan(ctx, s.pub, run, pl, true)
	if err != nil {
		return false, err
	}
	s.cfg.Metrics.accepted.WithLabelValues("row").Inc()
	s.cfg.Metrics.rows.Inc()
	s.cfg.Metrics.jobs.Add(float64(jobs))
	s.seen[run] = max(s.seen[run], row+1)
	if e := pl.row.Error; e != nil && e.Reason != wire.ReasonCancelled {
		s.rowRejected(ctx, sub, e)
	}
	return true, nil
}

// submittedRow reads a submitted row record into an input row: one that cannot be
// decoded, or whose columns the pipeline cannot take, is a malformed record.
func submittedRow(p *config.Pipeline, data []byte, row int) (input.Row, error) {
	var sr wire.SubmitRow
	rec := input.Row{Index: row, Line: row + 1}
	if err := wire.Decode(data, &sr); err != nil {
		rec.Err, rec.Raw = &input.RecordError{Line: row + 1, Msg: err.Error()}, string(data)
	} else if rec, err = parseObject(sr.Data, row); err != nil {
		return rec, err
	}
	if rec.Err == nil {
		if err := p.CheckInputColumns(rec.Columns); err != nil {
			rec = collidingRecord(rec, sr.Data, err)
		}
	}
	return rec, nil
}

// parseObject reads one submitted row object with the JSONL reader (key order kept).
func parseObject(data []byte, row int) (input.Row, error) {
	r := input.NewJSONL(bytes.NewReader(data))
	rec, err := r.Next()
	if errors.Is(err, io.EOF) {
		return input.Row{Index: row, Line: row + 1, Err: &input.RecordError{Line: row + 1, Msg: "empty row"}}, nil
	}
	if err != nil {
		return rec, err
	}
	rec.Index, rec.Line = row, row+1
	if re, ok := rec.Err.(*input.RecordError); ok {
		re.Line = row + 1
	}
	return rec, nil
}
