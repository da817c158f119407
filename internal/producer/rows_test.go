package producer

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/wire"
)

// A JSONL record with a key that an output also writes (an output column, "_error")
// becomes a malformed_record error row that names the key in field and keeps the
// record's text in raw, as a record that does not parse keeps it: nothing of the input
// is lost. The rolling hash still reads the record's data.
func TestARecordWithAnOutputKeyIsAnErrorRowNamingTheKeyAndKeepingTheRecord(t *testing.T) {
	p, err := config.ParsePipeline([]byte(dryPipeline), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	text := `{"id":"r0","history":"fell","plan":"rest"}
{"id":"r1","history":"fell","history_accuracy_score":3,"plan":"rest"}
{"id":"r2","_error":"mine","history":"fell","plan":"rest"}
`
	in, err := input.NewReader(strings.NewReader(text), input.JSONL)
	if err != nil {
		t.Fatal(err)
	}
	first, err := in.Next()
	if err != nil {
		t.Fatal(err)
	}
	header := first.Columns
	for _, want := range []struct {
		field, raw, message string
	}{
		{"history_accuracy_score", `{"id":"r1","history":"fell","history_accuracy_score":3,"plan":"rest"}`,
			`line 2: input column "history_accuracy_score": collides with an output column of query "history_accuracy"`},
		{"_error", `{"id":"r2","_error":"mine","history":"fell","plan":"rest"}`,
			`line 3: input column "_error": reserved for error rows`},
	} {
		rec, err := in.Next()
		if err != nil {
			t.Fatal(err)
		}
		pl := planRow(p, p.Queries(), "run-1", rec, header)
		if !pl.rowErr || len(pl.jobs) != 0 {
			t.Fatalf("record %d: rowErr %v with %d jobs, want an error row without jobs", rec.Index, pl.rowErr, len(pl.jobs))
		}
		got := pl.row.Error
		wantErr := &wire.Error{Reason: wire.ReasonMalformedRecord, Message: want.message,
			Details: map[string]any{"line": rec.Line, "field": want.field, "raw": want.raw}}
		if diff := cmp.Diff(wantErr, got); diff != "" {
			t.Errorf("record %d: error (-want +got):\n%s", rec.Index, diff)
		}
		if pl.row.Data != nil {
			t.Errorf("record %d: the row carries data %s beside its error; want it in raw only", rec.Index, pl.row.Data)
		}
		if string(pl.data) != want.raw {
			t.Errorf("record %d: the rolling hash reads %q, want the record's data %q", rec.Index, pl.data, want.raw)
		}
	}
}
