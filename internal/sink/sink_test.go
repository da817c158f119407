package sink

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A collector killed mid-write leaves a torn last line and lines written after its last
// checkpoint; reopening at the checkpoint's offsets drops both.
func TestOpenTruncatesToTheCheckpoint(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, Options{CSV: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetCSVColumns([]string{"id", "q_x"}, []string{"id", "_error"}); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteOK([]byte(`{"id":"a","q_x":1}`)); err != nil {
		t.Fatal(err)
	}
	off, err := r.Sync()
	if err != nil {
		t.Fatal(err)
	}
	// After the checkpoint: one more full line, then a torn one.
	if err := r.WriteOK([]byte(`{"id":"b","q_x":2}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(dir, ResultsJSONL), os.O_APPEND|os.O_WRONLY, 0)
	_, _ = f.WriteString(`{"id":"c","q_`)
	f.Close()
	r.Close()

	r2, err := Open(dir, Options{CSV: true}, off)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.SetCSVColumns([]string{"id", "q_x"}, []string{"id", "_error"}); err != nil {
		t.Fatal(err)
	}
	if err := r2.WriteOK([]byte(`{"id":"b","q_x":2}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Sync(); err != nil {
		t.Fatal(err)
	}
	r2.Close()
	got, _ := os.ReadFile(filepath.Join(dir, ResultsJSONL))
	if want := "{\"id\":\"a\",\"q_x\":1}\n{\"id\":\"b\",\"q_x\":2}\n"; string(got) != want {
		t.Fatalf("results.jsonl = %q, want %q", got, want)
	}
	csv, _ := os.ReadFile(filepath.Join(dir, ResultsCSV))
	if want := "id,q_x\na,1\nb,2\n"; string(csv) != want {
		t.Fatalf("results.csv = %q, want %q (one header, no duplicate)", csv, want)
	}
}

// Rows written before the CSV header is known wait for it, also across a restart
// (rebuilt from the JSONL files), and then go to the CSV files under that header.
// resubmit.jsonl is written for error rows only: a run without one has no file (no
// write, no fsync on the success path); once there, it is truncated to its checkpointed
// offset like the others.
func TestResubmitEntriesOnlyWithTheFirstErrorRow(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteOK([]byte(`{"id":"a"}`)); err != nil {
		t.Fatal(err)
	}
	off, err := r.Sync()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ResubmitJSONL)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after a success row only: %v, want no file", ResubmitJSONL, err)
	}
	if err := r.WriteError([]byte(`{"id":"b","_error":{}}`)); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteResubmit([]byte(`{"row":1}`)); err != nil {
		t.Fatal(err)
	}
	if off, err = r.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteResubmit([]byte(`{"row":2}`)); err != nil { // after the checkpoint
		t.Fatal(err)
	}
	if _, err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r, err = Open(dir, Options{}, off)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := os.ReadFile(filepath.Join(dir, ResubmitJSONL))
	if err != nil || string(b) != `{"row":1}`+"\n" {
		t.Fatalf("%s after reopening at the checkpoint = %q, %v; want the entry written before it", ResubmitJSONL, b, err)
	}
}

func TestRowsBeforeTheCSVHeaderSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, Options{CSV: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteError([]byte(`{"_error":{"reason":"malformed_record"}}`)); err != nil {
		t.Fatal(err)
	}
	off, err := r.Sync()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, err := Open(dir, Options{CSV: true}, off)
	if err != nil {
		t.Fatal(err)
	}
	if r2.CSVPending() != 1 {
		t.Fatalf("pending after reopen: %d, want 1", r2.CSVPending())
	}
	if err := r2.SetCSVColumns([]string{"id", "q_x"}, []string{"id", "_error"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Sync(); err != nil {
		t.Fatal(err)
	}
	r2.Close()
	got, _ := os.ReadFile(filepath.Join(dir, ErrorsCSV))
	if want := "id,_error\n,\"{\"\"reason\"\":\"\"malformed_record\"\"}\"\n"; string(got) != want {
		t.Fatalf("errors.csv = %q, want %q", got, want)
	}
}

// Formula cells are escaped unless RawFormulas; a failing guard stops every write.
func TestCSVFormulaEscapingAndGuard(t *testing.T) {
	for _, raw := range []bool{false, true} {
		dir := t.TempDir()
		r, err := Open(dir, Options{CSV: true, RawFormulas: raw}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.SetCSVColumns([]string{"a", "n"}, []string{"a", "_error"}); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteOK([]byte(`{"a":"=HYPERLINK(1)","n":-5}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Sync(); err != nil {
			t.Fatal(err)
		}
		r.Close()
		got, _ := os.ReadFile(filepath.Join(dir, ResultsCSV))
		want := "a,n\n'=HYPERLINK(1),-5\n"
		if raw {
			want = "a,n\n=HYPERLINK(1),-5\n"
		}
		if string(got) != want {
			t.Fatalf("raw %v: results.csv = %q, want %q", raw, got, want)
		}
	}
	stop := errors.New("fenced")
	dir := t.TempDir()
	r, err := Open(dir, Options{Guard: func() error { return stop }}, nil)
	if !errors.Is(err, stop) || r != nil {
		t.Fatalf("open with a closed guard: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ResultsJSONL)); err == nil {
		t.Fatal("a file was created past a closed guard")
	}
}

// Every file of a run has the same mode, FileMode less the umask (0644 under umask
// 022): the rows, and the files written by rename (summary.json, checkpoint.json), which
// a temp file would otherwise leave at 0600.
func TestEveryFileOfARunHasTheSameMode(t *testing.T) {
	dir := t.TempDir()
	ref := filepath.Join(t.TempDir(), "ref")
	f, err := os.OpenFile(ref, os.O_CREATE|os.O_WRONLY, FileMode)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := os.Stat(ref)
	if err != nil {
		t.Fatal(err)
	}
	want := st.Mode().Perm()
	if want&0o400 == 0 || want&0o022 != 0 {
		t.Fatalf("FileMode under this umask is %v: not owner-readable, or writable by others", want)
	}
	r, err := Open(dir, Options{CSV: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.WriteFile(Summary, []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteFile(Checkpoint, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteFile(OpenJSON, []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteResubmit([]byte(`{"row":0}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(dir, "other.json", func(w io.Writer) error { _, err := io.WriteString(w, "{}"); return err }); err != nil {
		t.Fatal(err)
	}
	for _, name := range append(OutputFiles(true), Checkpoint, "other.json") {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v like every file of the run", name, st.Mode().Perm(), want)
		}
	}
}

// Rows with keys the CSV header lacks (JSONL rows with keys the first well-formed row
// had not) are reported by CSVExtra; WidenCSV writes both CSV files again with those
// columns after the input columns, and later rows go on under the wider header. A
// collector killed after WidenCSV but before its checkpoint reopens the files at the
// older offsets, replays the rows after them, and widens again: the CSV comes out whole.
func TestWidenCSVGivesEveryKeyOfEveryRowAColumn(t *testing.T) {
	dir := t.TempDir()
	open := func(off Offsets) *Run {
		t.Helper()
		r, err := Open(dir, Options{CSV: true}, off)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.SetCSVColumns([]string{"id", "q_x"}, []string{"id", "_error"}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	write := func(r *Run, ok bool, lines ...string) {
		t.Helper()
		for _, l := range lines {
			w := r.WriteOK
			if !ok {
				w = r.WriteError
			}
			if err := w([]byte(l)); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := open(nil)
	write(r, true, `{"id":"a","q_x":1}`, `{"id":"b","extra":"new col","q_x":2}`)
	off, err := r.Sync()
	if err != nil {
		t.Fatal(err)
	}
	extra := r.CSVExtra() // what the checkpoint at off keeps
	write(r, false, `{"id":"c","note":{"k":1},"extra":"e","_error":{"reason":"x"}}`)
	if diff := cmp.Diff([]string{"extra", "note"}, r.CSVExtra()); diff != "" {
		t.Fatalf("CSVExtra (-want +got):\n%s", diff)
	}
	if err := r.WidenCSV(); err != nil {
		t.Fatal(err)
	}
	r.Close() // killed before its checkpoint

	r = open(off)
	r.AddCSVExtra(extra)
	write(r, false, `{"id":"c","note":{"k":1},"extra":"e","_error":{"reason":"x"}}`) // replayed
	write(r, true, `{"id":"d","q_x":4}`)
	if err := r.WidenCSV(); err != nil {
		t.Fatal(err)
	}
	write(r, true, `{"id":"e","extra":"late","q_x":5}`)
	off, err = r.Sync()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	wantOK := "id,extra,note,q_x\na,,,1\nb,new col,,2\nd,,,4\ne,late,,5\n"
	wantErr := "id,extra,note,_error\nc,e,\"{\"\"k\"\":1}\",\"{\"\"reason\"\":\"\"x\"\"}\"\n"
	for name, want := range map[string]string{ResultsCSV: wantOK, ErrorsCSV: wantErr} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s =\n%s\nwant\n%s", name, got, want)
		}
		if off[name] != int64(len(got)) {
			t.Errorf("%s: Sync says %d bytes after WidenCSV, the file has %d", name, off[name], len(got))
		}
	}
}
