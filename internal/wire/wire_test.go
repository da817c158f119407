package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func validJob() Job {
	return Job{V: 1, Run: "run-1", Row: 3, Query: "q1", Deployment: "default",
		Request: Request{Model: "m", Messages: []Message{{Role: "user", Content: "json please"}}, ResponseFormat: FormatStandard},
		Outputs: []OutputField{{Field: "score", Column: "q1_score", Type: TypeInteger}}, MaxCapacityRetrySeconds: 3600, MaxAttempts: 5}
}

func TestSubjectsRoundTrip(t *testing.T) {
	dep, a, err := ParseJobSubject(JobSubject("default", "run-1", 12, "cs1_k2"))
	if err != nil || dep != "default" || a != (Addr{Run: "run-1", Row: 12, Query: "cs1_k2"}) {
		t.Fatalf("ParseJobSubject = %q %+v %v", dep, a, err)
	}
	r, err := ParseResultSubject(ResultSubject("run-1", 7, "q"))
	if err != nil || r != (Addr{Run: "run-1", Row: 7, Query: "q"}) {
		t.Fatalf("ParseResultSubject = %+v %v", r, err)
	}
	for subj, want := range map[string]InputKind{"input.r.open": InputOpen, "input.r.seal": InputSeal, "input.r.42": InputRow} {
		_, kind, _, err := ParseInputSubject(subj)
		if err != nil || kind != want {
			t.Errorf("ParseInputSubject(%q) = %v %v, want %v", subj, kind, err, want)
		}
	}
	for _, bad := range []string{"jobs.a.b.c", "jobs.a.r.-1.q", "jobs.a.r.x.q"} {
		if _, _, err := ParseJobSubject(bad); err == nil {
			t.Errorf("ParseJobSubject(%q) accepted", bad)
		}
	}
}

func TestDecodeChecksTheVersion(t *testing.T) {
	var j Job
	if err := Decode([]byte(`{"v":3,"run":"r"}`), &j); !errors.Is(err, ErrNewerVersion) {
		t.Fatalf("v3: err = %v, want ErrNewerVersion", err)
	}
	if err := Decode([]byte(`{"v":2,"run":"r","data":{"id":"a"}}`), &j); err != nil || string(j.Data) != `{"id":"a"}` {
		t.Fatalf("v2 (a job that carries its row): err = %v, data %s", err, j.Data)
	}
	if err := Decode([]byte(`{"run":"r"}`), &j); err == nil || errors.Is(err, ErrNewerVersion) {
		t.Fatalf("no version: err = %v, want a decode error", err)
	}
	if err := Decode([]byte(`not json`), &j); err == nil {
		t.Fatal("garbage decoded")
	}
}

func TestJobValidateNamesTheField(t *testing.T) {
	for name, mutate := range map[string]func(*Job){
		"run":                        func(j *Job) { j.Run = "a.b" },
		"query":                      func(j *Job) { j.Query = "" },
		"deployment":                 func(j *Job) { j.Deployment = "x y" },
		"request.messages":           func(j *Job) { j.Request.Messages = nil },
		"request.response_format":    func(j *Job) { j.Request.ResponseFormat = "xml" },
		"outputs[0].values":          func(j *Job) { j.Outputs[0].Type = TypeEnum },
		"max_capacity_retry_seconds": func(j *Job) { j.MaxCapacityRetrySeconds = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			j := validJob()
			mutate(&j)
			err := j.Validate()
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("Validate = %v, want an error naming %s", err, name)
			}
		})
	}
	j := validJob()
	if err := j.Validate(); err != nil {
		t.Fatalf("valid job: %v", err)
	}
}

func TestErrorMarshalsFlat(t *testing.T) {
	b, err := json.Marshal(&Error{Reason: ReasonTypeMismatch, Message: "want integer", Details: map[string]any{"field": "score"}})
	if err != nil {
		t.Fatal(err)
	}
	var back Error
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Reason != ReasonTypeMismatch || back.Message != "want integer" || back.Details["field"] != "score" {
		t.Fatalf("round trip = %+v from %s", back, b)
	}
}

func FuzzDecodeJob(f *testing.F) {
	b, _ := json.Marshal(validJob())
	f.Add(b)
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{"v":99}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var j Job
		if err := Decode(data, &j); err != nil {
			return
		}
		if err := j.Validate(); err != nil {
			return
		}
		// A valid job re-encodes and decodes to the same address.
		b, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var k Job
		if err := Decode(b, &k); err != nil || k.Addr() != j.Addr() {
			t.Fatalf("round trip: %v %+v vs %+v", err, k.Addr(), j.Addr())
		}
	})
}

func TestLeadingVersionAgreesWithAFullDecode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{`{"v":1,"run":"r"}`, 1, true},
		{` { "v" : 12 }`, 12, true},
		{`{"v":2}`, 2, true},
		{`{"v":01}`, 0, false},  // not JSON: the full decode says so
		{`{"v":1.5}`, 0, false}, // not an int: the full decode says so
		{`{"v":"1"}`, 0, false},
		{`{"run":"r","v":1}`, 0, false}, // not first: the full probe reads it
		{`{"v":-1}`, 0, false},
		{`{"v":1`, 0, false},
		{``, 0, false},
	} {
		got, ok := leadingVersion([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("leadingVersion(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzLeadingVersion(f *testing.F) {
	f.Add([]byte(`{"v":1,"run":"r"}`))
	f.Add([]byte(`{"v":3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := leadingVersion(data)
		if !ok {
			return
		}
		var probe struct {
			V int `json:"v"`
		}
		// Where the whole payload is JSON, the full decode reads the same version
		// (a duplicate "v" key aside: the last one wins there).
		if err := json.Unmarshal(data, &probe); err == nil && probe.V != got && strings.Count(string(data), `"v"`) == 1 {
			t.Fatalf("leadingVersion(%q) = %d, full decode %d", data, got, probe.V)
		}
	})
}

// A subject token is one or more ASCII letters, digits, '_' and '-': nothing that NATS
// reads as a separator or wildcard, no whitespace, no other letters.
func TestValidToken(t *testing.T) {
	for s, want := range map[string]bool{
		"run-1": true, "A_z-09": true, "0": true, "019a2b3c-0000-7000-8000-000000000000": true,
		"": false, "a.b": false, "a*": false, ">": false, "a b": false, "tab\t": false,
		"é": false, "ａ": false, "a/b": false, "a\x00": false,
	} {
		if got := ValidToken(s); got != want {
			t.Errorf("ValidToken(%q) = %v, want %v", s, got, want)
		}
	}
}
