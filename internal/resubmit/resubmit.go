// Package resubmit owns asking a finished run's error rows again (mqctl resubmit):
// from what the collector stored of the run (its resubmit.jsonl and open.json in the
// results bucket), it publishes a resubmission, a run of its own on the bus named
// "<run>-r<n>" whose rows are the error rows (each with its source_row). A failed
// query is asked again with the job its result kept; a query that had succeeded keeps
// its answer (Options.OnlyFailed) or is rendered again from the run's pipeline
// (Options.Pipeline, the same config: its hash is checked). The collector merges the
// resubmission's rows into the run's files when it completes (collector/resubmit.go);
// docs/WIRE.md, "Resubmitting error rows", is the contract.
package resubmit

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// Options say what to ask again.
type Options struct {
	// OnlyFailed asks only the failed queries of each error row again; its other
	// queries keep their answers (their results are published for the resubmission as
	// they were, not billed again). Otherwise every query of the row is asked again.
	OnlyFailed bool
	// Pipeline is the run's pipeline, to render again the jobs that were not kept: a
	// failed result keeps its job, a success result does not (asking every query of a
	// row needs it). Its config hash must be the run's. Nil: only kept jobs are asked.
	Pipeline *config.Pipeline
}

// Report is what Start did.
type Report struct {
	Run     string `json:"run"`
	Attempt int    `json:"attempt"` // the resubmission's number, 1 for the first
	// Resubmission is the run id of the resubmission on the bus: "<run>-r<attempt>".
	Resubmission string `json:"resubmission"`
	Rows         int    `json:"rows"`     // error rows asked again
	Skipped      int    `json:"skipped"`  // error rows that cannot be: a pre-known error (nothing was asked)
	Jobs         int    `json:"jobs"`     // queries asked again
	Rendered     int    `json:"rendered"` // of which rendered again from the pipeline
	Reused       int    `json:"reused"`   // answers kept (OnlyFailed)
	// Published is false when the resubmission was already on the bus (Start was run
	// before for this attempt): only what was missing was published.
	Published bool `json:"published"`
}

// Errors of Start.
var (
	// ErrNotFinished: the run has not finished; only a finished run can be resubmitted.
	ErrNotFinished = errors.New("run not finished")
	// ErrNotResubmittable: the run's stored files lack what a resubmission needs (a run
	// finished by an earlier build).
	ErrNotResubmittable = errors.New("run cannot be resubmitted")
	// ErrNeedsPipeline: a query to ask again has no kept job (it had succeeded):
	// Options.Pipeline renders it.
	ErrNeedsPipeline = errors.New("the run's pipeline is needed")
)

// Start publishes the resubmission of a finished run's error rows and returns without
// waiting for it (status.WaitRun(Report.Resubmission) does). It is idempotent: run again
// for the same attempt (after an interruption), it publishes only what is missing, and
// nothing once the resubmission has finished. A run without error rows publishes
// nothing.
func Start(ctx context.Context, js jetstream.JetStream, names wire.Names, run string, opts Options, log zerolog.Logger) (Report, error) {
	rep := Report{Run: run}
	if err := wire.ValidateRunID(run); err != nil {
		return rep, err
	}
	kv, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil {
		return rep, fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	st, err := status.Read(ctx, kv, run)
	if err != nil {
		return rep, err
	}
	if st == nil || !st.Finished {
		return rep, fmt.Errorf("run %s: %w: resubmit it once it has finished", run, ErrNotFinished)
	}
	rep.Attempt = st.Attempt + 1
	rep.Resubmission = wire.ResubmitRunID(run, rep.Attempt)
	if err := wire.ValidateRunID(rep.Resubmission); err != nil {
		return rep, fmt.Errorf("run %s: %w: its resubmission's id %q: %w", run, ErrNotResubmittable, rep.Resubmission, err)
	}
	if sub, err := status.Read(ctx, kv, rep.Resubmission); err != nil {
		return rep, err
	} else if sub != nil && sub.Finished {
		return rep, nil // done before: its rows are merged
	}
	open, rows, err := load(ctx, js, names, run, opts, &rep)
	if err != nil {
		return rep, err
	}
	if len(rows) == 0 {
		return rep, nil
	}
	p := &publisher{js: js, names: names, log: log, run: rep.Resubmission}
	return rep, p.publish(ctx, open, rows, &rep)
}

// row is one error row to ask again: its row in the original run, its data, and per
// query the job to publish or the result to keep.
type row struct {
	source   int
	data     json.RawMessage
	jobs     []*wire.Job // per query; nil: keep kept[i]
	kept     []*wire.Result
	rendered int // jobs rendered from the pipeline
}

// load reads the run's stored open record and resubmit.jsonl (the latest merged view)
// and picks the error rows it asks again.
func load(ctx context.Context, js jetstream.JetStream, names wire.Names, run string, opts Options, rep *Report) (*wire.Open, []row, error) {
	dir, err := os.MkdirTemp("", "mqctl-resubmit-")
	if err != nil {
		return nil, nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	// What it reads, all sized by the error rows: not the rows that succeeded.
	if _, err := archive.FetchOnly(ctx, js, names, run, dir, []string{sink.ErrorsJSONL, sink.ResubmitJSONL, sink.OpenJSON}); err != nil {
		return nil, nil, fmt.Errorf("fetch run %s: %w", run, err)
	}
	errLines, err := sink.CountLines(filepath.Join(dir, sink.ErrorsJSONL))
	if err != nil {
		return nil, nil, err
	}
	if errLines == 0 {
		return nil, nil, nil // nothing to ask again
	}
	b, err := os.ReadFile(filepath.Join(dir, sink.OpenJSON))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("run %s: %w: its stored files have no %s (finished by an earlier build)", run, ErrNotResubmittable, sink.OpenJSON)
	}
	if err != nil {
		return nil, nil, err
	}
	var open wire.Open
	if err := json.Unmarshal(b, &open); err != nil {
		return nil, nil, fmt.Errorf("decode %s of run %s: %w", sink.OpenJSON, run, err)
	}
	if p := opts.Pipeline; p != nil && open.ConfigHash != "" && p.Hash() != open.ConfigHash {
		return nil, nil, fmt.Errorf("run %s: the pipeline given is not the run's (config hash %.12s, the run's %.12s)", run, p.Hash(), open.ConfigHash)
	}
	f, err := os.Open(filepath.Join(dir, sink.ResubmitJSONL))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("run %s: %w: its stored files have no %s (finished by an earlier build)", run, ErrNotResubmittable, sink.ResubmitJSONL)
	}
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var rows []row
	entries := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e wire.ResubmitEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, nil, fmt.Errorf("%s of run %s: %w", sink.ResubmitJSONL, run, err)
		}
		entries++
		r, ok, err := pick(&open, e, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("run %s: row %d: %w", run, e.Row, err)
		}
		if !ok {
			rep.Skipped++
			continue
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read %s of run %s: %w", sink.ResubmitJSONL, run, err)
	}
	if entries != errLines {
		// A run started by an earlier build and finished by this one keeps only part.
		return nil, nil, fmt.Errorf("run %s: %w: its %s holds %d of its %d error rows", run, ErrNotResubmittable, sink.ResubmitJSONL, entries, errLines)
	}
	// In row order, so that the resubmission's rows (0..K-1) are in the run's order.
	slices.SortStableFunc(rows, func(a, b row) int { return cmp.Compare(a.source, b.source) })
	rep.Rows = len(rows)
	for _, r := range rows {
		rep.Rendered += r.rendered
		for _, j := range r.jobs {
			if j != nil {
				rep.Jobs++
			} else {
				rep.Reused++
			}
		}
	}
	return &open, rows, nil
}

// pick decides how an error row is asked again: each query asked again with the job
// its failed result kept, else rendered from opts.Pipeline; with OnlyFailed, a query
// that succeeded keeps its result. ok is false for a row that cannot be asked again (a
// pre-known error: no result, no job); err for a row that needs the pipeline.
func pick(open *wire.Open, e wire.ResubmitEntry, opts Options) (r row, ok bool, err error) {
	m := len(open.Queries)
	if len(e.Results) != m {
		return row{}, false, nil
	}
	r = row{source: e.Row, data: e.Data, jobs: make([]*wire.Job, m), kept: make([]*wire.Result, m)}
	var rendered []wire.Job
	for qi, b := range e.Results {
		var res wire.Result
		if err := wire.Decode(b, &res); err != nil {
			return row{}, false, nil
		}
		bad := !res.OK || missingColumn(&res, open.Queries[qi].Columns)
		if opts.OnlyFailed && !bad {
			r.kept[qi] = &res
			continue
		}
		var job wire.Job
		if len(res.Job) > 0 && wire.Decode(res.Job, &job) == nil && job.Validate() == nil {
			r.jobs[qi] = &job
			continue
		}
		if opts.Pipeline == nil {
			return row{}, false, fmt.Errorf("query %s has no kept job (it had succeeded, or its job did not fit): %w", open.Queries[qi].Name, ErrNeedsPipeline)
		}
		if rendered == nil {
			if rendered, err = opts.Pipeline.RenderRow(open.Run, e.Row, e.Data, time.Now().UTC()); err != nil {
				return row{}, false, err
			}
		}
		job, found := findJob(rendered, open.Queries[qi].Name)
		if !found {
			return row{}, false, fmt.Errorf("query %s is not in the pipeline given", open.Queries[qi].Name)
		}
		r.jobs[qi] = &job
		r.rendered++
	}
	return r, true, nil
}

func findJob(jobs []wire.Job, query string) (wire.Job, bool) {
	for _, j := range jobs {
		if j.Query == query {
			return j, true
		}
	}
	return wire.Job{}, false
}

func missingColumn(res *wire.Result, cols []string) bool {
	for _, c := range cols {
		if _, ok := res.Fields[c]; !ok {
			return true
		}
	}
	return false
}

// publisher publishes a resubmission as the producer publishes a run: the open record,
// each row's jobs (and kept results) before its input row, then the seal; every message
// with its Nats-Msg-Id, a first writer lost counted as published.
type publisher struct {
	js    jetstream.JetStream
	names wire.Names
	log   zerolog.Logger
	run   string
}

func (p *publisher) publish(ctx context.Context, orig *wire.Open, rows []row, rep *Report) error {
	now := time.Now().UTC()
	open := *orig
	open.V, open.Run, open.Created = wire.Version, p.run, now
	open.Resubmit = &wire.Resubmission{Run: rep.Run, Attempt: rep.Attempt}
	if err := p.send(ctx, p.names.InputOpenSubject(p.run), "open."+p.run, &open); err != nil {
		return err
	}
	input, err := p.js.Stream(ctx, p.names.StreamInput())
	if err != nil {
		return fmt.Errorf("open %s: %w", p.names.StreamInput(), err)
	}
	for j, r := range rows {
		if _, err := input.GetLastMsgForSubject(ctx, p.names.InputRowSubject(p.run, j)); err == nil {
			continue // published before, with its jobs
		} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("look up row %d of %s: %w", j, p.run, err)
		}
		rep.Published = true
		for qi, q := range orig.Queries {
			if job := r.jobs[qi]; job != nil {
				job.V, job.Run, job.Row, job.Enqueued = wire.Version, p.run, j, now
				job.Resubmission = &wire.Resubmission{Run: rep.Run, Row: r.source, Attempt: rep.Attempt}
				job.Data = nil // the row goes in its own input row, with its source_row
				if err := p.send(ctx, p.names.JobSubject(job.Deployment, p.run, j, q.Name), wire.JobMsgID(p.run, j, q.Name), job); err != nil {
					return err
				}
				continue
			}
			res := *r.kept[qi]
			res.V, res.Run, res.Row = wire.Version, p.run, j
			res.Calls, res.Retries, res.Billed, res.Elapsed = 0, 0, nil, 0 // billed in its own attempt
			res.Data = nil
			if err := p.send(ctx, p.names.ResultSubject(p.run, j, q.Name), wire.ResultMsgID(p.run, j, q.Name), &res); err != nil {
				return err
			}
		}
		src := r.source
		in := wire.Row{V: wire.Version, Run: p.run, Row: j, Data: r.data, SourceRow: &src}
		if err := p.send(ctx, p.names.InputRowSubject(p.run, j), fmt.Sprintf("row.%s.%d", p.run, j), &in); err != nil {
			return err
		}
	}
	return p.send(ctx, p.names.InputSealSubject(p.run), "seal."+p.run, &wire.Seal{V: wire.Version, Run: p.run, Rows: len(rows)})
}

// send publishes v on subject with its message id, waiting out a full stream.
func (p *publisher) send(ctx context.Context, subject, msgID string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	m := nats.NewMsg(subject)
	m.Data = b
	m.Header.Set(wire.HeaderMsgID, msgID)
	if err := queue.RetryPublish(ctx, p.log, p.names, subject, func(ctx context.Context) error {
		_, err := p.js.PublishMsg(ctx, m)
		return err
	}); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}
