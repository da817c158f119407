package input

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Format is the format of an input stream.
type Format string

// Supported input formats.
const (
	CSV   Format = "csv"
	JSONL Format = "jsonl"
)

// Reader streams the records of an input table.
type Reader interface {
	// Header returns the column names: for CSV the header record; for JSONL
	// nil (columns vary per row).
	Header() []string
	// Next returns the next record, io.EOF at the end. A malformed record is
	// returned with Err set and a nil error; a non-nil error means the stream
	// itself failed (I/O error) and reading must stop.
	Next() (Row, error)
}

var (
	_ Reader = (*CSVReader)(nil)
	_ Reader = (*JSONLReader)(nil)
)

// ParseFormat parses a format name as given on a command line: "csv", or
// "jsonl" (also "ndjson", "jsonlines"), case-insensitively.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "csv":
		return CSV, nil
	case "jsonl", "ndjson", "jsonlines":
		return JSONL, nil
	}
	return "", fmt.Errorf("unknown input format %q (want csv or jsonl)", s)
}

// FormatFromPath guesses the format of a file from its extension: .csv is
// CSV; .jsonl, .ndjson and .jsonlines are JSONL. Any other path, including
// "-" for stdin, is an error naming the path.
func FormatFromPath(path string) (Format, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		return CSV, nil
	case ".jsonl", ".ndjson", ".jsonlines":
		return JSONL, nil
	}
	return "", fmt.Errorf("cannot tell input format of %q from its extension (want .csv, .jsonl, .ndjson or .jsonlines)", path)
}

// NewReader returns a reader of format f over r. For CSV the header is read
// at once, so a missing or broken header is reported here.
func NewReader(r io.Reader, f Format) (Reader, error) {
	switch f {
	case CSV:
		cr, err := NewCSV(r)
		if err != nil {
			return nil, err
		}
		return cr, nil
	case JSONL:
		return NewJSONL(r), nil
	}
	return nil, fmt.Errorf("unknown input format %q (want csv or jsonl)", string(f))
}
