package input

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// JSONLReader reads JSON Lines: one JSON object per line. Lines holding only
// white space are skipped. A line that is not valid UTF-8 or not valid JSON, is
// valid JSON but not an object, repeats a top-level key, or is longer than 16 MiB is
// malformed. The last line needs no trailing newline, and a leading UTF-8
// byte order mark is dropped.
//
// A JSONLReader is not safe for concurrent use.
type JSONLReader struct {
	br      *bufio.Reader
	line    int   // lines read so far
	index   int   // Index of the next record
	err     error // sticky: io.EOF or the stream error
	maxLine int
	maxRaw  int
	buf     []byte // the current line, at most maxLine+1 bytes of it
}

// NewJSONL returns a reader of JSON Lines from r.
func NewJSONL(r io.Reader) *JSONLReader {
	return newJSONL(r, maxRecordBytes, maxRawBytes)
}

func newJSONL(r io.Reader, maxLine, maxRaw int) *JSONLReader {
	return &JSONLReader{br: bufio.NewReaderSize(r, 64<<10), maxLine: maxLine, maxRaw: maxRaw}
}

// Header returns nil: JSONL columns vary per row.
func (j *JSONLReader) Header() []string { return nil }

// Next returns the next record, or io.EOF after the last one. Columns are the
// object's top-level keys in input order; Values hold the decoded values,
// with numbers as json.Number. A malformed record comes with Err set and a
// nil error; a non-nil error is a failure of the underlying stream, and every
// later call returns it again.
func (j *JSONLReader) Next() (Row, error) {
	if j.err != nil {
		return Row{}, j.err
	}
	for {
		text, tooLong, err := j.readLine()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				err = fmt.Errorf("read jsonl: %w", err)
			}
			j.err = err
			return Row{}, err
		}
		j.line++
		if j.line == 1 {
			text = bytes.TrimPrefix(text, utf8BOM)
		}
		if !tooLong && len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		idx := j.index
		j.index++
		if tooLong {
			return malformed(idx, j.line, capRaw(text, j.maxRaw), fmt.Sprintf("line too long: more than %d bytes", j.maxLine)), nil
		}
		if !utf8.Valid(text) {
			// encoding/json would read the bytes as U+FFFD: the row's data would not be
			// what the file says.
			return malformed(idx, j.line, capRaw(text, j.maxRaw), "not valid UTF-8 (save the file as UTF-8)"), nil
		}
		cols, vals, texts, msg := decodeObject(text)
		if msg != "" {
			return malformed(idx, j.line, capRaw(text, j.maxRaw), msg), nil
		}
		return Row{Index: idx, Line: j.line, Columns: cols, Values: vals, texts: texts}, nil
	}
}

// readLine reads one line and returns its text without the line terminator.
// When the line is longer than maxLine, tooLong is set, the rest of the line
// is discarded and text holds its beginning.
func (j *JSONLReader) readLine() (text []byte, tooLong bool, err error) {
	if cap(j.buf) > 1<<20 {
		// Do not pin the memory of one huge line for the rest of the run.
		j.buf = nil
	}
	j.buf = j.buf[:0]
	n := 0 // bytes of the line, '\n' included
	for {
		chunk, err := j.br.ReadSlice('\n')
		n += len(chunk)
		if keep := min(len(chunk), j.maxLine+1-len(j.buf)); keep > 0 {
			j.buf = append(j.buf, chunk[:keep]...)
		}
		switch {
		case err == nil:
			n-- // the '\n'
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if n == 0 {
				return nil, false, io.EOF
			}
		default:
			return nil, false, err
		}
		break
	}
	if n > j.maxLine {
		return j.buf, true, nil
	}
	return bytes.TrimSuffix(j.buf[:n], []byte{'\r'}), false, nil
}

// decodeObject decodes one JSON object, keeping the order of its top-level
// keys. texts holds, by column, a copy of the text of each value that is an
// object or an array (nil when there is none). A non-empty msg says why text is
// not an acceptable record.
func decodeObject(text []byte) (cols []string, vals []any, texts [][]byte, msg string) {
	if !json.Valid(text) {
		var v any
		if err := json.Unmarshal(text, &v); err != nil {
			return nil, nil, nil, "invalid JSON: " + err.Error()
		}
		return nil, nil, nil, "invalid JSON"
	}
	// From here on text is known to be valid JSON, which keeps the walk
	// over its top level simple.
	i := skipSpace(text, 0)
	if text[i] != '{' {
		return nil, nil, nil, "not a JSON object: got " + jsonKind(text[i])
	}
	cols, vals = []string{}, []any{}
	var seen map[string]struct{} // built once the object is too big for a linear scan
	i = skipSpace(text, i+1)
	for text[i] != '}' {
		end := skipString(text, i)
		key, err := decodeString(text[i:end])
		if err != nil {
			return nil, nil, nil, "invalid JSON: " + err.Error()
		}
		if seen == nil && len(cols) >= 16 {
			seen = make(map[string]struct{}, 2*len(cols))
			for _, c := range cols {
				seen[c] = struct{}{}
			}
		}
		if duplicateKey(cols, seen, key) {
			return nil, nil, nil, fmt.Sprintf("duplicate key %q", key)
		}
		if seen != nil {
			seen[key] = struct{}{}
		}
		i = skipSpace(text, end) // at ':'
		i = skipSpace(text, i+1) // at the value
		end = skipValue(text, i)
		v, err := decodeValue(text[i:end])
		if err != nil {
			return nil, nil, nil, fmt.Sprintf("invalid JSON: value of key %q: %v", key, err)
		}
		if t := nestedText(text[i:end]); t != nil {
			if texts == nil {
				texts = make([][]byte, len(cols), len(cols)+1)
			}
			texts = append(texts, t)
		} else if texts != nil {
			texts = append(texts, nil)
		}
		cols = append(cols, key)
		vals = append(vals, v)
		i = skipSpace(text, end) // at ',' or '}'
		if text[i] == ',' {
			i = skipSpace(text, i+1)
		}
	}
	return cols, vals, texts, ""
}

// nestedText returns a copy of the text of a valid JSON object or array, to be
// written back as it came; nil for any other value, and for text that is not
// valid UTF-8 (encoding/json writes what it decoded, with U+FFFD, instead).
func nestedText(raw []byte) []byte {
	if (raw[0] != '{' && raw[0] != '[') || !utf8.Valid(raw) {
		return nil
	}
	return bytes.Clone(raw)
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func skipSpace(text []byte, i int) int {
	for i < len(text) && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index just after the valid JSON string at text[i].
func skipString(text []byte, i int) int {
	for i++; text[i] != '"'; i++ {
		if text[i] == '\\' {
			i++ // the escaped byte; \uXXXX digits hold no quote or backslash
		}
	}
	return i + 1
}

// skipValue returns the index just after the valid JSON value at text[i].
func skipValue(text []byte, i int) int {
	switch text[i] {
	case '"':
		return skipString(text, i)
	case '{', '[':
		depth := 0
		for {
			switch text[i] {
			case '"':
				i = skipString(text, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
	}
	for i < len(text) {
		switch text[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}

// decodeString decodes a valid JSON string literal, quotes included.
func decodeString(raw []byte) (string, error) {
	body := raw[1 : len(raw)-1]
	// Fast path; escapes and invalid UTF-8 (which encoding/json turns into
	// U+FFFD) go through encoding/json.
	if bytes.IndexByte(body, '\\') < 0 && utf8.Valid(body) {
		return string(body), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// decodeValue decodes a valid JSON value: numbers as json.Number, objects as
// map[string]any, arrays as []any.
func decodeValue(raw []byte) (any, error) {
	switch raw[0] {
	case '"':
		return decodeString(raw)
	case 't':
		return true, nil
	case 'f':
		return false, nil
	case 'n':
		return nil, nil
	case '{', '[':
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		err := dec.Decode(&v)
		return v, err
	}
	return json.Number(raw), nil
}

func duplicateKey(cols []string, seen map[string]struct{}, key string) bool {
	if seen != nil {
		_, ok := seen[key]
		return ok
	}
	for _, c := range cols {
		if c == key {
			return true
		}
	}
	return false
}

// jsonKind names the kind of JSON value that starts with b.
func jsonKind(b byte) string {
	switch b {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}
