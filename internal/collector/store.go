package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// complete ends a run whose files are final (finish, or a finished checkpoint found
// when the run is opened again): it stores the run's output set in the results bucket,
// then writes the status that says finished (and stored), then removes the run from the
// bus (cleanup). Storing comes before the status and the open record goes last, so a
// run that says finished has its files stored, and a collector stopped anywhere in
// between, or its successor, does the rest when it reads the open record again: each
// file is uploaded once (archive.Store skips an object that holds the file's bytes).
// A store that fails keeps the run, not finished, and is tried again with a growing
// wait (retryStores); the fold of other runs goes on.
func (c *Collector) complete(ctx context.Context, r *run) error {
	c.runs[r.id] = r
	if !r.storeDone {
		if err := c.store(ctx, r); err != nil {
			if errors.Is(err, lease.ErrLost) || errors.Is(err, errFault) {
				return err
			}
			if ctx.Err() != nil {
				return nil // stopping: the next collector stores it
			}
			r.storeWait = min(max(2*r.storeWait, time.Second), time.Minute)
			r.storeAt = time.Now().Add(r.storeWait)
			c.m.storeFailures.Inc()
			c.log.Warn().Err(err).Str("run", r.id).Stringer("retry_in", r.storeWait).Msg("store a completed run's files; the run says finished once they are stored")
			return nil
		}
		r.storeDone = true
	}
	if err := c.injectFault(faultBeforeStatus); err != nil {
		return err
	}
	// The run's submitted records go before its status says finished: a submitter that
	// reuses the run id once it reads "finished" must see its new records refused by the
	// producer service (finished_run), not purged here unseen.
	if err := c.fence.Check(); err != nil {
		return fmt.Errorf("purge run %s: %w", r.id, err)
	}
	if err := c.submit.Purge(ctx, jetstream.WithPurgeSubject(c.names.SubmitRunFilter(r.id))); err != nil && ctx.Err() == nil {
		c.log.Warn().Err(err).Str("run", r.id).Msg("purge a finished run's submitted records")
	}
	if err := c.publishStatus(ctx, r); err != nil {
		return err
	}
	c.announceCompleted(r)
	if err := c.fence.Check(); err != nil {
		return fmt.Errorf("purge run %s: %w", r.id, err)
	}
	c.forget(r.id)
	if err := c.cleanup(ctx, r.id, r.open.Deployments); err != nil {
		return err
	}
	c.log.Info().Str("run", r.id).Int("rows_ok", r.stats.RowsOK).Int("rows_failed", r.stats.RowsFailed).Bool("stored", !c.cfg.NoStore).Msg("run completed")
	return nil
}

// announceCompleted publishes the run's completed event on its status subject (core
// NATS, docs/WIRE.md "Submitting a run to the producer service"), after its status says
// finished: a submitter subscribed there learns that the run's files are final.
func (c *Collector) announceCompleted(r *run) {
	ev := wire.SubmitEvent{V: wire.Version, Run: r.id, State: wire.SubmitCompleted, Rows: r.total,
		RowsOK: r.stats.RowsOK, RowsFailed: r.stats.RowsFailed, Time: time.Now().UTC()}
	b, _ := json.Marshal(ev)
	if err := c.js.Conn().Publish(c.names.StatusSubject(r.id), b); err != nil {
		c.log.Debug().Err(err).Str("run", r.id).Msg("publish the completed event")
	}
}

// store uploads the run's output set to the results bucket (nothing with NoStore),
// creating the bucket again if an operator deleted it.
func (c *Collector) store(ctx context.Context, r *run) error {
	if err := c.injectFault(faultBeforeStore); err != nil {
		return err
	}
	if r.open.Resubmit != nil { // a resubmission: its rows go into the original run's files first
		if err := c.merge(ctx, r); err != nil {
			return err
		}
	}
	if c.cfg.NoStore {
		return nil
	}
	if c.obs == nil {
		return errors.New("results bucket not open")
	}
	dir := c.runDir(r.id)
	names := outputFiles(dir, c.cfg.CSV)
	var n int
	err := c.withResults(ctx, func() (err error) {
		n, err = archive.Store(ctx, c.obs, r.id, dir, names, c.fence.Check)
		return err
	})
	if err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	c.log.Info().Str("run", r.id).Int("files", len(names)).Int("uploaded", n).Msg("run's files stored in " + c.names.BucketResults())
	return nil
}

// outputFiles is the output set of a run's directory: the CSV files only when written
// (csv) and present (a run finished before the collector got --csv has none), the
// files of a resubmission when present (resubmit.jsonl: a run with error rows).
func outputFiles(dir string, csv bool) []string {
	var names []string
	for _, n := range sink.OutputFiles(csv) {
		if sink.Optional(n) {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				continue
			}
		}
		names = append(names, n)
	}
	return names
}

// retryStores completes again the runs whose store failed, once their wait is over.
func (c *Collector) retryStores(ctx context.Context) error {
	now := time.Now()
	for _, r := range c.runs {
		if r.finished && !r.storeDone && now.After(r.storeAt) {
			if err := c.complete(ctx, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadSummaryTotal sets a finished run's row count from its summary.json (the seal may
// be read after the open record, or not at all once the run is being purged).
func loadSummaryTotal(dir string, r *run) {
	b, err := os.ReadFile(filepath.Join(dir, sink.Summary))
	if err != nil {
		return
	}
	var s Summary
	if json.Unmarshal(b, &s) == nil {
		r.sealed, r.total = true, s.Rows
	}
}

// Fault injection points, for tests that stop the collector where a crash could.
const (
	faultBeforeOpen   = "before-open"   // the topology is checked, the results bucket not yet opened
	faultBeforeStore  = "before-store"  // the files are final, nothing stored yet
	faultBeforeStatus = "before-status" // the files are stored, the status not written
	faultMidSwap      = "mid-swap"      // a resubmission's merged files are half renamed in
)

// errFault is what a test's fault hook returns: the collector stops there, as if killed.
var errFault = errors.New("injected fault")

// injectFault calls the test's fault hook, if any, at point.
func (c *Collector) injectFault(point string) error {
	if c.fault == nil {
		return nil
	}
	return c.fault(point)
}
