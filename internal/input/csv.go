package input

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// utf8BOM is stripped from the start of the input.
var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// CSVReader reads RFC 4180 CSV with a header record. Fields may be quoted;
// quoted fields may hold commas, doubled quotes and line breaks. Records end
// with LF or CRLF; an empty line is not a record. Every record must have as
// many fields as the header, or it is malformed.
//
// Syntax errors are local: after a stray quote the rest of that physical
// line is discarded and reading resumes on the next line. An unterminated
// quoted field runs to the end of the input.
//
// A CSVReader is not safe for concurrent use.
type CSVReader struct {
	br        *bufio.Reader
	header    []string
	line      int   // line number of the next byte to read, 1-based
	index     int   // Index of the next record
	err       error // sticky: io.EOF or the stream error
	maxRecord int
	maxRaw    int

	// Scratch space for the record being scanned, reused across records.
	field   []byte // bytes of all fields, back to back
	ends    []int  // end offset in field of each field
	nfields int    // number of fields, counted even when too long to keep
	raw     []byte // the first bytes of the record's text
	size    int    // bytes of record text consumed, terminator included
	rawEnd  int    // length of the record's text without its terminator
	tooLong bool   // size exceeded maxRecord: stop keeping field bytes
}

// csvRecord is the outcome of scanning one record; fields are in the
// reader's scratch space.
type csvRecord struct {
	line int    // line where the record starts
	msg  string // non-empty: the record is malformed
}

// NewCSV returns a reader of CSV from r and reads the header at once. It
// fails on empty input, a malformed header record, and an empty, invalid
// UTF-8 or duplicate column name. Header names are trimmed of surrounding
// white space, and a leading UTF-8 byte order mark is dropped.
func NewCSV(r io.Reader) (*CSVReader, error) {
	return newCSV(r, maxRecordBytes, maxRawBytes)
}

func newCSV(r io.Reader, maxRecord, maxRaw int) (*CSVReader, error) {
	c := &CSVReader{
		br:        bufio.NewReaderSize(r, 64<<10),
		line:      1,
		maxRecord: maxRecord,
		maxRaw:    maxRaw,
	}
	p, err := c.br.Peek(len(utf8BOM))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read csv header: %w", err)
	}
	if bytes.Equal(p, utf8BOM) {
		if _, err := c.br.Discard(len(utf8BOM)); err != nil {
			return nil, fmt.Errorf("read csv header: %w", err)
		}
	}
	if err := c.readHeader(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *CSVReader) readHeader() error {
	rec, err := c.scan()
	if errors.Is(err, io.EOF) {
		return errors.New("read csv header: empty input")
	}
	if err != nil {
		return fmt.Errorf("read csv header: %w", err)
	}
	if rec.msg != "" {
		return fmt.Errorf("read csv header: %w", &RecordError{Line: rec.line, Msg: rec.msg})
	}
	fields := c.fieldStrings()
	seen := make(map[string]int, len(fields))
	for i, f := range fields {
		name := strings.TrimSpace(f)
		if name == "" {
			return fmt.Errorf("csv header: column %d has an empty name", i+1)
		}
		if !utf8.ValidString(name) {
			return fmt.Errorf("csv header: column %d name %q is not valid UTF-8", i+1, name)
		}
		if j, dup := seen[name]; dup {
			return fmt.Errorf("csv header: duplicate column %q (columns %d and %d)", name, j+1, i+1)
		}
		seen[name] = i
		fields[i] = name
	}
	c.header = fields
	return nil
}

// Header returns the column names of the header record. The slice is shared
// with every Row's Columns: do not modify it.
func (c *CSVReader) Header() []string { return c.header }

// Next returns the next record, or io.EOF after the last one. A malformed
// record comes with Err set and a nil error; a non-nil error is a failure of
// the underlying stream, and every later call returns it again.
func (c *CSVReader) Next() (Row, error) {
	if c.err != nil {
		return Row{}, c.err
	}
	rec, err := c.scan()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			err = fmt.Errorf("read csv: %w", err)
		}
		c.err = err
		return Row{}, err
	}
	idx := c.index
	c.index++
	if rec.msg == "" && c.nfields != len(c.header) {
		rec.msg = fmt.Sprintf("wrong number of fields: got %d, want %d", c.nfields, len(c.header))
	}
	if rec.msg != "" {
		return malformed(idx, rec.line, c.rawText(), rec.msg), nil
	}
	fields := c.fieldStrings()
	values := make([]any, len(fields))
	for i, f := range fields {
		if !utf8.ValidString(f) {
			return malformed(idx, rec.line, c.rawText(), fmt.Sprintf("column %q is not valid UTF-8 (save the file as UTF-8)", c.header[i])), nil
		}
		values[i] = f
	}
	return Row{Index: idx, Line: rec.line, Columns: c.header, Values: values}, nil
}

// fieldStrings returns the fields of the last scanned record, sharing one
// allocation.
func (c *CSVReader) fieldStrings() []string {
	s := string(c.field)
	out := make([]string, len(c.ends))
	prev := 0
	for i, e := range c.ends {
		out[i] = s[prev:e]
		prev = e
	}
	return out
}

// rawText returns the text of the last scanned record, capped at maxRaw.
func (c *CSVReader) rawText() string {
	return capRaw(c.raw[:min(c.rawEnd, len(c.raw))], c.maxRaw)
}

func (c *CSVReader) reset() {
	// Do not pin the memory of one huge record for the rest of the run.
	if cap(c.field) > 1<<20 {
		c.field, c.ends = nil, nil
	}
	c.field = c.field[:0]
	c.ends = c.ends[:0]
	c.nfields = 0
	c.raw = c.raw[:0]
	c.size = 0
	c.rawEnd = 0
	c.tooLong = false
}

// consume accounts for one byte of record text.
func (c *CSVReader) consume(b byte) {
	c.size++
	// Keep a few bytes beyond maxRaw so capRaw can cut at a rune boundary.
	if len(c.raw) < c.maxRaw+utf8.UTFMax {
		c.raw = append(c.raw, b)
	}
}

// checkSize marks the record too long once its text, not counting the line
// break that ends it, exceeds maxRecord.
func (c *CSVReader) checkSize() {
	if c.size > c.maxRecord {
		c.tooLong = true
	}
}

func (c *CSVReader) appendByte(b byte) {
	if !c.tooLong {
		c.field = append(c.field, b)
	}
}

func (c *CSVReader) endField() {
	c.nfields++
	if !c.tooLong {
		c.ends = append(c.ends, len(c.field))
	}
}

// Scanner states.
const (
	csvFieldStart    = iota
	csvUnquoted      // inside a field that did not start with a quote
	csvQuoted        // inside a quoted field
	csvQuoteInQuoted // saw '"' in a quoted field: its end, or the first of a doubled quote
	csvSkipLine      // after a syntax error: discard up to the end of the line
)

// csvScan is the state of scanning one record.
type csvScan struct {
	start int    // line where the record starts
	st    int    // scanner state
	msg   string // non-empty: the record is malformed
}

// scan reads one record into the scratch space. It returns io.EOF when the
// input holds no further record, and any other error from the stream.
func (c *CSVReader) scan() (csvRecord, error) {
	c.reset()
	s := csvScan{start: c.line, st: csvFieldStart}
	for {
		b, err := c.br.ReadByte()
		if err != nil {
			return c.scanEnd(&s, err)
		}
		c.consume(b)
		b, termLen, err := c.lineBreak(b, s.st)
		if err != nil {
			return csvRecord{}, err
		}
		if b == '\n' {
			if c.endLine(&s, termLen) {
				return c.finish(&s), nil
			}
			continue
		}
		c.checkSize()
		c.step(&s, b)
	}
}

// scanEnd handles the end of the input (or a stream error) in state s: io.EOF when no
// record text was read, else the last record, ended without a line break.
func (c *CSVReader) scanEnd(s *csvScan, err error) (csvRecord, error) {
	if !errors.Is(err, io.EOF) {
		return csvRecord{}, err
	}
	if c.size == 0 {
		return csvRecord{}, io.EOF
	}
	switch s.st {
	case csvQuoted:
		s.msg = fmt.Sprintf("unterminated quote in field %d", c.nfields+1)
	case csvSkipLine:
	default:
		c.endField()
	}
	c.rawEnd = c.size
	return c.finish(s), nil
}

// lineBreak tells a line break at b: CRLF is one ('\n', 2 bytes, inside quotes too),
// a CR ending the input ends the last line (outside quotes), a lone CR is data.
// termLen is the bytes of record text the break takes.
func (c *CSVReader) lineBreak(b byte, st int) (_ byte, termLen int, _ error) {
	if b != '\r' {
		return b, 1, nil
	}
	p, err := c.br.Peek(1)
	switch {
	case len(p) == 1 && p[0] == '\n':
		// CRLF is one line break, inside quotes too.
		_, _ = c.br.ReadByte()
		c.consume('\n')
		return '\n', 2, nil
	case len(p) == 1:
		// A lone CR is data.
	case errors.Is(err, io.EOF):
		// A trailing CR ends the last line.
		if st != csvQuoted {
			return '\n', 1, nil
		}
	default:
		return 0, 0, err
	}
	return b, 1, nil
}

// endLine handles a line break in state s. It reports whether the break ends the
// record; it does not inside a quoted field (the break is data) or on an empty line
// (not a record: scanning starts again on the next line).
func (c *CSVReader) endLine(s *csvScan, termLen int) bool {
	switch s.st {
	case csvQuoted:
		c.checkSize()
		c.appendByte('\n')
		c.line++
		return false
	case csvFieldStart:
		if c.size == termLen {
			// An empty line is not a record.
			c.line++
			c.reset()
			s.start = c.line
			return false
		}
		c.endField()
	case csvUnquoted, csvQuoteInQuoted:
		c.endField()
	case csvSkipLine:
	}
	c.line++
	c.rawEnd = c.size - termLen
	return true
}

// step advances the scanner state s by one byte of record text that is not a line
// break.
func (c *CSVReader) step(s *csvScan, b byte) {
	switch s.st {
	case csvFieldStart:
		switch b {
		case '"':
			s.st = csvQuoted
		case ',':
			c.endField()
		default:
			c.appendByte(b)
			s.st = csvUnquoted
		}
	case csvUnquoted:
		switch b {
		case ',':
			c.endField()
			s.st = csvFieldStart
		case '"':
			c.fail(s, `bare " in non-quoted field`)
		default:
			c.appendByte(b)
		}
	case csvQuoted:
		if b == '"' {
			s.st = csvQuoteInQuoted
		} else {
			c.appendByte(b)
		}
	case csvQuoteInQuoted:
		switch b {
		case '"':
			c.appendByte('"')
			s.st = csvQuoted
		case ',':
			c.endField()
			s.st = csvFieldStart
		default:
			c.fail(s, `extraneous " after quoted field`)
		}
	case csvSkipLine:
	}
}

// fail marks the record malformed (what, in which field, on which line if not the
// first) and skips the rest of the line.
func (c *CSVReader) fail(s *csvScan, what string) {
	s.msg = fmt.Sprintf("%s in field %d", what, c.nfields+1)
	if c.line != s.start {
		s.msg += fmt.Sprintf(" (line %d)", c.line)
	}
	s.st = csvSkipLine
}

// finish is the scanned record: malformed as s says, or too long.
func (c *CSVReader) finish(s *csvScan) csvRecord {
	if s.msg == "" && c.tooLong {
		s.msg = fmt.Sprintf("record too long: more than %d bytes", c.maxRecord)
	}
	return csvRecord{line: s.start, msg: s.msg}
}
