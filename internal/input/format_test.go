package input

import (
	"strings"
	"testing"
)

func TestParseFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Format
		wantErr string
	}{
		{in: "csv", want: CSV},
		{in: " CSV ", want: CSV},
		{in: "jsonl", want: JSONL},
		{in: "NDJSON", want: JSONL},
		{in: "jsonlines", want: JSONL},
		{in: "json", wantErr: `unknown input format "json" (want csv or jsonl)`},
		{in: "", wantErr: `unknown input format "" (want csv or jsonl)`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := ParseFormat(tt.in)
			checkFormat(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestFormatFromPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path    string
		want    Format
		wantErr string
	}{
		{path: "rows.csv", want: CSV},
		{path: "/data/ROWS.CSV", want: CSV},
		{path: "rows.jsonl", want: JSONL},
		{path: "dir.v2/rows.ndjson", want: JSONL},
		{path: "rows.jsonlines", want: JSONL},
		{path: "rows.json", wantErr: `cannot tell input format of "rows.json" from its extension (want .csv, .jsonl, .ndjson or .jsonlines)`},
		{path: "rows.csv.gz", wantErr: `cannot tell input format of "rows.csv.gz" from its extension (want .csv, .jsonl, .ndjson or .jsonlines)`},
		{path: "-", wantErr: `cannot tell input format of "-" from its extension (want .csv, .jsonl, .ndjson or .jsonlines)`},
		{path: "csv", wantErr: `cannot tell input format of "csv" from its extension (want .csv, .jsonl, .ndjson or .jsonlines)`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			got, err := FormatFromPath(tt.path)
			checkFormat(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func checkFormat(t *testing.T, got Format, err error, want Format, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || err.Error() != wantErr {
			t.Errorf("got %q, %v; want error %q", got, err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
}

func TestNewReader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		format  Format
		in      string
		wantErr string
	}{
		{name: "csv", format: CSV, in: "a\n1\n"},
		{name: "jsonl", format: JSONL, in: "{\"a\":1}\n"},
		{name: "csv with a bad header", format: CSV, in: "", wantErr: "read csv header: empty input"},
		{name: "unknown format", format: "xml", in: "<a/>", wantErr: `unknown input format "xml" (want csv or jsonl)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewReader(strings.NewReader(tt.in), tt.format)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("NewReader: got %v, want error %q", err, tt.wantErr)
				}
				if r != nil {
					t.Errorf("NewReader: got non-nil Reader %#v with an error", r)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewReader: %v", err)
			}
			rows := readAll(t, r)
			if len(rows) != 1 || rows[0].Err != "" {
				t.Errorf("got rows %+v, want one good row", rows)
			}
		})
	}
}
