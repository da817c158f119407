package input

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

var csvSeeds = []string{
	"a,b,c\n1,2,3\n4,5,6\n",
	"a,b,c\r\n1,2,3\r\n",
	"\ufeffa,b\n1,2",
	" a , b \n\"x,y\",\"q\"\"q\"\n",
	"a,b\n1,\"two\nlines\"\n3,4\n",
	"a,b\n1,\"x\r\ny\"\r\n",
	"\n\na,b\n\n1,2\n\n",
	"a,b\n1\n1,2,3\n1,2\n",
	"a,b\n1,x\"y\n3,4\n",
	"a,b\n1,\"x\"y\n3,4\n",
	"a,b\n1,\"x\ny\"z\n3,4\n",
	"a,b\n1,\"2\n3,4\n",
	"a,b\n1,2\r",
	"a,b\n\r\n1,x\ry\n",
	"a\n\"\"\n\nx\n",
	"",
	"a,,b\n",
	"a,a\n",
	"a,\"b\n",
	"a,b\n\"\",\"\"\"\"\n",
}

var jsonlSeeds = []string{
	"{\"a\":1,\"b\":\"x\"}\n{\"b\":2,\"a\":null}\n",
	`{"big":12345678901234567890,"dec":1.50,"e":-1E+400}`,
	"{\"o\":{\"y\":[1,{\"k\":true}],\"x\":2.0},\"arr\":[]}\n",
	"\n  \n{\"a\":1}\r\n\r\n",
	"\ufeff{\"a\":1}",
	"{}\n[1]\n\"s\"\n42\ntrue\nnull\n",
	"{\"a\":1,\"a\":2}\n{\"a\":1,\"\\u0061\":2}\n",
	"{\"a\":\n{\"a\":NaN}\n{\"a\":1} {\"b\":2}\n",
	"{\"\\ud800\":\"\xff\"}\n",
	"{\"a\":\"" + strings.Repeat("x", 40) + "\"}\n{\"b\":1}",
}

// checkRows reads r to the end and checks the invariants every reader keeps.
// It returns the rows read.
func checkRows(t *testing.T, r Reader, maxRaw int, strictLines bool) []Row {
	t.Helper()
	var rows []Row
	prevLine := 0
	for i := 0; ; i++ {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return rows
		}
		if err != nil {
			t.Fatalf("Next: stream error from a bytes.Reader: %v", err)
		}
		if row.Index != i {
			t.Fatalf("row %d: Index %d", i, row.Index)
		}
		if row.Line < 1 || row.Line < prevLine || (strictLines && row.Line == prevLine) {
			t.Fatalf("row %d: Line %d after line %d", i, row.Line, prevLine)
		}
		prevLine = row.Line
		rows = append(rows, row)
		if row.Err != nil {
			var re *RecordError
			if !errors.As(row.Err, &re) || re.Line != row.Line {
				t.Fatalf("row %d: Err %#v, want *RecordError at line %d", i, row.Err, row.Line)
			}
			if row.Raw == "" || len(row.Raw) > maxRaw || row.Columns != nil || row.Values != nil {
				t.Fatalf("row %d: malformed row with Raw %q (%d bytes), Columns %q, Values %v", i, row.Raw, len(row.Raw), row.Columns, row.Values)
			}
			continue
		}
		if len(row.Columns) != len(row.Values) {
			t.Fatalf("row %d: %d columns, %d values", i, len(row.Columns), len(row.Values))
		}
		b, err := row.JSON()
		if err != nil {
			t.Fatalf("row %d: JSON: %v", i, err)
		}
		keys, values := decodeOrdered(t, b)
		if diff := cmp.Diff(row.Columns, keys); diff != "" {
			t.Fatalf("row %d: keys of JSON() %s differ from Columns (-Columns +keys):\n%s", i, b, diff)
		}
		for j, v := range row.Values {
			if s, ok := v.(string); ok && !utf8.ValidString(s) {
				continue // JSON() replaces invalid UTF-8, as encoding/json does
			}
			if !cmp.Equal(v, values[j]) {
				t.Fatalf("row %d: value %d: got %#v back from JSON() %s, want %#v", i, j, values[j], b, v)
			}
		}
	}
}

// decodeOrdered decodes a JSON object keeping its key order.
func decodeOrdered(t *testing.T, b []byte) ([]string, []any) {
	t.Helper()
	if !json.Valid(b) {
		t.Fatalf("JSON() returned invalid JSON: %s", b)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("JSON() %s is not an object: %v %v", b, tok, err)
	}
	keys, values := []string{}, []any{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("decode JSON() %s: %v", b, err)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("decode JSON() %s: %v", b, err)
		}
		keys = append(keys, tok.(string))
		values = append(values, v)
	}
	return keys, values
}

func FuzzCSV(f *testing.F) {
	for _, s := range csvSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewCSV(bytes.NewReader(data))
		var rows []Row
		if err == nil {
			rows = checkRows(t, r, maxRawBytes, false)
		}
		compareWithEncodingCSV(t, data, r, err, rows)

		// Tiny limits exercise the too-long and raw-capping paths.
		if r, err := newCSV(bytes.NewReader(data), 8, 5); err == nil {
			checkRows(t, r, 5, false)
		}
	})
}

// compareWithEncodingCSV checks the reader against encoding/csv: the input is
// clean for one exactly when it is clean for the other, and then both read
// the same records starting on the same lines.
func compareWithEncodingCSV(t *testing.T, data []byte, r *CSVReader, newErr error, rows []Row) {
	t.Helper()
	cr := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, utf8BOM)))
	cr.FieldsPerRecord = -1
	var recs [][]string
	var lines []int
	var stdErr error
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			stdErr = err
			break
		}
		line, _ := cr.FieldPos(0)
		recs = append(recs, rec)
		lines = append(lines, line)
	}
	stdClean := stdErr == nil && len(recs) > 0 && validHeader(recs[0])
	if stdClean {
		for _, rec := range recs[1:] {
			stdClean = stdClean && len(rec) == len(recs[0])
			for _, f := range rec {
				stdClean = stdClean && utf8.ValidString(f) // a value not UTF-8 is malformed
			}
		}
	}
	clean := newErr == nil
	for _, row := range rows {
		clean = clean && row.Err == nil
	}
	if clean != stdClean {
		var errs []error
		for _, row := range rows {
			errs = append(errs, row.Err)
		}
		t.Fatalf("input %q: clean %v (NewCSV error %v, row errors %v), encoding/csv clean %v (error %v, records %q)",
			data, clean, newErr, errs, stdClean, stdErr, recs)
	}
	if !clean {
		return
	}
	header := make([]string, len(recs[0]))
	for i, h := range recs[0] {
		header[i] = strings.TrimSpace(h)
	}
	if diff := cmp.Diff(header, r.Header()); diff != "" {
		t.Fatalf("input %q: header differs from encoding/csv (-csv +got):\n%s", data, diff)
	}
	if len(rows) != len(recs)-1 {
		t.Fatalf("input %q: %d rows, encoding/csv read %d records after the header", data, len(rows), len(recs)-1)
	}
	for i, row := range rows {
		if diff := cmp.Diff(vals(recs[i+1]...), row.Values); diff != "" {
			t.Fatalf("input %q: row %d differs from encoding/csv (-csv +got):\n%s", data, i, diff)
		}
		if row.Line != lines[i+1] {
			t.Fatalf("input %q: row %d: Line %d, encoding/csv says %d", data, i, row.Line, lines[i+1])
		}
	}
}

// validHeader applies NewCSV's rules for column names.
func validHeader(fields []string) bool {
	seen := map[string]bool{}
	for _, f := range fields {
		name := strings.TrimSpace(f)
		if name == "" || !utf8.ValidString(name) || seen[name] {
			return false
		}
		seen[name] = true
	}
	return true
}

func FuzzJSONL(f *testing.F) {
	for _, s := range jsonlSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rows := checkRows(t, NewJSONL(bytes.NewReader(data)), maxRawBytes, true)
		compareWithOracle(t, data, rows, maxRecordBytes, maxRawBytes)

		rows = checkRows(t, newJSONL(bytes.NewReader(data), 24, 7), 7, true)
		compareWithOracle(t, data, rows, 24, 7)
	})
}

// compareWithOracle checks each line of data against a plain reading of the
// JSONL rules with encoding/json.
func compareWithOracle(t *testing.T, data []byte, rows []Row, maxLine, maxRaw int) {
	t.Helper()
	lines := bytes.Split(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1] // after the final newline
	}
	next := 0
	for i, line := range lines {
		tooLong := len(line) > maxLine
		// Raw of a line too long is cut from its first maxLine+1 bytes.
		wantRaw := line[:min(len(line), maxLine+1)]
		if i == 0 {
			line = bytes.TrimPrefix(line, utf8BOM)
			wantRaw = bytes.TrimPrefix(wantRaw, utf8BOM)
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if !tooLong {
			wantRaw = line
		}
		if !tooLong && len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if next >= len(rows) {
			t.Fatalf("input %q: line %d: no row for it", data, i+1)
		}
		row := rows[next]
		next++
		if row.Line != i+1 {
			t.Fatalf("input %q: got row at line %d, want line %d", data, row.Line, i+1)
		}
		var want map[string]any
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		isObject := !tooLong && utf8.Valid(line) && json.Valid(line) && bytes.TrimLeft(line, " \t\r\n")[0] == '{' && dec.Decode(&want) == nil
		switch {
		case !isObject:
			if row.Err == nil {
				t.Fatalf("input %q: line %d: got a good row %v, want malformed", data, i+1, row.Values)
			}
		case row.Err != nil:
			if !strings.Contains(row.Err.Error(), "duplicate key") {
				t.Fatalf("input %q: line %d: got %v, want a row %v", data, i+1, row.Err, want)
			}
		default:
			if len(row.Columns) != len(want) {
				t.Fatalf("input %q: line %d: %d columns, want %d", data, i+1, len(row.Columns), len(want))
			}
			if diff := cmp.Diff(want, row.Map()); diff != "" {
				t.Fatalf("input %q: line %d: mismatch (-want +got):\n%s", data, i+1, diff)
			}
		}
		if row.Err != nil && row.Raw != capRaw(wantRaw, maxRaw) {
			t.Fatalf("input %q: line %d: Raw %q, want %q", data, i+1, row.Raw, capRaw(wantRaw, maxRaw))
		}
	}
	if next != len(rows) {
		t.Fatalf("input %q: %d rows, want %d", data, len(rows), next)
	}
}
