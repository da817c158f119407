package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// checkpoint is a run's checkpoint.json: the rows emitted, the files' offsets and the
// stats, as of the last fsync.
type checkpoint struct {
	Run      string       `json:"run"`
	Next     int          `json:"next"`
	Above    []int        `json:"above,omitempty"`
	Offsets  sink.Offsets `json:"offsets"`
	Stats    Stats        `json:"stats"`
	Started  time.Time    `json:"started"`
	Finished bool         `json:"finished"`
	// CSVExtra are the keys of the rows written that the CSV headers lack
	// (sink.Run.CSVExtra): the CSV files are written again with them when the run
	// finishes.
	CSVExtra []string `json:"csv_extra,omitempty"`
	// CSVInput are the input columns of the CSV headers once written (run.csvInput):
	// a run without input columns in its open record keeps them across restarts.
	// Null until the headers are fixed.
	CSVInput []string `json:"csv_input"`
	// The lease under which it was written: a collector never overwrites a checkpoint
	// of a later epoch of the same lease bucket (it has been fenced off).
	LeaseEpoch  uint64 `json:"lease_epoch,omitempty"`
	LeaseBucket string `json:"lease_bucket,omitempty"`
}

// Stats are a run's counters, kept in the checkpoint and the summary.
type Stats struct {
	RowsOK           int     `json:"rows_ok"`
	RowsFailed       int     `json:"rows_failed"`
	Calls            int64   `json:"calls"`
	Retries          int64   `json:"retries"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	Cost             float64 `json:"cost"`
	// Cached counts the queries of the written rows answered from the prompt cache
	// (no call made for them).
	Cached int64 `json:"cached,omitempty"`
}

// checkpoint makes every emitted row durable: fsync the files, write the checkpoint,
// publish the run's progress, then purge what is no longer needed.
func (c *Collector) checkpoint(ctx context.Context) error {
	for id, r := range c.dirty {
		if r.out == nil {
			delete(c.dirty, id)
			continue
		}
		off, err := r.out.Sync()
		if err != nil {
			return fmt.Errorf("run %s: %w", id, err)
		}
		if err := c.writeCheckpoint(r, off); err != nil {
			return err
		}
		if err := c.publishStatus(ctx, r); err != nil {
			return err
		}
		c.purgeRows(ctx, r)
		delete(c.dirty, id)
	}
	c.pending = 0
	return nil
}

// writeCheckpoint replaces the run's checkpoint, unless the one on disk was written
// under a later epoch of the lease (then this collector is stale: ErrLost).
func (c *Collector) writeCheckpoint(r *run, off sink.Offsets) error {
	disk, err := loadCheckpoint(r.out.Dir())
	if err != nil {
		return err
	}
	if disk.LeaseBucket == c.fence.Bucket() && disk.LeaseEpoch > c.fence.Epoch() {
		return fmt.Errorf("run %s: checkpoint written under lease epoch %d, this collector holds %d: %w", r.id, disk.LeaseEpoch, c.fence.Epoch(), lease.ErrLost)
	}
	cp := checkpoint{Run: r.id, Next: r.next, Offsets: off, Stats: r.stats, Started: r.started, Finished: r.finished,
		CSVExtra: r.out.CSVExtra(), CSVInput: r.csvInput, LeaseEpoch: c.fence.Epoch(), LeaseBucket: c.fence.Bucket()}
	for a := range r.above {
		cp.Above = append(cp.Above, a)
	}
	sort.Ints(cp.Above)
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	return r.out.WriteFile(sink.Checkpoint, b)
}

// loadCheckpoint reads a run's checkpoint; a missing one is an empty checkpoint.
func loadCheckpoint(dir string) (*checkpoint, error) {
	b, err := os.ReadFile(filepath.Join(dir, sink.Checkpoint))
	if errors.Is(err, os.ErrNotExist) {
		return &checkpoint{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("decode checkpoint %s: %w", dir, err)
	}
	return &cp, nil
}

// loadStatusRev reads the revision of the run's status key, the base of its
// compare-and-set writes.
func (c *Collector) loadStatusRev(ctx context.Context, r *run) error {
	e, err := c.runsKV.Get(ctx, r.id)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		r.statusRev = 0
	case err != nil:
		return fmt.Errorf("read status of run %s: %w", r.id, err)
	default:
		r.statusRev = e.Revision()
	}
	return nil
}

// publishStatus writes the run's status by compare-and-set on the revision this
// collector last saw: a status written by a collector of a later lease epoch is never
// overwritten (ErrLost). Other failures are logged: the status is advisory.
func (c *Collector) publishStatus(ctx context.Context, r *run) error {
	st := wire.RunStatus{Run: r.id, State: wire.RunOpen, Emitted: r.emittedCount(), OK: r.stats.RowsOK, Failed: r.stats.RowsFailed,
		Next: r.next, OutDir: c.runDir(r.id), Updated: time.Now().UTC(),
		Deployments: r.open.Deployments, Started: r.started}
	if r.sealed {
		st.State, st.Total = wire.RunSealed, r.total
	}
	if r.finished && r.storeDone { // finished once its files are stored (complete)
		st.State, st.Finished, st.Stored = wire.RunCompleted, true, !c.cfg.NoStore
	}
	st.LeaseEpoch = c.fence.Epoch()
	b, _ := json.Marshal(st)
	for range 3 {
		if err := c.fence.Check(); err != nil {
			return fmt.Errorf("publish status of run %s: %w", r.id, err)
		}
		var rev uint64
		var err error
		if r.statusRev == 0 {
			rev, err = c.runsKV.Create(ctx, r.id, b)
		} else {
			rev, err = c.runsKV.Update(ctx, r.id, b, r.statusRev)
		}
		if err == nil {
			r.statusRev = rev
			return nil
		}
		if !queue.IsKeyExists(err) {
			if ctx.Err() == nil {
				c.log.Warn().Err(err).Str("run", r.id).Msg("publish run status")
			}
			return nil
		}
		// Someone wrote it since: a later collector (stop), or a leftover of ours.
		e, gerr := c.runsKV.Get(ctx, r.id)
		if errors.Is(gerr, jetstream.ErrKeyNotFound) {
			r.statusRev = 0
			continue
		}
		if gerr != nil {
			c.log.Warn().Err(gerr).Str("run", r.id).Msg("read run status")
			return nil
		}
		var cur wire.RunStatus
		if json.Unmarshal(e.Value(), &cur) == nil && cur.LeaseEpoch > c.fence.Epoch() {
			return fmt.Errorf("status of run %s written under lease epoch %d, this collector holds %d: %w", r.id, cur.LeaseEpoch, c.fence.Epoch(), lease.ErrLost)
		}
		r.statusRev = e.Revision()
	}
	return nil
}

// purgeRows hands the results of durably emitted rows to the purger: one purge of the
// run's results subjects below the lowest sequence still needed, a result of a row not
// yet out or one not yet read (the results stream is read in order, so every result
// below resultsSeen+1 has been). A result below that bound whose row is out is no
// longer needed; one of a row not out is above it. Results held above the bound go with
// a later checkpoint or the run's final purge. The fold never waits for the purger; a
// purge it drops (queue full, an error) is done by a later one or the final purge.
func (c *Collector) purgeRows(_ context.Context, r *run) {
	if r.emittedTop < r.purgedBelow {
		return // nothing emitted since the last purge
	}
	bound := min(c.resultsSeen+1, r.lowestHeld())
	if bound <= r.purgedBelow {
		return
	}
	select {
	case c.purges <- purge{stream: c.results, subject: c.names.ResultRunFilter(r.id), below: bound}:
		r.purgedBelow = bound
	default:
	}
}

// heldResult is one entry of run.held: the result at seq, of query qi of row.
type heldResult struct {
	seq     uint64
	row, qi int
}

// hold indexes a result just applied to a row not yet out (run.held).
func (r *run) hold(row, qi int, seq uint64) {
	if n := len(r.held); n > r.heldFrom && seq < r.held[n-1].seq {
		r.heldUnordered = true
	}
	r.held = append(r.held, heldResult{seq: seq, row: row, qi: qi})
}

// holds reports whether h is a result of a row still waiting to go out.
func (r *run) holds(h heldResult) bool {
	rs := r.rows[h.row]
	return rs != nil && rs.resultSeqs[h.qi] == h.seq
}

// lowestHeld is the lowest sequence of a result whose row is not yet out (MaxUint64:
// none). It drops the index's leading entries of rows gone out, and compacts the index
// when most of it is such entries (a row that waits long keeps the entries after it).
func (r *run) lowestHeld() uint64 {
	if r.heldUnordered {
		return r.lowestWaiting()
	}
	for r.heldFrom < len(r.held) && !r.holds(r.held[r.heldFrom]) {
		r.heldFrom++
	}
	if r.heldFrom == len(r.held) {
		r.held, r.heldFrom = r.held[:0], 0
		return math.MaxUint64
	}
	if live := len(r.rows) * r.m; len(r.held) > 1024 && len(r.held) > 2*live {
		kept := r.held[:0]
		for _, h := range r.held[r.heldFrom:] {
			if r.holds(h) {
				kept = append(kept, h)
			}
		}
		r.held, r.heldFrom = kept, 0
	}
	return r.held[r.heldFrom].seq
}

// lowestWaiting is lowestHeld by its definition: a visit of every waiting row's
// results (MaxUint64: none).
func (r *run) lowestWaiting() uint64 {
	lowest := uint64(math.MaxUint64)
	for _, rs := range r.rows {
		for _, seq := range rs.resultSeqs {
			if seq != 0 && seq < lowest {
				lowest = seq
			}
		}
	}
	return lowest
}

// purge is one request to the purger: the messages of subject below a sequence, or
// (subject empty) the message at seq.
type purge struct {
	stream  jetstream.Stream
	subject string
	below   uint64
	seq     uint64
}

// purger deletes emitted rows' messages, a few requests at a time, until ctx ends.
func (c *Collector) purger(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-c.purges:
			if c.fence.Check() != nil {
				continue // not ours to delete any more
			}
			var err error
			if p.subject != "" {
				err = p.stream.Purge(ctx, jetstream.WithPurgeSubject(p.subject), jetstream.WithPurgeSequence(p.below))
			} else {
				err = p.stream.DeleteMsg(ctx, p.seq)
			}
			if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && ctx.Err() == nil {
				c.log.Debug().Err(err).Str("subject", p.subject).Uint64("below", p.below).Uint64("seq", p.seq).Msg("purge emitted messages")
			}
		}
	}
}

// finish writes the summary of a sealed run whose rows are all out and its finished
// checkpoint, closes its files (they are final), then completes it (complete, store.go:
// store its files, say finished, purge what is left of it).
func (c *Collector) finish(ctx context.Context, r *run) error {
	if r.out.CSVNeedsColumns() { // no well-formed row in the whole run
		if err := r.setCSVColumns(nil); err != nil {
			return err
		}
	}
	if err := c.widenCSV(r); err != nil {
		return err
	}
	off, err := r.out.Sync()
	if err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	r.finished = true
	open := r.open
	open.Order = r.order // the order its files are in
	openRec, _ := json.Marshal(&open)
	if err := r.out.WriteFile(sink.OpenJSON, append(openRec, '\n')); err != nil {
		return err
	}
	sum := Summary{Run: r.id, Status: "completed", Rows: r.total, Stats: r.stats, Started: r.started, Finished: time.Now().UTC(),
		Dir: r.out.Dir(), Results: r.out.Dir() + "/" + sink.ResultsJSONL, Errors: r.out.Dir() + "/" + sink.ErrorsJSONL}
	sum.WallSeconds = sum.Finished.Sub(r.started).Seconds()
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := r.out.WriteFile(sink.Summary, append(b, '\n')); err != nil {
		return err
	}
	if err := c.writeCheckpoint(r, off); err != nil {
		return err
	}
	r.out.Close()
	r.out = nil
	for i := range r.rows {
		c.dropRow(r, i)
	}
	r.rows = nil
	return c.complete(ctx, r)
}

// widenCSV writes the CSV files again, before the run's last checkpoint, when rows had
// keys their headers lack (JSONL rows with keys the first well-formed row had not): the
// keys then have their columns, nothing of a row is left out of the CSV. A crash before
// the checkpoint is safe: the files are written again from the JSONL files then.
func (c *Collector) widenCSV(r *run) error {
	extra := r.out.CSVExtra()
	if len(extra) == 0 {
		return nil
	}
	c.log.Info().Str("run", r.id).Strs("columns", extra).Msg("rows have keys the CSV header lacked: CSV files written again with their columns")
	if err := r.out.WidenCSV(); err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	return nil
}

// cleanup removes everything of a finished run from the bus but its final status:
// its subjects in the input, results and jobs streams (its submitted records went before
// the final status, see finish), its job consumers, and
// its keys "<run>.*" in the runs and retry buckets (purged, so that watchers see it,
// then the purge markers removed). It is idempotent: a collector that finds a finished
// run's data on start runs it again. Failures are logged; a restart retries them.
func (c *Collector) cleanup(ctx context.Context, id string, deployments []string) error {
	if err := c.fence.Check(); err != nil {
		return fmt.Errorf("clean up run %s: %w", id, err)
	}
	log := c.log.With().Str("run", id).Logger()
	for _, p := range []struct {
		s       jetstream.Stream
		subject string
	}{
		{c.input, c.names.InputRunFilter(id)}, {c.results, c.names.ResultRunFilter(id)},
		{c.jobs, c.names.JobRunFilter(id)},
	} {
		if err := p.s.Purge(ctx, jetstream.WithPurgeSubject(p.subject)); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Str("subject", p.subject).Msg("purge a finished run")
		}
	}
	for _, dep := range deployments { // the run's job consumers are done
		if err := c.js.DeleteConsumer(ctx, c.names.StreamJobs(), queue.JobConsumerName(dep, id)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			log.Debug().Err(err).Msg("delete job consumer")
		}
	}
	for _, kv := range []jetstream.KeyValue{c.runsKV, c.retryKV} {
		keys, err := kv.ListKeysFiltered(ctx, id+".>")
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Str("bucket", kv.Bucket()).Msg("list keys of a finished run")
			}
			continue
		}
		for k := range keys.Keys() {
			if err := kv.Purge(ctx, k); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("key", k).Msg("purge a key of a finished run")
			}
		}
		_ = keys.Stop()
		if s, err := c.js.Stream(ctx, "KV_"+kv.Bucket()); err == nil {
			if err := s.Purge(ctx, jetstream.WithPurgeSubject("$KV."+kv.Bucket()+"."+id+".>")); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("bucket", kv.Bucket()).Msg("purge the purge markers of a finished run")
			}
		}
	}
	return nil
}

// Summary is written to summary.json when a sealed run is complete.
type Summary struct {
	Run         string    `json:"run"`
	Status      string    `json:"status"`
	Rows        int       `json:"rows_total"`
	Stats       Stats     `json:"stats"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	WallSeconds float64   `json:"wall_seconds"`
	Dir         string    `json:"dir"`
	Results     string    `json:"results"`
	Errors      string    `json:"errors"`
	// Attempt is the number of resubmissions merged into the files (mqctl resubmit);
	// Stats then count the merged rows and every attempt's calls.
	Attempt int `json:"attempt,omitempty"`
}
