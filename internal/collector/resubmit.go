package collector

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// A resubmission (mqctl resubmit) is a run of its own on the bus, "<run>-r<n>", whose
// rows are the original run's error rows (each with its source_row). When it is
// complete, merge writes the original run's files again, every row once with its
// latest outcome, before the resubmission's own files are stored and its status says
// finished:
//
//  1. the original run's files (its latest merged view; fetched from the results bucket
//     when not on this volume) are merged with the resubmission's into a directory of
//     their own, ".resubmit-r<n>", closed by a "done" marker: the original's success
//     lines are kept, its error lines less the rows asked again, and the resubmission's
//     lines of both kinds added; in row order for a run in input order, after the
//     original's for a run in completion order;
//  2. its files are renamed over the run's, summary.json (attempt n) last;
//  3. they are stored in the results bucket, and the run's status gets the new counts
//     and attempt n.
//
// Each step can be stopped and done again: a summary that says attempt n means step 2
// is over, a marker that step 1 is. Only error rows have resubmit.jsonl entries in the
// original's files: the row of each of its success lines is not stored, and need not
// be (in input order they are the rows that are not error rows, in order).

// mergeDone is the marker of a complete merged view.
const mergeDone = "done"

// merge merges resubmission r into its original run's files, stores them and updates
// the run's status. It is idempotent.
func (c *Collector) merge(ctx context.Context, r *run) error {
	of := r.open.Resubmit
	dir := c.runDir(of.Run)
	sum, err := c.originalView(ctx, of.Run, dir)
	if err != nil {
		return err
	}
	if sum.Attempt < of.Attempt {
		tmp := filepath.Join(dir, ".resubmit-r"+strconv.Itoa(of.Attempt))
		if _, err := os.Stat(filepath.Join(tmp, mergeDone)); err != nil {
			if err := c.buildMerged(dir, c.runDir(r.id), tmp, sum, of.Attempt); err != nil {
				return fmt.Errorf("merge resubmission %s into run %s: %w", r.id, of.Run, err)
			}
		}
		if err := c.swapIn(tmp, dir); err != nil {
			return fmt.Errorf("merge resubmission %s into run %s: %w", r.id, of.Run, err)
		}
		if sum, err = readSummary(dir); err != nil {
			return err
		}
	}
	if !c.cfg.NoStore {
		if c.obs == nil {
			return errors.New("results bucket not open")
		}
		if _, err := archive.Store(ctx, c.obs, of.Run, dir, outputFiles(dir, fileExists(filepath.Join(dir, sink.ResultsCSV))), c.fence.Check); err != nil {
			return fmt.Errorf("store run %s: %w", of.Run, err)
		}
	}
	if err := c.publishMerged(ctx, of.Run, sum); err != nil {
		return err
	}
	c.log.Info().Str("run", of.Run).Str("resubmission", r.id).Int("attempt", sum.Attempt).Int("rows_ok", sum.Stats.RowsOK).
		Int("rows_failed", sum.Stats.RowsFailed).Msg("resubmission merged into the run's files")
	return nil
}

// originalView returns the summary of the run's files in dir, fetching them from the
// results bucket first when they are not there (a collector on another volume).
func (c *Collector) originalView(ctx context.Context, run, dir string) (Summary, error) {
	if _, err := os.Stat(filepath.Join(dir, sink.Summary)); errors.Is(err, os.ErrNotExist) {
		if c.cfg.NoStore {
			return Summary{}, fmt.Errorf("run %s: no files in %s and results are not stored: cannot merge its resubmission", run, dir)
		}
		if err := c.fence.Check(); err != nil {
			return Summary{}, err
		}
		if _, err := archive.Fetch(ctx, c.js, c.names, run, dir); err != nil {
			return Summary{}, fmt.Errorf("fetch run %s to merge its resubmission: %w", run, err)
		}
	}
	return readSummary(dir)
}

func readSummary(dir string) (Summary, error) {
	var s Summary
	b, err := os.ReadFile(filepath.Join(dir, sink.Summary))
	if err != nil {
		return s, fmt.Errorf("read summary: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode summary %s: %w", dir, err)
	}
	return s, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// buildMerged writes into tmp the merged view of the original files in dir and the
// resubmission's in sub, then the summary, then the marker.
func (c *Collector) buildMerged(dir, sub, tmp string, orig Summary, attempt int) error {
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("clear %s: %w", tmp, err)
	}
	subSum, err := readSummary(sub)
	if err != nil {
		return err
	}
	var open wire.Open
	if b, err := os.ReadFile(filepath.Join(dir, sink.OpenJSON)); err != nil {
		return fmt.Errorf("read %s (a run finished by an earlier build cannot be merged): %w", sink.OpenJSON, err)
	} else if err := json.Unmarshal(b, &open); err != nil {
		return fmt.Errorf("decode %s: %w", sink.OpenJSON, err)
	}
	failed, err := entryRows(filepath.Join(dir, sink.ResubmitJSONL))
	if err != nil {
		return err
	}
	redone, err := entryRows(filepath.Join(sub, sink.ResubmitJSONL))
	if err != nil {
		return err
	}
	withCSV := fileExists(filepath.Join(dir, sink.ResultsCSV))
	out, err := sink.Open(tmp, sink.Options{CSV: withCSV, RawFormulas: c.cfg.CSVRawFormulas, Guard: c.fence.Check}, nil)
	if err != nil {
		return err
	}
	defer out.Close()
	if withCSV {
		okCols, err := csvHeader(filepath.Join(dir, sink.ResultsCSV))
		if err != nil {
			return err
		}
		errCols, err := csvHeader(filepath.Join(dir, sink.ErrorsCSV))
		if err != nil {
			return err
		}
		if err := out.SetCSVColumns(okCols, errCols); err != nil {
			return err
		}
	}
	byRow := open.Order != wire.OrderCompletion
	counts := [2]int{}
	for k, ok := range []bool{true, false} {
		var a *lines
		if ok { // the original's success lines: the rows that are not error rows, in order
			a, err = openLines(dir, ok, failed)
		} else {
			a, err = openLines(dir, ok, nil)
		}
		if err != nil {
			return err
		}
		b, err := openLines(sub, ok, nil)
		if err != nil {
			a.close()
			return err
		}
		counts[k], err = mergeKind(out, ok, a, b, redone, byRow)
		a.close()
		b.close()
		if err != nil {
			return err
		}
	}
	if _, err := out.Sync(); err != nil {
		return err
	}
	if !fileExists(filepath.Join(tmp, sink.ResubmitJSONL)) {
		// No error row left: an empty file, over the one stored before.
		if err := out.WriteFile(sink.ResubmitJSONL, nil); err != nil {
			return err
		}
	}
	sum := orig
	sum.Attempt, sum.Finished = attempt, time.Now().UTC()
	sum.Stats.RowsOK, sum.Stats.RowsFailed = counts[0], counts[1]
	sum.Stats.Calls += subSum.Stats.Calls
	sum.Stats.Retries += subSum.Stats.Retries
	sum.Stats.PromptTokens += subSum.Stats.PromptTokens
	sum.Stats.CompletionTokens += subSum.Stats.CompletionTokens
	sum.Stats.Cost += subSum.Stats.Cost
	sum.Stats.Cached += subSum.Stats.Cached
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := out.WriteFile(sink.Summary, append(b, '\n')); err != nil {
		return err
	}
	return out.WriteFile(mergeDone, nil)
}

// swapIn renames the merged files of tmp over dir's, summary.json last, then removes
// tmp. A file already renamed (a swap stopped halfway) is not in tmp any more.
func (c *Collector) swapIn(tmp, dir string) error {
	names := []string{sink.ResultsJSONL, sink.ErrorsJSONL, sink.ResultsCSV, sink.ErrorsCSV, sink.ResubmitJSONL, sink.Summary}
	for i, n := range names {
		if err := c.fence.Check(); err != nil {
			return err
		}
		err := os.Rename(filepath.Join(tmp, n), filepath.Join(dir, n))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rename %s: %w", n, err)
		}
		if i == 0 {
			if err := c.injectFault(faultMidSwap); err != nil {
				return err
			}
		}
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the renames, durable before tmp goes
		d.Close()
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove %s: %w", tmp, err)
	}
	return nil
}

// entryRows is the set of rows a resubmit.jsonl has entries for (none when it is
// missing: a run without error rows).
func entryRows(path string) (map[int]bool, error) {
	rows := map[int]bool{}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return rows, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", sink.ResubmitJSONL, err)
	}
	defer f.Close()
	sc := newScanner(f)
	for sc.Scan() {
		var e struct {
			Row int `json:"row"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		rows[e.Row] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return rows, nil
}

func csvHeader(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read csv header: %w", err)
	}
	defer f.Close()
	rec, err := csv.NewReader(f).Read()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read csv header %s: %w", path, err)
	}
	return rec, nil
}

func newScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	return sc
}

// lines reads the lines of one kind of a run's output (results or errors) with their
// rows: from the resubmit.jsonl entries of that kind (the k-th with the k-th line),
// or, for the original's success lines, which have none, counted from 0 past the rows
// in skip (the error rows).
type lines struct {
	data, entries *os.File // entries nil: rows counted
	ds, es        *bufio.Scanner
	ok            bool
	skip          map[int]bool
	nextRow       int
	// The current line.
	row   int
	line  []byte
	entry []byte
	done  bool
}

// openLines opens one kind of the lines in dir; skip non-nil counts their rows.
func openLines(dir string, ok bool, skip map[int]bool) (*lines, error) {
	name := sink.ErrorsJSONL
	if ok {
		name = sink.ResultsJSONL
	}
	d, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	l := &lines{data: d, ds: newScanner(d), ok: ok, skip: skip}
	if skip == nil {
		e, err := os.Open(filepath.Join(dir, sink.ResubmitJSONL))
		switch {
		case err == nil:
			l.entries, l.es = e, newScanner(e)
		case !errors.Is(err, os.ErrNotExist): // missing: no entries, so no lines either
			d.Close()
			return nil, fmt.Errorf("read %s: %w", sink.ResubmitJSONL, err)
		}
	}
	return l, l.next()
}

func (l *lines) close() {
	l.data.Close()
	if l.entries != nil {
		l.entries.Close()
	}
}

// next moves to the next line of the kind, or sets done.
func (l *lines) next() error {
	if l.skip != nil {
		if !l.ds.Scan() {
			l.done = true
			return l.ds.Err()
		}
		for l.skip[l.nextRow] {
			l.nextRow++
		}
		l.row, l.line = l.nextRow, append(l.line[:0], l.ds.Bytes()...)
		l.nextRow++
		return nil
	}
	for l.es != nil && l.es.Scan() {
		var e struct {
			Row int  `json:"row"`
			OK  bool `json:"ok"`
		}
		if err := json.Unmarshal(l.es.Bytes(), &e); err != nil {
			return fmt.Errorf("%s: %w", l.entries.Name(), err)
		}
		if e.OK != l.ok {
			continue
		}
		if !l.ds.Scan() {
			return fmt.Errorf("%s has fewer lines than its %s says", l.data.Name(), sink.ResubmitJSONL)
		}
		l.row, l.entry, l.line = e.Row, append(l.entry[:0], l.es.Bytes()...), append(l.line[:0], l.ds.Bytes()...)
		return nil
	}
	if l.es != nil {
		if err := l.es.Err(); err != nil {
			return fmt.Errorf("read %s: %w", l.entries.Name(), err)
		}
	}
	if l.ds.Scan() {
		return fmt.Errorf("%s has more lines than its %s says (a run started by an earlier build cannot be merged)", l.data.Name(), sink.ResubmitJSONL)
	}
	l.done = true
	return nil
}

// mergeKind writes the lines of one kind of the original (a), less the rows the
// resubmission redid, and of the resubmission (b): in row order when byRow, else a's
// then b's. An error line's entry goes to the merged resubmit.jsonl. It returns how many
// lines it wrote.
func mergeKind(out *sink.Run, ok bool, a, b *lines, redone map[int]bool, byRow bool) (int, error) {
	n := 0
	write := func(l *lines) error {
		var err error
		if ok {
			err = out.WriteOK(l.line)
		} else {
			err = out.WriteError(l.line)
			if err == nil {
				err = out.WriteResubmit(l.entry)
			}
		}
		if err != nil {
			return err
		}
		n++
		return l.next()
	}
	for !a.done || !b.done {
		if !a.done && !ok && redone[a.row] {
			if err := a.next(); err != nil {
				return n, err
			}
			continue
		}
		l := b
		if b.done || (!a.done && (!byRow || a.row <= b.row)) {
			l = a
		}
		if err := write(l); err != nil {
			return n, err
		}
	}
	return n, nil
}

// publishMerged writes the run's status after a merge: the merged counts and the
// attempt, by compare-and-set (a later attempt's status is never overwritten).
func (c *Collector) publishMerged(ctx context.Context, id string, sum Summary) error {
	for range 5 {
		if err := c.fence.Check(); err != nil {
			return fmt.Errorf("publish status of run %s: %w", id, err)
		}
		var st wire.RunStatus
		e, err := c.runsKV.Get(ctx, id)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			e = nil
		case err != nil:
			return fmt.Errorf("read status of run %s: %w", id, err)
		default:
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				return fmt.Errorf("decode status of run %s: %w", id, err)
			}
			if st.Attempt >= sum.Attempt {
				return nil
			}
		}
		st.Run, st.State, st.Finished = id, wire.RunCompleted, true
		st.Total, st.Emitted, st.Next = sum.Rows, sum.Stats.RowsOK+sum.Stats.RowsFailed, sum.Rows
		st.OK, st.Failed, st.Attempt = sum.Stats.RowsOK, sum.Stats.RowsFailed, sum.Attempt
		st.Stored, st.Updated, st.LeaseEpoch = !c.cfg.NoStore, time.Now().UTC(), c.fence.Epoch()
		if st.OutDir == "" {
			st.OutDir = c.runDir(id)
		}
		b, _ := json.Marshal(st)
		if e == nil {
			_, err = c.runsKV.Create(ctx, id, b)
		} else {
			_, err = c.runsKV.Update(ctx, id, b, e.Revision())
		}
		if queue.IsKeyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("publish status of run %s: %w", id, err)
		}
		return nil
	}
	return fmt.Errorf("publish status of run %s: too much contention", id)
}
