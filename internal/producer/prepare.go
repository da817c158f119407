package producer

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// prepare does every whole-run check before anything is published, in this order: the
// config, the input and its header against the pipeline, the run id, the topology, and
// the resume decision (resume). It returns the run ready to be opened.
func prepare(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) (*fileRun, error) {
	if cfg.Pipeline == nil {
		return nil, &UsageError{errors.New("pipeline: required")}
	}
	cfg.defaults()
	in, err := openInput(cfg.Input, cfg.Format)
	if err != nil {
		return nil, err
	}
	p := cfg.Pipeline
	if err := p.CheckInputColumns(in.header); err != nil {
		return nil, &UsageError{fmt.Errorf("input header: %w", err)}
	}
	if err := cfg.resolveRun(); err != nil {
		return nil, err
	}
	if err := queue.EnsureLog(ctx, js, cfg.Topology, log); err != nil {
		return nil, err
	}
	fr := &fileRun{cfg: cfg, p: p, queries: p.Queries(), in: in, log: log, rolling: sha256.New()}
	fr.open = openRecord(p, cfg.Run, in.header)
	fr.open.InputHash = cfg.InputHash
	runs, err := fr.resume(ctx, js)
	if err != nil {
		return nil, err
	}
	fr.pub = &publisher{js: js, names: cfg.Topology.Names, window: cfg.Window, log: log}
	fr.flow = &flowControl{kv: runs, run: cfg.Run, ahead: AheadRows(cfg.MaxAhead, len(fr.queries)), flush: fr.pub.wait}
	fr.limit = js.Conn().MaxPayload()
	// Checkpoint every few rows, once everything before it is acknowledged.
	fr.every = max(1, cfg.Window/(len(fr.queries)+1))
	return fr, nil
}

// defaults sets the publish window and the flow window when they are not set.
func (cfg *Config) defaults() {
	if cfg.Window <= 0 {
		cfg.Window = 2048
	}
}

// resolveRun gives a run without an id a new UUIDv7 and checks the id.
func (cfg *Config) resolveRun() error {
	if cfg.Run == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("run id: %w", err)
		}
		cfg.Run = id.String()
	}
	if err := wire.ValidateRunID(cfg.Run); err != nil {
		return &UsageError{fmt.Errorf("--run: %w", err)}
	}
	return nil
}

// source is the input being read: its reader, the records read ahead to find a JSONL
// header (handed out first by next), the header, and the hash of every byte read.
type source struct {
	rd     input.Reader
	pre    []input.Row
	header []string
	hasher hash.Hash
}

// openInput opens the input and finds its header: the CSV header record, or for JSONL
// the first well-formed row's keys (the records before it are kept for next).
func openInput(r io.Reader, f input.Format) (*source, error) {
	s := &source{hasher: sha256.New()}
	rd, err := input.NewReader(io.TeeReader(r, s.hasher), f)
	if err != nil {
		return nil, &UsageError{fmt.Errorf("input: %w", err)}
	}
	s.rd = rd
	s.header = rd.Header()
	if s.header != nil {
		return s, nil
	}
	for { // JSONL: the first well-formed row's keys are the columns
		row, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read input: %w", err)
		}
		s.pre = append(s.pre, row)
		if row.Err == nil {
			s.header = row.Columns
			return s, nil
		}
	}
}

// resume decides whether the run is new or resumed: it refuses a finished run id, loads
// the checkpoint an earlier attempt of the run id left, and refuses one written with
// another pipeline config. It returns the runs bucket (flow control reads it).
func (fr *fileRun) resume(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	run := fr.cfg.Run
	runs, err := js.KeyValue(ctx, fr.cfg.Topology.Names.BucketRuns())
	if err != nil {
		return nil, fmt.Errorf("open kv %s: %w", fr.cfg.Topology.Names.BucketRuns(), err)
	}
	if err := refuseFinished(ctx, runs, run); err != nil {
		return nil, err
	}
	if err := refuseSubmitted(ctx, runs, run); err != nil {
		return nil, err
	}
	fr.ck = &checkpointer{kv: runs, run: run, configHash: fr.open.ConfigHash}
	prev, err := fr.ck.load(ctx)
	if err != nil {
		return nil, err
	}
	if prev != nil && prev.ConfigHash != fr.open.ConfigHash {
		return nil, &UsageError{fmt.Errorf("run %s was started with another pipeline config (hash %.12s, now %.12s); use a new run id", run, prev.ConfigHash, fr.open.ConfigHash)}
	}
	if prev == nil {
		if err := refuseOpenedElsewhere(ctx, js, fr.cfg.Topology.Names, run, fr.open.ConfigHash); err != nil {
			return nil, err
		}
	}
	if prev != nil {
		fr.log.Info().Str("run", run).Int("published_through", prev.Through).Msg("resuming from the checkpoint")
	}
	fr.prev = prev
	return runs, nil
}

// refuseSubmitted refuses a run id the producer service has taken (its submission
// record: accepted, sealed, or rejected until submitted again): the run is an upstream
// system's, and rows published beside its own would complete it with other data, or
// with jobs of queries its open record does not name (a run that never ends).
func refuseSubmitted(ctx context.Context, runs jetstream.KeyValue, run string) error {
	sub, _, err := loadSubmission(ctx, runs, run)
	if err != nil || sub == nil {
		return err
	}
	return &UsageError{fmt.Errorf("run %s was submitted to the producer service (%s, pipeline %q); a reused run id is refused (use a new one)", run, sub.State, sub.Pipeline)}
}

// refuseOpenedElsewhere refuses a run id whose open record is already on MQ_INPUT with
// another pipeline config, when this producer has no checkpoint of it: a run opened by
// another publisher (docs/WIRE.md). The same config's open record without a checkpoint
// is this producer's earlier attempt, stopped before its first checkpoint: resumed.
func refuseOpenedElsewhere(ctx context.Context, js jetstream.JetStream, names wire.Names, run, configHash string) error {
	m, err := lastMsg(ctx, js, names.StreamInput(), names.InputOpenSubject(run))
	if err != nil || m == nil {
		return err
	}
	var open wire.Open
	if err := json.Unmarshal(m.Data, &open); err != nil || open.ConfigHash != configHash {
		return &UsageError{fmt.Errorf("run %s was opened by another publisher with another pipeline (config hash %.12q, this one %.12s); a reused run id is refused (use a new one)", run, open.ConfigHash, configHash)}
	}
	return nil
}

// refuseFinished refuses a run id whose run has finished: the collector purged its data
// and checkpoints, so publishing it again would pay for every call a second time and
// its output would go nowhere (the run's files are final).
func refuseFinished(ctx context.Context, runs jetstream.KeyValue, run string) error {
	st, err := status.Read(ctx, runs, run)
	if err != nil || st == nil {
		return err
	}
	if st.Finished {
		return &UsageError{fmt.Errorf("run %s already finished (%d rows: %d ok, %d failed, output in %s); use a new run id", run, st.Total, st.OK, st.Failed, st.OutDir)}
	}
	return nil
}

// openRecord is the run's open record for a pipeline.
func openRecord(p *config.Pipeline, run string, header []string) wire.Open {
	open := wire.Open{V: wire.Version, Run: run, Order: p.Order, ConfigHash: p.Hash(), Created: time.Now().UTC(),
		PromptPer1K: p.Cost.PromptPer1K, CompletionPer1K: p.Cost.CompletionPer1K, InputColumns: header, Cache: p.Cache.Enabled}
	seen := map[string]bool{}
	for _, q := range p.Queries() {
		if !seen[q.Deployment] {
			seen[q.Deployment] = true
			open.Deployments = append(open.Deployments, q.Deployment)
			if q.Pool != nil {
				open.Pools = append(open.Pools, wire.Pool{Name: q.Deployment, Members: q.Pool})
			}
		}
		qi := wire.QueryInfo{Name: q.Name}
		for _, o := range q.Outputs {
			qi.Columns = append(qi.Columns, o.Column)
		}
		open.Queries = append(open.Queries, qi)
	}
	return open
}

// checkpointer reads and writes the producer's resume point (wire.ProducerCheckpoint)
// in the runs bucket: read once by resume, written every few rows as the run goes
// (fileRun.checkpoint) and by the service for each active run.
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
