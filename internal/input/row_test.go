package input

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRowJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		format Format
		in     string
		want   string
	}{
		{
			name:   "JSONL keeps key order and numbers as written",
			format: JSONL,
			in:     `{"z":12345678901234567890,"a":1.50,"m":-1e-7,"b":1E+400,"s":"<&>","t":true,"n":null}`,
			want:   `{"z":12345678901234567890,"a":1.50,"m":-1e-7,"b":1E+400,"s":"<&>","t":true,"n":null}`,
		},
		{
			name:   "JSONL nested values are written as they came, key order and numbers kept",
			format: JSONL,
			in:     `{ "o" : { "y" : [ 1.0 , "é" ] , "x" : 10000000000000000000001 } , "a" : [ ] }`,
			want:   `{"o":{"y":[1.0,"é"],"x":10000000000000000000001},"a":[]}`,
		},
		{
			name:   "JSONL nested objects among other values keep their key order",
			format: JSONL,
			in:     `{"id":1,"tags":{"z":"<&>","a":"é"},"n":2,"l":[{"y":1,"x":{"q":0,"b":1}}]}`,
			want:   `{"id":1,"tags":{"z":"<&>","a":"é"},"n":2,"l":[{"y":1,"x":{"q":0,"b":1}}]}`,
		},
		{
			name:   "JSONL string escapes",
			format: JSONL,
			in:     `{"k\"q":"line\nbreak\u0000\u2028","\u00e9":"\ud83d\ude00"}`,
			want:   `{"k\"q":"line\nbreak\u0000\u2028","é":"😀"}`,
		},
		{
			name:   "JSONL empty object",
			format: JSONL,
			in:     `{}`,
			want:   `{}`,
		},
		{
			name:   "CSV values are strings in header order",
			format: CSV,
			in:     "z,a,\"q\"\"x\"\n1,\"two, \"\"2\"\"\",\n",
			want:   `{"z":"1","a":"two, \"2\"","q\"x":""}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewReader(strings.NewReader(tt.in), tt.format)
			if err != nil {
				t.Fatalf("NewReader: %v", err)
			}
			row, err := r.Next()
			if err != nil || row.Err != nil {
				t.Fatalf("Next: row error %v, error %v", row.Err, err)
			}
			got, err := row.JSON()
			if err != nil {
				t.Fatalf("JSON: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("JSON:\n got %s\nwant %s", got, tt.want)
			}
			if !json.Valid(got) {
				t.Errorf("JSON output is not valid JSON: %s", got)
			}
		})
	}
}

func TestRowJSONErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		row     Row
		wantErr string
	}{
		{
			name:    "malformed row",
			row:     malformed(0, 7, "x", "wrong number of fields: got 3, want 4"),
			wantErr: "encode malformed row: line 7: wrong number of fields: got 3, want 4",
		},
		{
			name:    "columns and values differ in length",
			row:     Row{Line: 3, Columns: []string{"a", "b"}, Values: []any{"1"}},
			wantErr: "encode row at line 3: 2 columns but 1 values",
		},
		{
			name:    "invalid json.Number",
			row:     Row{Line: 3, Columns: []string{"a"}, Values: []any{json.Number("1x")}},
			wantErr: `encode column "a": json: invalid number literal "1x"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := tt.row.JSON()
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("JSON error: got %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRowMapAndGet(t *testing.T) {
	t.Parallel()
	row := Row{Columns: []string{"a", "b"}, Values: []any{"1", json.Number("2")}}
	if diff := cmp.Diff(map[string]any{"a": "1", "b": json.Number("2")}, row.Map()); diff != "" {
		t.Errorf("Map mismatch (-want +got):\n%s", diff)
	}
	tests := []struct {
		name   string
		column string
		want   any
		wantOK bool
	}{
		{name: "first column", column: "a", want: "1", wantOK: true},
		{name: "second column", column: "b", want: json.Number("2"), wantOK: true},
		{name: "missing column", column: "c", want: nil, wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := row.Get(tt.column)
			if ok != tt.wantOK || !cmp.Equal(got, tt.want) {
				t.Errorf("Get(%q): got %v, %v; want %v, %v", tt.column, got, ok, tt.want, tt.wantOK)
			}
		})
	}
	if m := (Row{}).Map(); len(m) != 0 {
		t.Errorf("Map of empty row: got %v, want empty", m)
	}
}

func TestRecordError(t *testing.T) {
	t.Parallel()
	row := malformed(4, 7, "1,2,3", "wrong number of fields: got 3, want 4")
	if got, want := row.Err.Error(), "line 7: wrong number of fields: got 3, want 4"; got != want {
		t.Errorf("Error(): got %q, want %q", got, want)
	}
	var re *RecordError
	if !errors.As(row.Err, &re) || re.Line != 7 {
		t.Errorf("Err: got %#v, want *RecordError at line 7", row.Err)
	}
}

func TestCapRaw(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		in    string
		limit int
		want  string
	}{
		{name: "short", in: "abc", limit: 3, want: "abc"},
		{name: "ASCII cut", in: "abcdef", limit: 4, want: "abcd"},
		{name: "cut inside a 2-byte rune", in: "aé", limit: 2, want: "a"},
		{name: "cut after a 2-byte rune", in: "aéb", limit: 3, want: "aé"},
		{name: "cut inside a 4-byte rune", in: "a😀", limit: 4, want: "a"},
		{name: "invalid bytes are cut as is", in: "a\xff\xfe\xfd", limit: 3, want: "a\xff\xfe"},
		{name: "zero limit", in: "abc", limit: 0, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := capRaw([]byte(tt.in), tt.limit); got != tt.want {
				t.Errorf("capRaw(%q, %d): got %q, want %q", tt.in, tt.limit, got, tt.want)
			}
		})
	}
}
