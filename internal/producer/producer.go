// Package producer owns turning input rows into a run on the bus: it validates the
// pipeline against the input header, renders all M prompts of a row before publishing
// any of them, publishes the row's jobs and then the row once (Nats-Msg-Id on
// everything, first-writer-wins streams), and brackets the run with open and seal
// records. It stays at most MaxAhead rows ahead of the collector, and checkpoints in KV
// so that a rerun with the same run id resumes without calling any job twice.
//
// The file producer's code follows one run's flow: Run (this file) prepares the run
// (prepare.go: config, input, run id, resume decision), opens it, then for each row
// reads and plans it (rows.go), waits for the flow window (flow.go) and publishes it
// (publish.go), and finally seals the run. The service (service.go) converts submitted
// records with the same rows, flow and publish code.
package producer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Config configures one producer run.
type Config struct {
	Pipeline *config.Pipeline
	Input    io.Reader
	Format   input.Format
	Run      string // run id; "" = a new UUIDv7
	// InputHash, if set, is written as the open record's input_hash (provenance: local
	// mode writes the input file's SHA-256 and checks it when the run id comes again).
	InputHash string
	Topology  queue.Topology
	// Progress, if set, is called after each row is published.
	Progress func(rows int)
	// Window bounds publishes awaiting their ack.
	Window int
	// MaxAhead is how many rows the producer may be ahead of the rows the collector has
	// written (flow control: the streams never hold a whole giant input); 0: AheadRows.
	MaxAhead int
}

// DefaultMaxAhead is the least flow window in rows when MaxAhead is not set (the
// producer's --max-ahead 0): see AheadRows.
const DefaultMaxAhead = 1000

// DefaultAheadJobs is the jobs a run's flow window holds when MaxAhead is not set and
// its rows have few queries: at one query per row, 1000 rows ahead is 1000 jobs, too few
// to keep a fleet busy between two progress reports of the collector (every 200 ms).
const DefaultAheadJobs = 16000

// AheadRows is a run's flow window in rows: maxAhead when set (> 0), else the larger of
// DefaultMaxAhead rows and DefaultAheadJobs jobs' worth of rows of queries queries.
func AheadRows(maxAhead, queries int) int {
	if maxAhead > 0 {
		return maxAhead
	}
	return max(DefaultMaxAhead, DefaultAheadJobs/max(1, queries))
}

// UsageError is a whole-run problem found before anything was published (exit 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Report tells what was published.
type Report struct {
	Run       string
	Rows      int // rows published (including error rows)
	Jobs      int
	RowErrors int // malformed records and rows that failed to render
	// Cancelled: the run was cancelled (mqctl cancel); Rows were published before.
	Cancelled bool
}

// Run publishes a whole run and returns its report. A *UsageError means nothing was
// published.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) (Report, error) {
	fr, err := prepare(ctx, js, cfg, log)
	if err != nil {
		return Report{}, err
	}
	defer fr.pub.drain()
	if err := fr.openRun(ctx); err != nil {
		return Report{}, err
	}
	if err := fr.publishRows(ctx); err != nil {
		return fr.rep, err
	}
	if err := fr.sealRun(ctx); err != nil {
		return fr.rep, err
	}
	return fr.rep, nil
}

// fileRun is one run of the file producer in progress: what prepare decided, the
// publisher and flow control, and the tally so far.
type fileRun struct {
	cfg     Config
	p       *config.Pipeline
	queries []config.Query
	in      *source
	open    wire.Open
	// ck writes the resume point; prev is the one an earlier attempt of the same run id
	// left (nil: a new run).
	ck   *checkpointer
	prev *wire.ProducerCheckpoint
	pub  *publisher
	flow *flowControl
	// limit is the server's max_payload; every is how many rows go between checkpoints.
	limit int64
	every int
	// rolling hashes the rows read, so that a rerun can prove it reads the same rows.
	rolling hash.Hash
	rep     Report
	log     zerolog.Logger
}

// openRun publishes the run's open record and awaits its ack.
func (fr *fileRun) openRun(ctx context.Context) error {
	run := fr.cfg.Run
	if err := fr.pub.sync(ctx, fr.pub.names.InputOpenSubject(run), "open."+run, fr.open); err != nil {
		return err
	}
	fr.log = fr.log.With().Str("run", run).Logger()
	fr.log.Info().Int("queries", len(fr.queries)).Msg("run opened")
	fr.rep = Report{Run: run}
	return nil
}

// publishRows reads, plans and publishes every row of the input in order, until the
// input ends or the run is cancelled. Rows an earlier attempt of the run published (its
// checkpoint covers them) are read and checked, not published again.
func (fr *fileRun) publishRows(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("run %s interrupted after %d rows (unsealed; rerun with --run %s to resume): %w", fr.cfg.Run, fr.rep.Rows, fr.cfg.Run, err)
		}
		rec, err := fr.in.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read input after row %d: %w", fr.rep.Rows, err)
		}
		pl, err := fr.planNext(rec)
		if err != nil {
			return err
		}
		if skipped, err := fr.skipPublished(rec, pl); skipped || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		cancelled, err := fr.publishRow(ctx, rec, pl)
		if cancelled || err != nil {
			return err
		}
	}
}

// publishRow publishes one planned row once the flow window lets it, and checkpoints
// every few rows. cancelled reports that the run was cancelled before the row: it is
// not published, nor counted.
func (fr *fileRun) publishRow(ctx context.Context, rec input.Row, pl plan) (cancelled bool, err error) {
	careful := fr.prev != nil && rec.Index < fr.prev.Through+fr.every
	err = fr.flow.wait(ctx, rec.Index)
	if errors.Is(err, errCancelled) && careful {
		// A crashed producer may have published this row and the next ones up to
		// the end of the careful window: the seal must count them, or the collector
		// refuses them as beyond it. Go on carefully (nothing on the bus is
		// published again); the next control check past the window stops.
		err = nil
	}
	if errors.Is(err, errCancelled) {
		fr.rep.Rows-- // this row is not published
		if pl.rowErr {
			fr.rep.RowErrors--
		}
		fr.rep.Cancelled = true
		fr.log.Warn().Int("published", fr.rep.Rows).Msg("run cancelled: no more rows are published")
		return true, nil
	} else if err != nil {
		return false, err
	}
	n, err := publishPlan(ctx, fr.pub, fr.cfg.Run, pl, careful)
	fr.rep.Jobs += n
	if err != nil {
		return false, err
	}
	if fr.cfg.Progress != nil {
		fr.cfg.Progress(fr.rep.Rows)
	}
	if fr.rep.Rows%fr.every == 0 {
		return false, fr.checkpoint(ctx)
	}
	return false, nil
}

// checkpoint waits until everything published is acknowledged, then saves the resume
// point: a rerun with the same run id skips what the checkpoint covers and checks the
// rows after it.
func (fr *fileRun) checkpoint(ctx context.Context) error {
	if err := fr.pub.wait(ctx); err != nil {
		return err
	}
	return fr.ck.save(ctx, fr.rep.Rows, hex.EncodeToString(fr.rolling.Sum(nil)))
}

// sealRun settles every publish, saves the last checkpoint (not of a cancelled run),
// and publishes the seal record with the number of rows published.
func (fr *fileRun) sealRun(ctx context.Context) error {
	if fr.prev != nil && fr.rep.Rows < fr.prev.Through {
		return &UsageError{fmt.Errorf("run %s: the input has %d rows, fewer than the %d already published; use a new run id", fr.cfg.Run, fr.rep.Rows, fr.prev.Through)}
	}
	if fr.rep.Cancelled {
		if err := fr.pub.wait(ctx); err != nil {
			return err
		}
	} else if err := fr.checkpoint(ctx); err != nil {
		return err
	}
	seal := wire.Seal{V: wire.Version, Run: fr.cfg.Run, Rows: fr.rep.Rows}
	if err := fr.pub.sync(ctx, fr.pub.names.InputSealSubject(fr.cfg.Run), "seal."+fr.cfg.Run, seal); err != nil {
		return err
	}
	fr.log.Info().Int("rows", fr.rep.Rows).Int("jobs", fr.rep.Jobs).Int("row_errors", fr.rep.RowErrors).Str("input_sha256", hex.EncodeToString(fr.in.hasher.Sum(nil))).Msg("run sealed")
	return nil
}
