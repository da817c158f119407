package input

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
)

func BenchmarkCSV(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteString("id,name,text,score\n")
	for i := range 10000 {
		fmt.Fprintf(&buf, "%d,name %d,\"some text, with a comma and \"\"quotes\"\"\",%d.5\n", i, i, i)
	}
	benchReader(b, buf.Bytes(), func(r io.Reader) (Reader, error) { return NewCSV(r) })
}

func BenchmarkJSONL(b *testing.B) {
	var buf bytes.Buffer
	for i := range 10000 {
		fmt.Fprintf(&buf, `{"id":%d,"name":"name %d","text":"some text","score":%d.5,"tags":["a","b"]}`+"\n", i, i, i)
	}
	benchReader(b, buf.Bytes(), func(r io.Reader) (Reader, error) { return NewJSONL(r), nil })
}

func benchReader(b *testing.B, data []byte, open func(io.Reader) (Reader, error)) {
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := open(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		for {
			row, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil || row.Err != nil {
				b.Fatalf("Next: %v, %v", err, row.Err)
			}
		}
	}
}
