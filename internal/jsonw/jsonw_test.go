package jsonw

import (
	"encoding/json"
	"math"
	"testing"
	"time"
)

func marshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAStringIsWrittenAsEncodingJSONWritesIt, whatever it holds: quotes, backslashes,
// control characters, HTML characters, invalid UTF-8, JavaScript line ends, emoji.
func TestAStringIsWrittenAsEncodingJSONWritesIt(t *testing.T) {
	for _, s := range []string{
		"", "plain", `say "hi" \ back`, "tab\tnew\nline\rcr\x00nul\x1fus\x7fdel\bbs\fff",
		"<b>&amp;</b>", "bad \xff\xfe utf8 \xe2\x28\xa1 end\xe2", "line\u2028sep\u2029para",
		"émoji 😀 中文", "e\u0301", "\xed\xa0\x80 surrogate half", "\uFFFD real replacement",
	} {
		if got, want := string(String(nil, s)), marshal(t, s); got != want {
			t.Errorf("%q:\n got %s\nwant %s", s, got, want)
		}
	}
}

// TestAFloatIsWrittenAsEncodingJSONWritesIt: the shortest form, an exponent only out of
// [1e-6, 1e21), two exponent digits at least.
func TestAFloatIsWrittenAsEncodingJSONWritesIt(t *testing.T) {
	for _, f := range []float64{0, math.Copysign(0, -1), 1, -1, 0.7, 1.25, 2, 0.000001, 1e-7, 9.99e-7,
		123456789, 1e20, 1e21, 1.5e300, 3.5e-12, -0.5, 0.1 + 0.2, math.MaxFloat64, math.SmallestNonzeroFloat64} {
		b, err := Float(nil, f)
		if err != nil {
			t.Fatalf("%v: %v", f, err)
		}
		if got, want := string(b), marshal(t, f); got != want {
			t.Errorf("%v: got %s, want %s", f, got, want)
		}
	}
}

// TestTimesIntsAndBoolsAreWrittenAsEncodingJSONWritesThem: an object built of them is
// the one encoding/json writes for the same struct.
func TestTimesIntsAndBoolsAreWrittenAsEncodingJSONWritesThem(t *testing.T) {
	type rec struct {
		A int64     `json:"a"`
		B bool      `json:"b"`
		T time.Time `json:"t"`
		L []int64   `json:"l"`
	}
	for _, r := range []rec{
		{A: -42, B: true, T: time.Date(2026, 12, 2, 15, 4, 5, 123456789, time.UTC), L: []int64{1, 2}},
		{T: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), L: []int64{}},
		{A: math.MaxInt64, T: time.Date(2026, 6, 1, 12, 0, 0, 1000, time.FixedZone("x", 3600+1800)), L: []int64{7}},
	} {
		b := Int([]byte(`{"a":`), r.A)
		b = Bool(append(b, `,"b":`...), r.B)
		b = Time(append(b, `,"t":`...), r.T)
		b = append(b, `,"l":[`...)
		for i, v := range r.L {
			if i > 0 {
				b = append(b, ',')
			}
			b = Int(b, v)
		}
		b = append(b, ']', '}')
		if got, want := string(b), marshal(t, r); got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
}

// TestNaNAndTheInfinitiesAreRefused: JSON has no number for them.
func TestNaNAndTheInfinitiesAreRefused(t *testing.T) {
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if b, err := Float([]byte("x"), f); err == nil || string(b) != "x" {
			t.Errorf("%v: wrote %q, err %v; want an error and nothing written", f, b, err)
		}
	}
}
