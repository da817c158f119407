package producer

import (
	"errors"
	"fmt"
	"io"

	"github.com/multiquery/multiquery/internal/wire"
)

// DryRunMaxPayload is the message size limit a dry run checks rows and prompts
// against: the nats-server default max_payload (1 MiB); a dry run reaches no server.
const DryRunMaxPayload = 1 << 20

// dryRunID names a dry run's jobs when Config.Run is not set.
const dryRunID = "dry-run"

// DryRun plans a run as Run does, without NATS and without publishing anything: it
// checks the pipeline and the input header (a *UsageError), reads every record and
// renders every prompt, and hands each row's plan to visit: the row (an error row
// carries its error and no job) and its jobs, as Run would publish them.
func DryRun(cfg Config, visit func(row wire.Row, jobs []wire.Job)) (Report, error) {
	if cfg.Pipeline == nil {
		return Report{}, &UsageError{errors.New("pipeline: required")}
	}
	in, err := openInput(cfg.Input, cfg.Format)
	if err != nil {
		return Report{}, err
	}
	p := cfg.Pipeline
	if err := p.CheckInputColumns(in.header); err != nil {
		return Report{}, &UsageError{fmt.Errorf("input header: %w", err)}
	}
	run := cfg.Run
	if run == "" {
		run = dryRunID
	}
	if err := wire.ValidateRunID(run); err != nil {
		return Report{}, &UsageError{fmt.Errorf("--run: %w", err)}
	}
	rep := Report{Run: run}
	queries := p.Queries()
	for {
		rec, err := in.next()
		if errors.Is(err, io.EOF) {
			return rep, nil
		}
		if err != nil {
			return rep, fmt.Errorf("read input after row %d: %w", rep.Rows, err)
		}
		pl, err := fit(planRow(p, queries, run, rec, in.header), cfg.Topology.Names, DryRunMaxPayload)
		if err != nil {
			return rep, err
		}
		rep.Rows++
		rep.Jobs += len(pl.jobs)
		if pl.rowErr {
			rep.RowErrors++
		}
		if visit != nil {
			visit(pl.row, pl.jobs)
		}
	}
}
