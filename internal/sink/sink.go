// Package sink owns the durable output files of one run: results.jsonl and errors.jsonl
// (and results.csv / errors.csv when asked). Lines are appended in batches; Sync fsyncs
// and returns the byte offsets that a checkpoint records. Open truncates every file to
// its checkpointed offset, which drops a torn last line and anything written after the
// last checkpoint, so nothing is emitted twice.
package sink

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// File names inside a run's directory.
const (
	ResultsJSONL = "results.jsonl"
	ErrorsJSONL  = "errors.jsonl"
	ResultsCSV   = "results.csv"
	ErrorsCSV    = "errors.csv"
	Checkpoint   = "checkpoint.json"
	Summary      = "summary.json"
)

// Offsets maps a file name to its durable length.
type Offsets map[string]int64

// Options configure a run's files.
type Options struct {
	CSV bool // also write results.csv and errors.csv
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
	// CSV headers, fixed when the first row of each kind is written.
	okCols, errCols []string
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
	for _, n := range names {
		p := filepath.Join(dir, n)
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		off := offsets[n]
		if err := opts.guard(); err != nil {
			f.Close()
			r.Close()
			return nil, err
		}
		if err := f.Truncate(off); err != nil {
			f.Close()
			r.Close()
			return nil, fmt.Errorf("truncate %s to %d: %w", p, off, err)
		}
		if _, err := f.Seek(off, 0); err != nil {
			f.Close()
			r.Close()
			return nil, fmt.Errorf("seek %s: %w", p, err)
		}
		r.files[n] = &file{f: f, w: bufio.NewWriterSize(guarded{f: f, guard: opts.guard}, 256<<10)}
	}
	return r, nil
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
			if err := writeCSV(f.w, cols); err != nil {
				return fmt.Errorf("write %s header: %w", name, err)
			}
		}
	}
	return nil
}

// WriteOK appends a success row. line is the row's JSON object.
func (r *Run) WriteOK(line []byte) error { return r.write(ResultsJSONL, ResultsCSV, r.okCols, line) }

// WriteError appends an error row.
func (r *Run) WriteError(line []byte) error { return r.write(ErrorsJSONL, ErrorsCSV, r.errCols, line) }

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
	rec, err := csvRecord(line, cols)
	if err != nil {
		return fmt.Errorf("%s: %w", csvName, err)
	}
	if err := writeCSV(r.files[csvName].w, rec); err != nil {
		return fmt.Errorf("write %s: %w", csvName, err)
	}
	return nil
}

func writeCSV(w *bufio.Writer, rec []string) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(rec); err != nil {
		return err
	}
	cw.Flush()
	return cw.Error()
}

// csvRecord flattens a JSON object into cells: strings as they are, anything else as JSON.
func csvRecord(line []byte, cols []string) ([]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("row is not a JSON object: %w", err)
	}
	rec := make([]string, len(cols))
	for i, c := range cols {
		v, ok := m[c]
		if !ok || string(v) == "null" {
			continue
		}
		if len(v) > 0 && v[0] == '"' {
			var s string
			if err := json.Unmarshal(v, &s); err == nil {
				rec[i] = s
				continue
			}
		}
		rec[i] = string(v)
	}
	return rec, nil
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
	return writeFileAtomic(dir, name, data, func() error { return nil })
}

func writeFileAtomic(dir, name string, data []byte, guard func() error) error {
	tmp, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, werr := tmp.Write(data)
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

// CSVNeedsColumns reports whether CSV output is on and its headers are not fixed yet
// (JSONL input has no header: the first emitted row's keys are used).
func (r *Run) CSVNeedsColumns() bool { return r.csv && r.okCols == nil }
