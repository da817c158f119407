package input

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestJSONLReader(t *testing.T) {
	t.Parallel()
	ab := []string{"a", "b"}
	tests := []struct {
		name string
		in   string
		want []rec
	}{
		{
			name: "objects, one per line",
			in:   "{\"a\":\"x\",\"b\":true}\n{\"a\":null,\"b\":false}\n",
			want: []rec{
				{Index: 0, Line: 1, Columns: ab, Values: []any{"x", true}},
				{Index: 1, Line: 2, Columns: ab, Values: []any{nil, false}},
			},
		},
		{
			name: "top-level key order is kept",
			in:   `{"z":1,"a":2,"m":3}`,
			want: []rec{{Index: 0, Line: 1, Columns: []string{"z", "a", "m"}, Values: []any{json.Number("1"), json.Number("2"), json.Number("3")}}},
		},
		{
			name: "numbers are json.Number, exactly as written",
			in:   `{"big":12345678901234567890,"dec":1.50,"exp":-1E+400,"zero":-0}`,
			want: []rec{{
				Index: 0, Line: 1,
				Columns: []string{"big", "dec", "exp", "zero"},
				Values:  []any{json.Number("12345678901234567890"), json.Number("1.50"), json.Number("-1E+400"), json.Number("-0")},
			}},
		},
		{
			name: "nested objects and arrays",
			in:   `{"o":{"y":[1,"s",{"k":null}],"x":2.0},"arr":[]}`,
			want: []rec{{
				Index: 0, Line: 1,
				Columns: []string{"o", "arr"},
				Values: []any{
					map[string]any{"y": []any{json.Number("1"), "s", map[string]any{"k": nil}}, "x": json.Number("2.0")},
					[]any{},
				},
			}},
		},
		{
			name: "blank and whitespace-only lines are skipped but counted",
			in:   "\n  \t\n{\"a\":1}\n\r\n\n{\"a\":2}\n   \n",
			want: []rec{
				{Index: 0, Line: 3, Columns: []string{"a"}, Values: []any{json.Number("1")}},
				{Index: 1, Line: 6, Columns: []string{"a"}, Values: []any{json.Number("2")}},
			},
		},
		{
			name: "CRLF line breaks and surrounding white space",
			in:   "  {\"a\":1}  \r\n{\"a\":2}\r\n",
			want: []rec{
				{Index: 0, Line: 1, Columns: []string{"a"}, Values: []any{json.Number("1")}},
				{Index: 1, Line: 2, Columns: []string{"a"}, Values: []any{json.Number("2")}},
			},
		},
		{
			name: "final line without a newline",
			in:   "{\"a\":1}\n{\"a\":2}",
			want: []rec{
				{Index: 0, Line: 1, Columns: []string{"a"}, Values: []any{json.Number("1")}},
				{Index: 1, Line: 2, Columns: []string{"a"}, Values: []any{json.Number("2")}},
			},
		},
		{
			name: "UTF-8 BOM is dropped",
			in:   "\ufeff{\"a\":1}\n",
			want: []rec{{Index: 0, Line: 1, Columns: []string{"a"}, Values: []any{json.Number("1")}}},
		},
		{
			name: "empty object is a row without columns",
			in:   "{}\n",
			want: []rec{{Index: 0, Line: 1, Columns: []string{}, Values: []any{}}},
		},
		{
			name: "invalid JSON: malformed, reading goes on",
			in:   "{\"a\":1}\n{\"a\":\n{\"a\":3}\n",
			want: []rec{
				{Index: 0, Line: 1, Columns: []string{"a"}, Values: []any{json.Number("1")}},
				{Index: 1, Line: 2, Raw: `{"a":`, Err: "line 2: invalid JSON: unexpected end of JSON input"},
				{Index: 2, Line: 3, Columns: []string{"a"}, Values: []any{json.Number("3")}},
			},
		},
		{
			name: "raw text of a malformed CRLF line has no CR",
			in:   "{a:1}\r\n",
			want: []rec{{Index: 0, Line: 1, Raw: "{a:1}", Err: "line 1: invalid JSON: invalid character 'a' looking for beginning of object key string"}},
		},
		{
			name: "NaN and Infinity are invalid",
			in:   "{\"a\":NaN}\n{\"a\":Infinity}\n",
			want: []rec{
				{Index: 0, Line: 1, Raw: `{"a":NaN}`, Err: "line 1: invalid JSON: invalid character 'N' looking for beginning of value"},
				{Index: 1, Line: 2, Raw: `{"a":Infinity}`, Err: "line 2: invalid JSON: invalid character 'I' looking for beginning of value"},
			},
		},
		{
			name: "two objects on one line",
			in:   `{"a":1} {"a":2}`,
			want: []rec{{Index: 0, Line: 1, Raw: `{"a":1} {"a":2}`, Err: "line 1: invalid JSON: invalid character '{' after top-level value"}},
		},
		{
			name: "valid JSON that is not an object",
			in:   "[1,2]\n\"s\"\n42\ntrue\nnull\n",
			want: []rec{
				{Index: 0, Line: 1, Raw: "[1,2]", Err: "line 1: not a JSON object: got array"},
				{Index: 1, Line: 2, Raw: `"s"`, Err: "line 2: not a JSON object: got string"},
				{Index: 2, Line: 3, Raw: "42", Err: "line 3: not a JSON object: got number"},
				{Index: 3, Line: 4, Raw: "true", Err: "line 4: not a JSON object: got boolean"},
				{Index: 4, Line: 5, Raw: "null", Err: "line 5: not a JSON object: got null"},
			},
		},
		{
			name: "duplicate keys",
			in:   "{\"a\":1,\"b\":2,\"a\":3}\n{\"a\":1,\"\\u0061\":2}\n{\"o\":{\"a\":1},\"a\":{\"a\":2}}\n",
			want: []rec{
				{Index: 0, Line: 1, Raw: `{"a":1,"b":2,"a":3}`, Err: `line 1: duplicate key "a"`},
				{Index: 1, Line: 2, Raw: `{"a":1,"\u0061":2}`, Err: `line 2: duplicate key "a"`},
				{Index: 2, Line: 3, Columns: []string{"o", "a"}, Values: []any{map[string]any{"a": json.Number("1")}, map[string]any{"a": json.Number("2")}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := NewJSONL(strings.NewReader(tt.in))
			if h := r.Header(); h != nil {
				t.Errorf("Header(): got %q, want nil", h)
			}
			if diff := cmp.Diff(tt.want, readAll(t, r)); diff != "" {
				t.Errorf("rows mismatch (-want +got):\n%s", diff)
			}
			if _, err := r.Next(); !errors.Is(err, io.EOF) {
				t.Errorf("Next after EOF: got %v, want io.EOF", err)
			}
		})
	}
}

func TestJSONLDuplicateKeysInWideObject(t *testing.T) {
	t.Parallel()
	// Past 16 keys duplicates are found through a map; check both paths.
	for _, n := range []int{3, 16, 17, 100} {
		t.Run(fmt.Sprintf("%d keys", n), func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			b.WriteByte('{')
			for i := range n {
				fmt.Fprintf(&b, "\"k%d\":%d,", i, i)
			}
			good := strings.TrimSuffix(b.String(), ",") + "}"
			dup := b.String() + `"k1":0}`
			r := NewJSONL(strings.NewReader(good + "\n" + dup + "\n"))
			rows := readAll(t, r)
			if len(rows) != 2 {
				t.Fatalf("got %d rows, want 2", len(rows))
			}
			if rows[0].Err != "" || len(rows[0].Columns) != n {
				t.Errorf("good row: got %d columns, error %q; want %d columns", len(rows[0].Columns), rows[0].Err, n)
			}
			if want := `line 2: duplicate key "k1"`; rows[1].Err != want {
				t.Errorf("duplicate row: got error %q, want %q", rows[1].Err, want)
			}
		})
	}
}

func TestJSONLLimits(t *testing.T) {
	t.Parallel()
	t.Run("line too long is malformed and reading goes on", func(t *testing.T) {
		t.Parallel()
		long := `{"a":"` + strings.Repeat("é", 100) + `"}`
		in := "{\"a\":1}\n" + long + "\n{\"a\":3}"
		// The bufio buffer is 64 KiB, so use a long line to exercise ErrBufferFull too.
		huge := `{"a":"` + strings.Repeat("x", 200<<10) + `"}`
		in += "\n" + huge + "\r\n{\"a\":5}\n"
		r := newJSONL(strings.NewReader(in), 64, 9)
		want := []rec{
			{Index: 0, Line: 1, Columns: []string{"a"}, Values: []any{json.Number("1")}},
			{Index: 1, Line: 2, Raw: `{"a":"é`, Err: "line 2: line too long: more than 64 bytes"},
			{Index: 2, Line: 3, Columns: []string{"a"}, Values: []any{json.Number("3")}},
			{Index: 3, Line: 4, Raw: `{"a":"xxx`, Err: "line 4: line too long: more than 64 bytes"},
			{Index: 4, Line: 5, Columns: []string{"a"}, Values: []any{json.Number("5")}},
		}
		if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
			t.Errorf("rows mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("line of exactly the limit is fine", func(t *testing.T) {
		t.Parallel()
		line := `{"a":"` + strings.Repeat("x", 56) + `"}`
		r := newJSONL(strings.NewReader(line+"\n"+line), len(line), 9)
		rows := readAll(t, r)
		if len(rows) != 2 || rows[0].Err != "" || rows[1].Err != "" {
			t.Errorf("got %+v, want two good rows", rows)
		}
	})
	t.Run("long line with default limits", func(t *testing.T) {
		t.Parallel()
		line := `{"a":"` + strings.Repeat("x", 1<<20) + `"}`
		rows := readAll(t, NewJSONL(strings.NewReader(line)))
		if len(rows) != 1 || rows[0].Err != "" {
			t.Fatalf("got %d rows, want one good row", len(rows))
		}
	})
}

func TestJSONLMalformedRecordLosesNothing(t *testing.T) {
	t.Parallel()
	bad := []string{`{"a":`, `[1]`, `{"id":1,"id":2}`, `{"a":1}}`, `nope`, `{"a":NaN}`}
	var b strings.Builder
	const good = 1000
	for i := range good {
		fmt.Fprintf(&b, "{\"id\":%d}\n", i)
		if i%100 == 50 {
			b.WriteString(bad[(i/100)%len(bad)] + "\n")
		}
	}
	rows := readAll(t, NewJSONL(strings.NewReader(b.String())))
	var next, nbad int
	for i, row := range rows {
		if row.Index != i || row.Line != i+1 {
			t.Fatalf("row %d: Index %d, Line %d", i, row.Index, row.Line)
		}
		if row.Err != "" {
			nbad++
			continue
		}
		if diff := cmp.Diff([]any{json.Number(fmt.Sprint(next))}, row.Values); diff != "" {
			t.Fatalf("row %d mismatch (-want +got):\n%s", i, diff)
		}
		next++
	}
	if next != good || nbad != good/100 {
		t.Errorf("got %d good and %d malformed rows, want %d and %d", next, nbad, good, good/100)
	}
}

func TestJSONLStreamError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	r := NewJSONL(&failingReader{data: []byte("{\"a\":1}\n{\"a\""), err: boom})
	row, err := r.Next()
	if err != nil || row.Err != nil {
		t.Fatalf("first Next: got row error %v, error %v; want a good row", row.Err, err)
	}
	for range 2 { // the error is sticky
		if _, err := r.Next(); !errors.Is(err, boom) {
			t.Fatalf("Next: got %v, want %v", err, boom)
		}
	}
}
