package input_test

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/multiquery/multiquery/internal/input"
)

func ExampleNewReader() {
	in := "id,name,note\n" +
		"1,alice,\"likes \"\"Go\"\", tea\"\n" +
		"2,bob\n" + // one field short: malformed, reading goes on
		"3,carol,\"two\nlines\"\n"
	r, err := input.NewReader(strings.NewReader(in), input.CSV)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println("columns:", r.Header())
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Println("error:", err) // the stream failed: stop
			return
		}
		if row.Err != nil {
			fmt.Printf("row %d malformed: %v (raw %q)\n", row.Index, row.Err, row.Raw)
			continue
		}
		b, err := row.JSON()
		if err != nil {
			fmt.Println("error:", err)
			return
		}
		fmt.Printf("row %d, line %d: %s\n", row.Index, row.Line, b)
	}
	// Output:
	// columns: [id name note]
	// row 0, line 2: {"id":"1","name":"alice","note":"likes \"Go\", tea"}
	// row 1 malformed: line 3: wrong number of fields: got 2, want 3 (raw "2,bob")
	// row 2, line 4: {"id":"3","name":"carol","note":"two\nlines"}
}

func ExampleNewJSONL() {
	in := `{"id":7,"price":1.50,"big":12345678901234567890,"tags":["a"]}` + "\n" +
		"\n" +
		`[1,2]` + "\n"
	r := input.NewJSONL(strings.NewReader(in))
	for {
		row, err := r.Next()
		if err != nil {
			break // io.EOF here; a real caller tells EOF from a stream error
		}
		if row.Err != nil {
			fmt.Println(row.Err)
			continue
		}
		b, _ := row.JSON()
		fmt.Println(row.Columns, string(b))
	}
	// Output:
	// [id price big tags] {"id":7,"price":1.50,"big":12345678901234567890,"tags":["a"]}
	// line 3: not a JSON object: got array
}
