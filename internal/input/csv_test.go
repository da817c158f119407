package input

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCSVReader(t *testing.T) {
	t.Parallel()
	abc := []string{"a", "b", "c"}
	tests := []struct {
		name       string
		in         string
		wantHeader []string
		want       []rec
	}{
		{
			name:       "LF records",
			in:         "a,b,c\n1,2,3\n4,5,6\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "3")},
				{Index: 1, Line: 3, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "CRLF records",
			in:         "a,b,c\r\n1,2,3\r\n4,5,6\r\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "3")},
				{Index: 1, Line: 3, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "last record without line break",
			in:         "a,b,c\n1,2,3",
			wantHeader: abc,
			want:       []rec{{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "3")}},
		},
		{
			name:       "trailing CR at end of input ends the line",
			in:         "a,b,c\n1,2,3\r",
			wantHeader: abc,
			want:       []rec{{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "3")}},
		},
		{
			name:       "lone CR inside a field is data",
			in:         "a,b,c\n1,x\ry,3\n",
			wantHeader: abc,
			want:       []rec{{Index: 0, Line: 2, Columns: abc, Values: vals("1", "x\ry", "3")}},
		},
		{
			name:       "UTF-8 BOM is stripped from the first column name",
			in:         "\ufeffa,b,c\n1,2,3\n",
			wantHeader: abc,
			want:       []rec{{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "3")}},
		},
		{
			name:       "header names are trimmed, values are not",
			in:         " a ,\tb, c \n 1 ,2 , 3\n",
			wantHeader: abc,
			want:       []rec{{Index: 0, Line: 2, Columns: abc, Values: vals(" 1 ", "2 ", " 3")}},
		},
		{
			name:       "quoted header name",
			in:         "\"a\",\"b,x\",c\n1,2,3\n",
			wantHeader: []string{"a", "b,x", "c"},
			want:       []rec{{Index: 0, Line: 2, Columns: []string{"a", "b,x", "c"}, Values: vals("1", "2", "3")}},
		},
		{
			name:       "quoted fields with commas and doubled quotes",
			in:         "a,b,c\n\"x,y\",\"say \"\"hi\"\"\",\"\"\n",
			wantHeader: abc,
			want:       []rec{{Index: 0, Line: 2, Columns: abc, Values: vals("x,y", `say "hi"`, "")}},
		},
		{
			name:       "embedded newlines: Line is where the record starts",
			in:         "a,b,c\n1,\"two\nlines\",3\n4,\"three\n\nlines\",6\n7,8,9\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Columns: abc, Values: vals("1", "two\nlines", "3")},
				{Index: 1, Line: 4, Columns: abc, Values: vals("4", "three\n\nlines", "6")},
				{Index: 2, Line: 7, Columns: abc, Values: vals("7", "8", "9")},
			},
		},
		{
			name:       "CRLF inside quotes becomes LF",
			in:         "a,b,c\r\n1,\"x\r\ny\",3\r\n4,5,6\r\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Columns: abc, Values: vals("1", "x\ny", "3")},
				{Index: 1, Line: 4, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "empty lines are skipped but counted",
			in:         "\n\na,b,c\n\n1,2,3\r\n\r\n\n4,5,6\n\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 5, Columns: abc, Values: vals("1", "2", "3")},
				{Index: 1, Line: 8, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "trailing comma is an empty last field",
			in:         "a,b,c\n1,2,\n,,\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "")},
				{Index: 1, Line: 3, Columns: abc, Values: vals("", "", "")},
			},
		},
		{
			name:       "single column: quoted empty field is a record, empty line is not",
			in:         "a\n\"\"\n\nx\n",
			wantHeader: []string{"a"},
			want: []rec{
				{Index: 0, Line: 2, Columns: []string{"a"}, Values: vals("")},
				{Index: 1, Line: 4, Columns: []string{"a"}, Values: vals("x")},
			},
		},
		{
			name:       "header only",
			in:         "a,b,c\n",
			wantHeader: abc,
		},
		{
			name:       "wrong number of fields",
			in:         "a,b,c\n1,2\n1,2,3,4\n5,6,7\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Raw: "1,2", Err: "line 2: wrong number of fields: got 2, want 3"},
				{Index: 1, Line: 3, Raw: "1,2,3,4", Err: "line 3: wrong number of fields: got 4, want 3"},
				{Index: 2, Line: 4, Columns: abc, Values: vals("5", "6", "7")},
			},
		},
		{
			name:       "whitespace-only line is a record with one field",
			in:         "a,b,c\n \n1,2,3\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Raw: " ", Err: "line 2: wrong number of fields: got 1, want 3"},
				{Index: 1, Line: 3, Columns: abc, Values: vals("1", "2", "3")},
			},
		},
		{
			name:       "bare quote: malformed, next line still read",
			in:         "a,b,c\n1,x\"y,3\n4,5,6\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Raw: `1,x"y,3`, Err: `line 2: bare " in non-quoted field in field 2`},
				{Index: 1, Line: 3, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "bare quote followed by an opening quote on the same line",
			in:         "a,b,c\nx\"y,\"z\n4,5,6\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Raw: "x\"y,\"z", Err: `line 2: bare " in non-quoted field in field 1`},
				{Index: 1, Line: 3, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "text after closing quote: malformed, next line still read",
			in:         "a,b,c\r\n1,\"x\"y,3\r\n4,5,6\r\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Raw: `1,"x"y,3`, Err: `line 2: extraneous " after quoted field in field 2`},
				{Index: 1, Line: 3, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "quote error on a later line of a multi-line record",
			in:         "a,b,c\n1,\"x\ny\"z,3\n4,5,6\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Raw: "1,\"x\ny\"z,3", Err: `line 2: extraneous " after quoted field in field 2 (line 3)`},
				{Index: 1, Line: 4, Columns: abc, Values: vals("4", "5", "6")},
			},
		},
		{
			name:       "unterminated quote at the end swallows the rest",
			in:         "a,b,c\n1,2,3\n4,\"5,6\n7,8,9\n",
			wantHeader: abc,
			want: []rec{
				{Index: 0, Line: 2, Columns: abc, Values: vals("1", "2", "3")},
				{Index: 1, Line: 3, Raw: "4,\"5,6\n7,8,9\n", Err: "line 3: unterminated quote in field 2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewCSV(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("NewCSV: %v", err)
			}
			if diff := cmp.Diff(tt.wantHeader, r.Header()); diff != "" {
				t.Errorf("Header() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, readAll(t, r)); diff != "" {
				t.Errorf("rows mismatch (-want +got):\n%s", diff)
			}
			// EOF is sticky.
			if _, err := r.Next(); !errors.Is(err, io.EOF) {
				t.Errorf("Next after EOF: got %v, want io.EOF", err)
			}
		})
	}
}

func TestNewCSVHeaderErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "empty input", in: "", wantErr: "read csv header: empty input"},
		{name: "only a BOM", in: "\ufeff", wantErr: "read csv header: empty input"},
		{name: "only empty lines", in: "\n\r\n\n", wantErr: "read csv header: empty input"},
		{name: "empty column name", in: "a,,c\n1,2,3\n", wantErr: "csv header: column 2 has an empty name"},
		{name: "blank column name", in: "a,b,  \n", wantErr: "csv header: column 3 has an empty name"},
		{name: "trailing comma", in: "a,b,\n", wantErr: "csv header: column 3 has an empty name"},
		{name: "duplicate column", in: "a,b,a\n", wantErr: `csv header: duplicate column "a" (columns 1 and 3)`},
		{name: "duplicate after trimming", in: "id, id\n", wantErr: `csv header: duplicate column "id" (columns 1 and 2)`},
		{name: "invalid UTF-8 name", in: "a,\xff\n", wantErr: `csv header: column 2 name "\xff" is not valid UTF-8`},
		{name: "bare quote in header", in: "a,b\"c\n", wantErr: `read csv header: line 1: bare " in non-quoted field in field 2`},
		{name: "unterminated quote in header", in: "a,\"b\n1,2\n", wantErr: `read csv header: line 1: unterminated quote in field 2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := NewCSV(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("NewCSV: got reader with header %q, want error %q", r.Header(), tt.wantErr)
			}
			if got := err.Error(); got != tt.wantErr {
				t.Errorf("NewCSV error: got %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestCSVHeaderErrorIsRecordError(t *testing.T) {
	t.Parallel()
	_, err := NewCSV(strings.NewReader("\n\na,\"b\"x\n"))
	var re *RecordError
	if !errors.As(err, &re) {
		t.Fatalf("NewCSV error %v: want a *RecordError inside", err)
	}
	if re.Line != 3 {
		t.Errorf("RecordError.Line: got %d, want 3", re.Line)
	}
}

func TestCSVMalformedRecordLosesNothing(t *testing.T) {
	t.Parallel()
	// Every kind of malformed record, each in the middle of good ones.
	bad := []string{
		"1,2",            // too few fields
		"1,2,3,4",        // too many fields
		`1,x"y,3`,        // bare quote
		`1,"x"y,3`,       // text after a closing quote
		"1,\"x\ny\"z,3",  // quote error on the second line of a record
		`"a""b"c,"d",e"`, // several errors on one line
	}
	var b strings.Builder
	b.WriteString("id,name,n\n")
	const good = 1000
	for i := range good {
		fmt.Fprintf(&b, "%d,\"name %d\",%d\n", i, i, i)
		if i%100 == 50 {
			b.WriteString(bad[(i/100)%len(bad)] + "\n")
		}
	}
	r, err := NewCSV(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("NewCSV: %v", err)
	}
	rows := readAll(t, r)
	var next, nbad int
	for i, row := range rows {
		if row.Index != i {
			t.Fatalf("row %d: Index %d", i, row.Index)
		}
		if row.Err != "" {
			nbad++
			continue
		}
		want := vals(fmt.Sprint(next), fmt.Sprintf("name %d", next), fmt.Sprint(next))
		if diff := cmp.Diff(want, row.Values); diff != "" {
			t.Fatalf("row %d (line %d) mismatch (-want +got):\n%s", i, row.Line, diff)
		}
		next++
	}
	if next != good || nbad != good/100 {
		t.Errorf("got %d good and %d malformed rows, want %d and %d", next, nbad, good, good/100)
	}
}

func TestCSVLimits(t *testing.T) {
	t.Parallel()
	t.Run("record too long is malformed and reading goes on", func(t *testing.T) {
		t.Parallel()
		long := strings.Repeat("x", 40)
		in := "a,b\n1,2\n" + long + ",\"" + long + "\n" + long + "\"\n3,4\n"
		r, err := newCSV(strings.NewReader(in), 64, 16)
		if err != nil {
			t.Fatalf("newCSV: %v", err)
		}
		want := []rec{
			{Index: 0, Line: 2, Columns: []string{"a", "b"}, Values: vals("1", "2")},
			{Index: 1, Line: 3, Raw: long[:16], Err: "line 3: record too long: more than 64 bytes"},
			{Index: 2, Line: 5, Columns: []string{"a", "b"}, Values: vals("3", "4")},
		}
		if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
			t.Errorf("rows mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("record of exactly the limit is fine", func(t *testing.T) {
		t.Parallel()
		in := "a\n" + strings.Repeat("x", 64) + "\r\n"
		r, err := newCSV(strings.NewReader(in), 64, 16)
		if err != nil {
			t.Fatalf("newCSV: %v", err)
		}
		want := []rec{{Index: 0, Line: 2, Columns: []string{"a"}, Values: vals(strings.Repeat("x", 64))}}
		if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
			t.Errorf("rows mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("raw text is cut at a rune boundary", func(t *testing.T) {
		t.Parallel()
		in := "a,b\n" + "ab" + strings.Repeat("é", 10) + "\n"
		r, err := newCSV(strings.NewReader(in), 1<<10, 7)
		if err != nil {
			t.Fatalf("newCSV: %v", err)
		}
		want := []rec{{Index: 0, Line: 2, Raw: "abéé", Err: "line 2: wrong number of fields: got 1, want 2"}}
		if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
			t.Errorf("rows mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("unterminated quote over a long input is bounded", func(t *testing.T) {
		t.Parallel()
		in := "a\n\"" + strings.Repeat("line\n", 100)
		r, err := newCSV(strings.NewReader(in), 64, 8)
		if err != nil {
			t.Fatalf("newCSV: %v", err)
		}
		want := []rec{{Index: 0, Line: 2, Raw: "\"line\nli", Err: "line 2: unterminated quote in field 1"}}
		if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
			t.Errorf("rows mismatch (-want +got):\n%s", diff)
		}
	})
}

func TestCSVStreamError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	r, err := NewCSV(&failingReader{data: []byte("a,b\n1,2\n3,"), err: boom})
	if err != nil {
		t.Fatalf("NewCSV: %v", err)
	}
	row, err := r.Next()
	if err != nil || row.Err != nil {
		t.Fatalf("first Next: got row error %v, error %v; want a good row", row.Err, err)
	}
	for range 2 { // the error is sticky
		if _, err := r.Next(); !errors.Is(err, boom) {
			t.Fatalf("Next: got %v, want %v", err, boom)
		}
	}
	if _, err := NewCSV(&failingReader{err: boom}); !errors.Is(err, boom) {
		t.Errorf("NewCSV on failing stream: got %v, want %v", err, boom)
	}
}
