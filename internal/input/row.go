package input

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

const (
	// maxRecordBytes bounds one CSV record or one JSONL line; anything longer
	// is reported as malformed instead of being buffered.
	maxRecordBytes = 16 << 20
	// maxRawBytes caps Row.Raw.
	maxRawBytes = 64 << 10
)

// Row is one input record.
type Row struct {
	// Index is the 0-based position among all records (malformed ones count too).
	Index int
	// Line is the 1-based line number where the record starts in the input
	// (the header counts as line 1 for CSV).
	Line int
	// Columns are the column names in input order. For CSV the slice is the
	// header and is shared by all rows: do not modify it.
	Columns []string
	// Values holds one value per column. CSV: string; JSONL: decoded JSON
	// values with numbers as json.Number, nested objects as map[string]any,
	// arrays as []any.
	Values []any
	// texts holds, by column, the JSON text of a JSONL value that is an object or
	// an array (nil for the others): JSON writes it back as it came, key order kept.
	texts [][]byte
	// Raw is the raw text of the record without its line terminator, capped at
	// 64 KiB. It is always set for malformed records and empty otherwise.
	Raw string
	// Err is non-nil for a malformed record, and then a *RecordError. Columns
	// and Values are nil for a malformed record.
	Err error
}

// RecordError describes why a record is malformed.
type RecordError struct {
	Line  int    // 1-based line where the record starts
	Msg   string // what is wrong, e.g. "wrong number of fields: got 3, want 4"
	Field string // the key at fault when one is (e.g. a key an output also writes)
}

// Error returns "line N: msg".
func (e *RecordError) Error() string {
	return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
}

// Map returns the row as a map from column name to value.
func (r Row) Map() map[string]any {
	m := make(map[string]any, len(r.Columns))
	for i, c := range r.Columns {
		if i < len(r.Values) {
			m[c] = r.Values[i]
		}
	}
	return m
}

// Get returns the value of column name and whether the row has that column.
func (r Row) Get(name string) (any, bool) {
	for i, c := range r.Columns {
		if c == name && i < len(r.Values) {
			return r.Values[i], true
		}
	}
	return nil, false
}

// JSON encodes the row as a JSON object whose keys are in column order.
// JSON numbers of JSONL rows are written exactly as they appeared in the
// input, and nested objects and arrays as their input text (compacted: key
// order kept). A malformed row cannot be encoded.
func (r Row) JSON() ([]byte, error) {
	if r.Err != nil {
		return nil, fmt.Errorf("encode malformed row: %w", r.Err)
	}
	if len(r.Columns) != len(r.Values) {
		return nil, fmt.Errorf("encode row at line %d: %d columns but %d values", r.Line, len(r.Columns), len(r.Values))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Keep text as the user wrote it: no \u003c for "<" and friends.
	enc.SetEscapeHTML(false)
	buf.WriteByte('{')
	for i, c := range r.Columns {
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := encodeTrimmed(&buf, enc, c); err != nil {
			return nil, fmt.Errorf("encode column %q: %w", c, err)
		}
		buf.WriteByte(':')
		if i < len(r.texts) && r.texts[i] != nil {
			if err := json.Compact(&buf, r.texts[i]); err != nil {
				return nil, fmt.Errorf("encode column %q: %w", c, err)
			}
			continue
		}
		if err := encodeTrimmed(&buf, enc, r.Values[i]); err != nil {
			return nil, fmt.Errorf("encode column %q: %w", c, err)
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// encodeTrimmed encodes v onto buf without the newline json.Encoder appends.
func encodeTrimmed(buf *bytes.Buffer, enc *json.Encoder, v any) error {
	if err := enc.Encode(v); err != nil {
		return err
	}
	buf.Truncate(buf.Len() - 1)
	return nil
}

// CapRaw returns b as a string of at most 64 KiB (the cap of Row.Raw), never splitting
// a UTF-8 sequence at the cut.
func CapRaw(b []byte) string { return capRaw(b, maxRawBytes) }

// capRaw returns b as a string of at most limit bytes, never splitting a
// UTF-8 sequence at the cut.
func capRaw(b []byte, limit int) string {
	if len(b) <= limit {
		return string(b)
	}
	b = b[:limit]
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				b = b[:len(b)-i]
			}
			break
		}
	}
	return string(b)
}

// malformed builds the Row for a record that could not be parsed.
func malformed(index, line int, raw string, msg string) Row {
	return Row{Index: index, Line: line, Raw: raw, Err: &RecordError{Line: line, Msg: msg}}
}
