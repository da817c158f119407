package producer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/wire"
)

// RenderRow renders the M jobs of row row of run from the row's data as the collector
// wrote it (a JSON object, keys in input order), as the producer rendered them from
// the input record: mqctl resubmit asks again with it the queries of an error row whose
// jobs were not kept (a query that had succeeded). The error is the row's, as an error
// row would carry it.
func RenderRow(p *config.Pipeline, run string, row int, data json.RawMessage) ([]wire.Job, error) {
	rec, err := input.NewJSONL(bytes.NewReader(data)).Next()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("render row: no data")
	}
	if err != nil {
		return nil, fmt.Errorf("render row: %w", err)
	}
	rec.Index = row
	pl := planRow(p, p.Queries(), run, rec, nil)
	if pl.rowErr {
		return nil, fmt.Errorf("render row %d: %s: %s", row, pl.row.Error.Reason, pl.row.Error.Message)
	}
	return pl.jobs, nil
}
