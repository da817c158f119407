// Package sink owns the durable output files of one run: results.jsonl and errors.jsonl
// (and results.csv / errors.csv when asked). Lines are appended in batches; Sync fsyncs
// and returns the byte offsets that a checkpoint records. Open truncates every file to
// its checkpointed offset, which drops a torn last line and anything written after the
// last checkpoint, so nothing is emitted twice.
package sink

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// File names inside a run's directory.
const (
	ResultsJSONL = "results.jsonl"
	ErrorsJSONL  = "errors.jsonl"
	ResultsCSV   = "results.csv"
	ErrorsCSV    = "errors.csv"
	Checkpoint   = "checkpoint.json"
	Summary      = "summary.json"
	// ResubmitJSONL keeps, for each row that ends in error and only for those, what a
	// resubmission of the row needs (wire.ResubmitEntry), the k-th entry with the k-th
	// line of errors.jsonl. It is created with the run's first error row: a run without
	// one has none.
	ResubmitJSONL = "resubmit.jsonl"
	// OpenJSON is the run's open record, written when the run finishes (the bus copy is
	// purged then): what mqctl resubmit opens again.
	OpenJSON = "open.json"
)

// FileMode is the mode every file of a run is created with, less the process umask:
// the rows, summary.json and checkpoint.json alike (0644 under the usual umask 022).
// Nothing in them is secret: API keys never reach a run's files.
const FileMode os.FileMode = 0o644

// OutputFiles is a run's output set, what leaves the collector once the run is
// complete: the JSONL files, the CSV files when csv, what a resubmission needs
// (resubmit.jsonl, open.json), and summary.json last (its presence says the others are
// complete). checkpoint.json is the collector's own.
func OutputFiles(csv bool) []string {
	names := []string{ResultsJSONL, ErrorsJSONL}
	if csv {
		names = append(names, ResultsCSV, ErrorsCSV)
	}
	return append(names, ResubmitJSONL, OpenJSON, Summary)
}

// Optional reports whether a file of the output set may be missing: the CSV files
// (written with CSV only), resubmit.jsonl (written with a run's first error row) and
// open.json (a run finished by an earlier build has none).
func Optional(name string) bool {
	switch name {
	case ResultsCSV, ErrorsCSV, ResubmitJSONL, OpenJSON:
		return true
	}
	return false
}

// Offsets maps a file name to its durable length.
type Offsets map[string]int64

// Options configure a run's files.
type Options struct {
	CSV bool // also write results.csv and errors.csv
	// RawFormulas turns off the escaping of CSV cells that a spreadsheet would run as a
	// formula (see EscapeCell).
	RawFormulas bool
	// Guard, when set, is called immediately before every change to the run's files
	// (truncate, write, rename); an error from it stops the change and is returned. The
	// collector passes its lease fence: a collector that may have lost its lease never
	// touches the files.
	Guard func() error
}

func (o Options) guard() error {
	if o.Guard == nil {
		return nil
	}
	return o.Guard()
}

// Run is the set of output files of one run.
type Run struct {
	dir   string
	files map[string]*file
	csv   bool
	opts  Options
	// CSV headers, fixed by SetCSVColumns. Rows written before are held in pending (and
	// rebuilt from the JSONL files by Open) and written to the CSV files then.
	okCols, errCols []string
	pending         []pendingLine
	// extra are the keys of rows written to the CSV files that their header lacks, in
	// the order first seen (extraSet the same as a set): WidenCSV writes them.
	extra    []string
	extraSet map[string]bool
	// headerOnDisk: Open found the CSV headers written (the offsets cover them).
	headerOnDisk bool
}

type pendingLine struct {
	ok   bool
	line []byte
}

type file struct {
	f *os.File
	w *bufio.Writer
}

// guarded passes the guard before every write to the file: bufio writes only when it
// flushes, so the check is made immediately before each write system call.
type guarded struct {
	f     *os.File
	guard func() error
}

func (g guarded) Write(p []byte) (int, error) {
	if err := g.guard(); err != nil {
		return 0, err
	}
	return g.f.Write(p)
}

// Open opens (creating) the run's files under dir, truncated to the offsets of the last
// checkpoint (nil offsets: start empty).
func Open(dir string, opts Options, offsets Offsets) (*Run, error) {
	withCSV := opts.CSV
	if err := opts.guard(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	names := []string{ResultsJSONL, ErrorsJSONL}
	if withCSV {
		names = append(names, ResultsCSV, ErrorsCSV)
	}
	r := &Run{dir: dir, files: map[string]*file{}, csv: withCSV, opts: opts}
	if _, err := os.Stat(filepath.Join(dir, ResubmitJSONL)); err == nil || offsets[ResubmitJSONL] > 0 {
		names = append(names, ResubmitJSONL) // else created with the first error row
	}
	for _, n := range names {
		if err := r.openFile(n, offsets[n]); err != nil {
			r.Close()
			return nil, err
		}
	}
	r.headerOnDisk = withCSV && (offsets[ResultsCSV] > 0 || offsets[ErrorsCSV] > 0)
	if withCSV && !r.headerOnDisk {
		// No CSV header yet: the rows written so far wait for it, as they did before.
		for _, n := range []string{ResultsJSONL, ErrorsJSONL} {
			if err := r.loadPending(n, n == ResultsJSONL, offsets[n]); err != nil {
				r.Close()
				return nil, err
			}
		}
	}
	return r, nil
}

// openFile opens (creating) file n of the run, truncated to off.
func (r *Run) openFile(n string, off int64) error {
	p := filepath.Join(r.dir, n)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, FileMode)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	if err := r.opts.guard(); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(off); err != nil {
		f.Close()
		return fmt.Errorf("truncate %s to %d: %w", p, off, err)
	}
	if _, err := f.Seek(off, 0); err != nil {
		f.Close()
		return fmt.Errorf("seek %s: %w", p, err)
	}
	r.files[n] = &file{f: f, w: bufio.NewWriterSize(guarded{f: f, guard: r.opts.guard}, 256<<10)}
	return nil
}

// loadPending reads the first size bytes of a JSONL file as rows waiting for the header.
func (r *Run) loadPending(name string, ok bool, size int64) error {
	if size == 0 {
		return nil
	}
	b := make([]byte, size)
	if _, err := r.files[name].f.ReadAt(b, 0); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	for line := range bytes.Lines(b) {
		r.pending = append(r.pending, pendingLine{ok: ok, line: bytes.TrimSuffix(line, []byte("\n"))})
	}
	return nil
}

// Dir is the run's output directory.
func (r *Run) Dir() string { return r.dir }

// SetCSVColumns fixes the CSV header columns of success rows (input + output columns)
// and of error rows (input + _error). Headers are written only if the file is empty.
func (r *Run) SetCSVColumns(ok, errCols []string) error {
	if !r.csv {
		return nil
	}
	r.okCols, r.errCols = ok, errCols
	for name, cols := range map[string][]string{ResultsCSV: ok, ErrorsCSV: errCols} {
		f := r.files[name]
		st, err := f.f.Stat()
		if err != nil {
			return fmt.Errorf("stat %s: %w", name, err)
		}
		pos, _ := f.f.Seek(0, 1)
		if st.Size() == 0 && pos == 0 && f.w.Buffered() == 0 {
			if err := writeCSV(f.w, r.escape(cols)); err != nil {
				return fmt.Errorf("write %s header: %w", name, err)
			}
		}
	}
	for _, p := range r.pending {
		name, cols := ResultsCSV, r.okCols
		if !p.ok {
			name, cols = ErrorsCSV, r.errCols
		}
		if err := r.writeCSVLine(name, cols, p.line); err != nil {
			return err
		}
	}
	r.pending = nil
	return nil
}

// CSVPending is the number of rows written while the CSV header was not fixed yet.
func (r *Run) CSVPending() int { return len(r.pending) }

// WriteOK appends a success row. line is the row's JSON object.
func (r *Run) WriteOK(line []byte) error { return r.write(ResultsJSONL, ResultsCSV, r.okCols, line) }

// WriteError appends an error row.
func (r *Run) WriteError(line []byte) error { return r.write(ErrorsJSONL, ErrorsCSV, r.errCols, line) }

// WriteResubmit appends an entry to resubmit.jsonl (wire.ResubmitEntry), creating the
// file with the first: only rows that end in error have one (and, in a resubmission,
// every row).
func (r *Run) WriteResubmit(line []byte) error {
	f := r.files[ResubmitJSONL]
	if f == nil {
		if err := r.openFile(ResubmitJSONL, 0); err != nil {
			return err
		}
		f = r.files[ResubmitJSONL]
	}
	if _, err := f.w.Write(line); err != nil {
		return fmt.Errorf("write %s: %w", ResubmitJSONL, err)
	}
	if err := f.w.WriteByte('\n'); err != nil {
		return fmt.Errorf("write %s: %w", ResubmitJSONL, err)
	}
	return nil
}

func (r *Run) write(jsonl, csvName string, cols []string, line []byte) error {
	f := r.files[jsonl]
	if _, err := f.w.Write(line); err != nil {
		return fmt.Errorf("write %s: %w", jsonl, err)
	}
	if err := f.w.WriteByte('\n'); err != nil {
		return fmt.Errorf("write %s: %w", jsonl, err)
	}
	if !r.csv {
		return nil
	}
	if r.okCols == nil {
		r.pending = append(r.pending, pendingLine{ok: jsonl == ResultsJSONL, line: append([]byte(nil), line...)})
		return nil
	}
	return r.writeCSVLine(csvName, cols, line)
}

func (r *Run) writeCSVLine(csvName string, cols []string, line []byte) error {
	rec, extra, err := csvRecord(line, cols, !r.opts.RawFormulas)
	if err != nil {
		return fmt.Errorf("%s: %w", csvName, err)
	}
	r.AddCSVExtra(extra)
	if err := writeCSV(r.files[csvName].w, rec); err != nil {
		return fmt.Errorf("write %s: %w", csvName, err)
	}
	return nil
}

// CSVExtra returns the keys of rows written to the CSV files that their header lacks
// (a JSONL input whose later rows have keys its first well-formed row had not), in the
// order first seen: their cells are missing from the CSV files until WidenCSV.
func (r *Run) CSVExtra() []string { return r.extra }

// AddCSVExtra records keys the CSV headers lack (CSVExtra): what a checkpoint kept of the
// rows written before a restart.
func (r *Run) AddCSVExtra(keys []string) {
	for _, k := range keys {
		if r.extraSet[k] {
			continue
		}
		if r.extraSet == nil {
			r.extraSet = map[string]bool{}
		}
		r.extraSet[k] = true
		r.extra = append(r.extra, k)
	}
}

// WidenCSV writes the CSV files again from the JSONL files when rows had keys their
// headers lack (CSVExtra), with those keys after the input columns: the error header is
// the input columns then "_error", the success header the input columns then the
// outputs. Each file is replaced whole (WriteAtomic), so a crash leaves it old or new;
// the caller makes the files durable (Sync) and checkpoints their new offsets after.
func (r *Run) WidenCSV() error {
	if !r.csv || len(r.extra) == 0 || r.errCols == nil {
		return nil
	}
	n := len(r.errCols) - 1 // the input columns
	ok := slices.Concat(r.okCols[:n], r.extra, r.okCols[n:])
	errCols := slices.Concat(r.errCols[:n], r.extra, r.errCols[n:])
	if err := r.rewriteCSV(ResultsJSONL, ResultsCSV, ok); err != nil {
		return err
	}
	if err := r.rewriteCSV(ErrorsJSONL, ErrorsCSV, errCols); err != nil {
		return err
	}
	r.okCols, r.errCols = ok, errCols
	r.extra, r.extraSet = nil, nil
	return nil
}

// rewriteCSV replaces CSV file name with the lines of JSONL file jsonl under header
// cols, then reopens it at its end.
func (r *Run) rewriteCSV(jsonl, name string, cols []string) error {
	src, old := r.files[jsonl], r.files[name]
	for n, f := range map[string]*file{jsonl: src, name: old} {
		if err := f.w.Flush(); err != nil {
			return fmt.Errorf("flush %s: %w", n, err)
		}
	}
	size, err := src.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("seek %s: %w", jsonl, err)
	}
	write := func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 256<<10)
		if err := writeCSV(bw, r.escape(cols)); err != nil {
			return err
		}
		br := bufio.NewReaderSize(io.NewSectionReader(src.f, 0, size), 256<<10)
		for {
			line, rerr := br.ReadBytes('\n')
			if line = bytes.TrimSuffix(line, []byte("\n")); len(line) > 0 {
				rec, _, err := csvRecord(line, cols, !r.opts.RawFormulas)
				if err != nil {
					return fmt.Errorf("%s: %w", jsonl, err)
				}
				if err := writeCSV(bw, rec); err != nil {
					return err
				}
			}
			if errors.Is(rerr, io.EOF) {
				return bw.Flush()
			}
			if rerr != nil {
				return fmt.Errorf("read %s: %w", jsonl, rerr)
			}
		}
	}
	if err := writeAtomic(r.dir, name, write, r.opts.guard); err != nil {
		return err
	}
	old.f.Close()
	st, err := os.Stat(filepath.Join(r.dir, name))
	if err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	return r.openFile(name, st.Size())
}

func (r *Run) escape(rec []string) []string {
	if r.opts.RawFormulas {
		return rec
	}
	out := make([]string, len(rec))
	for i, c := range rec {
		out[i] = EscapeCell(c)
	}
	return out
}

// EscapeCell prefixes with a quote (') a cell that a spreadsheet would read as a formula:
// one starting with =, +, -, @, a tab or a carriage return (OWASP, CSV injection).
func EscapeCell(c string) string {
	if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
		return "'" + c
	}
	return c
}

func writeCSV(w *bufio.Writer, rec []string) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(rec); err != nil {
		return err
	}
	cw.Flush()
	return cw.Error()
}

// csvRecord flattens a JSON object into cells: strings as they are (escaped, see
// EscapeCell), anything else as JSON (a number, object, array or literal is never a
// formula). extra are the object's keys that cols lacks, in order.
func csvRecord(line []byte, cols []string, escape bool) (rec, extra []string, err error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, nil, fmt.Errorf("row is not a JSON object: %w", err)
	}
	rec = make([]string, len(cols))
	found := 0
	for i, c := range cols {
		v, ok := m[c]
		if ok {
			found++
		}
		if !ok || string(v) == "null" {
			continue
		}
		if len(v) > 0 && v[0] == '"' {
			var s string
			if err := json.Unmarshal(v, &s); err == nil {
				if escape {
					s = EscapeCell(s)
				}
				rec[i] = s
				continue
			}
		}
		rec[i] = string(v)
	}
	if found < len(m) {
		extra = keysBut(line, cols)
	}
	return rec, extra, nil
}

// keysBut returns the keys of a valid JSON object that cols lacks, in order.
func keysBut(line []byte, cols []string) []string {
	var out []string
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil {
		return nil
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return out
		}
		if k, _ := tok.(string); !slices.Contains(cols, k) {
			out = append(out, k)
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return out
		}
	}
	return out
}

// Sync flushes and fsyncs every file and returns their durable lengths.
func (r *Run) Sync() (Offsets, error) {
	off := Offsets{}
	for name, f := range r.files {
		if err := f.w.Flush(); err != nil {
			return nil, fmt.Errorf("flush %s: %w", name, err)
		}
		if err := f.f.Sync(); err != nil {
			return nil, fmt.Errorf("fsync %s: %w", name, err)
		}
		pos, err := f.f.Seek(0, 1)
		if err != nil {
			return nil, fmt.Errorf("seek %s: %w", name, err)
		}
		off[name] = pos
	}
	return off, nil
}

// WriteFile writes dir/name atomically (WriteFileAtomic), passing the guard first.
func (r *Run) WriteFile(name string, data []byte) error {
	return writeFileAtomic(r.dir, name, data, r.opts.guard)
}

// Close closes the files without syncing.
func (r *Run) Close() {
	for _, f := range r.files {
		f.f.Close()
	}
}

// WriteFileAtomic writes data to dir/name through a temp file, fsync and rename.
func WriteFileAtomic(dir, name string, data []byte) error {
	return WriteAtomic(dir, name, func(w io.Writer) error { _, err := w.Write(data); return err })
}

// WriteAtomic writes dir/name with write, through a temp file in dir (mode FileMode),
// fsync and rename: a reader sees the old file or the whole new one, never a part.
func WriteAtomic(dir, name string, write func(w io.Writer) error) error {
	return writeAtomic(dir, name, write, func() error { return nil })
}

func writeFileAtomic(dir, name string, data []byte, guard func() error) error {
	return writeAtomic(dir, name, func(w io.Writer) error { _, err := w.Write(data); return err }, guard)
}

func writeAtomic(dir, name string, write func(w io.Writer) error, guard func() error) error {
	tmp, err := createTemp(dir, name)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	werr := write(tmp)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := guard(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("rename %s: %w", name, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// createTemp creates a new file dir/.name.<random> with FileMode (os.CreateTemp would
// make it 0600, and the rename would keep that).
func createTemp(dir, name string) (*os.File, error) {
	for range 100 {
		p := filepath.Join(dir, "."+name+"."+strconv.FormatUint(rand.Uint64(), 36))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, FileMode)
		if !errors.Is(err, os.ErrExist) {
			return f, err
		}
	}
	return nil, fmt.Errorf("create a temp file for %s in %s: too many collisions", name, dir)
}

// CountLines counts newline-terminated lines of a file (for tools and tests).
func CountLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	n := 0
	for sc.Scan() {
		n++
	}
	return n, sc.Err()
}

// CSVHeaderWritten reports whether Open found the CSV headers already written: the
// columns they fixed must be fixed again (SetCSVColumns), not taken from a later row.
func (r *Run) CSVHeaderWritten() bool { return r.headerOnDisk }

// CSVHeaderInput reads the input columns back from errors.csv's header (every cell
// before "_error"), formula escaping undone; nil when errors.csv holds no header.
func (r *Run) CSVHeaderInput() ([]string, error) {
	f := r.files[ErrorsCSV]
	if f == nil {
		return nil, nil
	}
	rec, err := csv.NewReader(io.NewSectionReader(f.f, 0, 1<<62)).Read()
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil || len(rec) == 0 || rec[len(rec)-1] != "_error" {
		return nil, fmt.Errorf("read the header of %s: %q: %v", ErrorsCSV, rec, err)
	}
	input := rec[:len(rec)-1]
	if !r.opts.RawFormulas {
		for i, c := range input {
			if len(c) > 1 && c[0] == '\'' && EscapeCell(c[1:]) != c[1:] {
				input[i] = c[1:]
			}
		}
	}
	return input, nil
}

// CSVNeedsColumns reports whether CSV output is on and its headers are not fixed yet
// (a run without input columns in its open record: the first well-formed row's keys
// are used).
func (r *Run) CSVNeedsColumns() bool { return r.csv && r.okCols == nil }
