package collector

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/multiquery/multiquery/internal/wire"
)

// foldByMarshal is how fold wrote a success line before it kept its keys per run: every
// key and value through encoding/json, row by row. fold must write the same bytes.
func foldByMarshal(r *run, data json.RawMessage, results []wire.Result) []byte {
	var b bytes.Buffer
	b.Write(openObject(data))
	first := isEmptyObject(data)
	add := func(k string, v []byte) {
		if !first {
			b.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(v)
	}
	for qi, q := range r.open.Queries {
		res := &results[qi]
		for _, col := range q.Columns {
			add(col, res.Fields[col])
		}
		u, _ := json.Marshal(res.Usage)
		add(q.Name+"_usage", u)
		m, _ := json.Marshal(res.Model)
		add(q.Name+"_model", m)
		if r.open.Cache {
			add(q.Name+"_cached", strconv.AppendBool(nil, res.Cached))
		}
		if len(r.open.Pools) > 0 {
			d, _ := json.Marshal(res.Deployment)
			add(q.Name+"_deployment", d)
		}
	}
	b.WriteByte('}')
	return b.Bytes()
}

// TestFoldWritesWhatEncodingJSONWrites: a success row's line is byte for byte what
// encoding/json makes of its keys and values, whatever the names hold (HTML characters,
// quotes, non-ASCII), with and without usage, cache and pools, and as the model changes
// from row to row.
func TestFoldWritesWhatEncodingJSONWrites(t *testing.T) {
	open := wire.Open{Queries: []wire.QueryInfo{
		{Name: "q<1>", Columns: []string{"a&b", `quo"te`}},
		{Name: "критерий", Columns: []string{"score"}},
	}}
	rows := []struct {
		data    string
		results []wire.Result
	}{
		{`{"id":"1","text":"x"}`, []wire.Result{
			{OK: true, Fields: map[string]json.RawMessage{"a&b": json.RawMessage(`"<ok>"`), `quo"te`: json.RawMessage(`1`)}, Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}, Model: "gpt-4o"},
			{OK: true, Fields: map[string]json.RawMessage{"score": json.RawMessage(`-2.5`)}, Model: "gpt-4o", Cached: true, Deployment: "east"},
		}},
		{`{}`, []wire.Result{
			{OK: true, Fields: map[string]json.RawMessage{"a&b": json.RawMessage(`null`), `quo"te`: json.RawMessage(`[1,2]`)}, Usage: &wire.Usage{}, Model: `model "<2>"`},
			{OK: true, Fields: map[string]json.RawMessage{"score": json.RawMessage(`{"x":1}`)}, Usage: &wire.Usage{PromptTokens: 1 << 40, TotalTokens: 1 << 40}, Model: "ü-model"},
		}},
		{` { "id" : 7 } `, []wire.Result{
			{OK: true, Fields: map[string]json.RawMessage{"a&b": json.RawMessage(`true`), `quo"te`: json.RawMessage(`""`)}, Model: "gpt-4o"},
			{OK: true, Fields: map[string]json.RawMessage{"score": json.RawMessage(`0`)}, Model: ""},
		}},
	}
	for _, shape := range []struct {
		name  string
		cache bool
		pools []wire.Pool
	}{{"plain", false, nil}, {"cache and pools", true, []wire.Pool{{Name: "p"}}}} {
		o := open
		o.Cache, o.Pools = shape.cache, shape.pools
		r, oracle := &run{open: o}, &run{open: o}
		for i, row := range rows {
			got, ok := r.fold(json.RawMessage(row.data), row.results)
			want := foldByMarshal(oracle, json.RawMessage(row.data), row.results)
			if !ok || !bytes.Equal(got, want) {
				t.Errorf("%s, row %d: fold wrote\n%s\nwant\n%s", shape.name, i, got, want)
			}
			if !json.Valid(got) {
				t.Errorf("%s, row %d: %s is not JSON", shape.name, i, got)
			}
		}
	}
}
