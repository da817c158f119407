package producer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
	MaxAhead  int // flow control per run, as for the file producer
}

// ServiceConsumer is the durable consumer of submitted runs, shared by every replica.
const ServiceConsumer = "producer-service"

// Serve renders runs that upstream systems submit on submit.<pipeline>.<run>.* (open,
// rows, seal) into the same open record, jobs, input rows and seal as the file producer
// publishes. Every message stands alone (the pipeline is in its subject), so replicas
// share the work and a redelivery publishes nothing twice. It returns when ctx ends.
func Serve(ctx context.Context, js jetstream.JetStream, cfg ServiceConfig, log zerolog.Logger) error {
	if len(cfg.Pipelines) == 0 {
		return &UsageError{errors.New("pipelines: at least one is required")}
	}
	if cfg.MaxAhead <= 0 {
		cfg.MaxAhead = 1000
	}
	log = log.With().Str("component", "producer-service").Logger()
	if err := queue.Ensure(ctx, js, cfg.Topology); err != nil {
		return err
	}
	runs, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		return fmt.Errorf("open kv %s: %w", wire.BucketRuns, err)
	}
	var cons jetstream.Consumer
	err = queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		cons, err = js.CreateOrUpdateConsumer(ctx, wire.StreamSubmit, jetstream.ConsumerConfig{
			Durable: ServiceConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1,
			DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubject: "submit.>",
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", ServiceConsumer, err)
	}
	s := &service{cfg: cfg, js: js, runs: runs, log: log, pub: &publisher{js: js, window: 256, log: log}, flows: map[string]*flowControl{}, seen: map[string]int{}}
	log.Info().Int("pipelines", len(cfg.Pipelines)).Msg("producer service: waiting for submitted runs")
	for ctx.Err() == nil {
		batch, err := cons.Fetch(64, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("fetch submitted records")
				time.Sleep(time.Second)
			}
			continue
		}
		for msg := range batch.Messages() {
			if err := s.handle(ctx, msg); err != nil {
				if ctx.Err() != nil {
					_ = msg.Nak()
					return nil
				}
				log.Warn().Err(err).Str("subject", msg.Subject()).Msg("submitted record; retrying")
				_ = msg.NakWithDelay(time.Second)
				continue
			}
			_ = msg.Ack()
		}
		if err := s.pub.wait(ctx); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("settle publishes")
		}
		s.checkpoint(ctx)
	}
	return nil
}

type service struct {
	cfg   ServiceConfig
	js    jetstream.JetStream
	runs  jetstream.KeyValue
	log   zerolog.Logger
	pub   *publisher
	flows map[string]*flowControl
	seen  map[string]int // rows published per run since the last checkpoint (max index + 1)
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

// handle converts one submitted record. A record that can never be converted (unknown
// pipeline, bad subject) is logged and dropped with its reason; a row that cannot be
// parsed or rendered becomes an error row, as with the file producer.
func (s *service) handle(ctx context.Context, msg jetstream.Msg) error {
	name, run, kind, row, err := wire.ParseSubmitSubject(msg.Subject())
	if err != nil {
		s.log.Error().Err(err).Msg("submitted record on a malformed subject: dropped")
		return nil
	}
	p := s.cfg.Pipelines[name]
	if p == nil {
		s.log.Error().Str("pipeline", name).Str("run", run).Msg("run submitted for an unknown pipeline: dropped")
		return nil
	}
	switch kind {
	case wire.InputOpen:
		open := openRecord(p, run, nil)
		return s.pub.sync(ctx, wire.InputOpenSubject(run), "open."+run, open)
	case wire.InputSeal:
		var seal wire.Seal
		if err := wire.Decode(msg.Data(), &seal); err != nil {
			s.log.Error().Err(err).Str("run", run).Msg("undecodable seal: dropped")
			return nil
		}
		seal.V, seal.Run = wire.Version, run
		if err := s.pub.wait(ctx); err != nil { // every row before the seal is on the bus
			return err
		}
		delete(s.flows, run)
		return s.pub.sync(ctx, wire.InputSealSubject(run), "seal."+run, seal)
	}
	fc := s.flows[run]
	if fc == nil {
		fc = &flowControl{kv: s.runs, run: run, ahead: s.cfg.MaxAhead}
		s.flows[run] = fc
	}
	if err := fc.wait(ctx, row); err != nil {
		return err
	}
	var sr wire.SubmitRow
	rec := input.Row{Index: row, Line: row + 1}
	if err := wire.Decode(msg.Data(), &sr); err != nil {
		rec.Err, rec.Raw = &input.RecordError{Line: row + 1, Msg: err.Error()}, string(msg.Data())
	} else if rec, err = parseObject(sr.Data, row); err != nil {
		return err
	}
	if rec.Err == nil {
		if err := p.CheckInputColumns(rec.Columns); err != nil {
			rec.Err, rec.Raw = &input.RecordError{Line: row + 1, Msg: err.Error()}, string(sr.Data)
		}
	}
	pl, err := fit(planRow(p, p.Queries(), run, rec, nil), s.js.Conn().MaxPayload())
	if err != nil {
		return err
	}
	// Always careful: a redelivered record must not publish a job twice.
	if _, err := publishPlan(ctx, s.pub, run, pl, true); err != nil {
		return err
	}
	s.seen[run] = max(s.seen[run], row+1)
	return nil
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
