package producer

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/wire"
)

// A row rendered again from the data the collector wrote (config.RenderRow, for mqctl
// resubmit) gives the jobs the producer published for the input record, from CSV and
// from JSONL alike.
func TestRenderRowFromWrittenDataGivesThePublishedJobs(t *testing.T) {
	p, err := config.ParsePipeline([]byte(dryPipeline), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		format input.Format
		text   string
	}{
		{"CSV", input.CSV, "id,history,plan\nr0,\"fell, twice\",\"rest <2> weeks\"\nr1,none,walk\n"},
		{"JSONL", input.JSONL, `{"id":"r0","history":"fell","plan":{"weeks":2,"note":"rest"},"n":1.50}` + "\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in, err := input.NewReader(strings.NewReader(tt.text), tt.format)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := in.Next()
			if err != nil {
				t.Fatal(err)
			}
			published := planRow(p, p.Queries(), "run-1", rec, in.Header())
			if published.rowErr {
				t.Fatalf("the record does not render: %+v", published.row.Error)
			}
			again, err := p.RenderRow("run-1", rec.Index, published.row.Data, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(published.jobs, again, cmpopts.IgnoreFields(wire.Job{}, "Enqueued")); diff != "" {
				t.Errorf("jobs rendered again (-published +again):\n%s", diff)
			}
		})
	}
}
