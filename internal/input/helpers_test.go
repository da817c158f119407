package input

import (
	"errors"
	"io"
	"testing"
)

// rec is a Row in comparable form: Err as its message.
type rec struct {
	Index   int
	Line    int
	Columns []string
	Values  []any
	Raw     string
	Err     string
}

func toRec(r Row) rec {
	out := rec{Index: r.Index, Line: r.Line, Columns: r.Columns, Values: r.Values, Raw: r.Raw}
	if r.Err != nil {
		out.Err = r.Err.Error()
	}
	return out
}

// readAll reads r to io.EOF, failing the test on a stream error.
func readAll(t *testing.T, r Reader) []rec {
	t.Helper()
	var out []rec
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		out = append(out, toRec(row))
	}
}

// vals builds a []any of strings, as CSV rows hold.
func vals(s ...string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}
