package collector

import (
	"encoding/json"
	"slices"
	"testing"
)

// eachKey finds the same top-level keys, in the same order, as a JSON decoder, whatever
// the values hold (nested objects, arrays, strings with braces, quotes and escapes).
func TestEachKeyFindsWhatADecoderFinds(t *testing.T) {
	for _, obj := range []string{
		`{}`,
		` { } `,
		`{"a":1}`,
		`{"a":1,"b":"x","c":true,"d":false,"e":null,"f":-1.5e3}`,
		`{ "a" : { "x" : [1, {"y": "}"}, "]"] } , "b" : [ ] , "c" : {} }`,
		`{"q\"uote":"a\\\"b","br{ace":"}{][","esc\u0061ped":"\u00e9","tab\tkey":"\n"}`,
		"{\n\t\"a\": [[[]]],\r\n\t\"b\": \"\\\\\"\n}",
		`{"a":"\\","b":"\\\\","c":"x\\\"y"}`,
		`{"ключ":"значение","a":{"b":{"c":{"d":[1,2,{"e":"f"}]}}},"z":0}`,
	} {
		if !json.Valid([]byte(obj)) {
			t.Fatalf("test object %s is not valid JSON", obj)
		}
		var got []string
		eachKey([]byte(obj), func(k string) bool { got = append(got, k); return true })
		if want := objectKeys(json.RawMessage(obj)); !slices.Equal(got, want) {
			t.Errorf("eachKey(%s) = %q, want %q", obj, got, want)
		}
	}
}

// An input row's data is refused for a repeated key (also when one of the two is
// escaped) and for a key an output writes, and taken otherwise; malformed data is
// refused with what is wrong.
func TestCheckRowData(t *testing.T) {
	r := &run{reserved: map[string]bool{"sentiment_label": true}}
	for data, want := range map[string]string{
		`{"id":1,"text":"a"}`:                "",
		`{"id":1,"nested":{"id":2,"id":3}}`:  "",
		`{"id":1,"id":2}`:                    `input key "id" appears twice`,
		`{"id":1,"\u0069d":2}`:               `input key "id" appears twice`,
		`{"text":"x","sentiment_label":"y"}`: `input key "sentiment_label" is also an output column`,
		`[1,2]`:                              "input row data is not a JSON object",
		`{"id":1,`:                           "input row data: EOF",
		`{"id" 1}`:                           "input row data: expected colon after object key",
	} {
		var got string
		if e := r.checkRowData(json.RawMessage(data), true); e != nil {
			got = e.Message
		}
		if got != want {
			t.Errorf("checkRowData(%s) = %q, want %q", data, got, want)
		}
	}
}
