package input

import (
	"strings"
	"testing"
)

// A file saved in another encoding than UTF-8 (Latin-1 or Windows-1252 from a
// spreadsheet: "Café" as 43 61 66 E9) is not read as data: its bytes would reach the
// model and the output as U+FFFD ("Caf\ufffd"), silently, in every such row. The
// header already refuses a column name that is not UTF-8; a record with such a value
// is malformed, naming its line and column, and the other rows go on.
func TestARecordThatIsNotUTF8IsMalformed(t *testing.T) {
	t.Parallel()
	t.Run("csv", func(t *testing.T) {
		r, err := NewCSV(strings.NewReader("name,note\nCaf\xe9,ok\nAnn,fine\n"))
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, r)
		if len(got) != 2 {
			t.Fatalf("rows %+v, want 2", got)
		}
		if !strings.Contains(got[0].Err, "line 2") || !strings.Contains(got[0].Err, "UTF-8") || !strings.Contains(got[0].Err, `"name"`) || got[0].Raw != "Caf\xe9,ok" {
			t.Errorf("row 0: %+v, want malformed: line 2, column \"name\" not UTF-8, raw kept", got[0])
		}
		if got[1].Err != "" || got[1].Values[0] != "Ann" {
			t.Errorf("row 1: %+v, want a good row", got[1])
		}
	})
	t.Run("jsonl", func(t *testing.T) {
		got := readAll(t, NewJSONL(strings.NewReader("{\"name\":\"Caf\xe9\"}\n{\"name\":\"Ann\"}\n")))
		if len(got) != 2 {
			t.Fatalf("rows %+v, want 2", got)
		}
		if !strings.Contains(got[0].Err, "line 1") || !strings.Contains(got[0].Err, "UTF-8") {
			t.Errorf("row 0: %+v, want malformed: line 1 not UTF-8", got[0])
		}
		if got[1].Err != "" || got[1].Values[0] != "Ann" {
			t.Errorf("row 1: %+v, want a good row", got[1])
		}
	})
}
