package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
	"github.com/multiquery/multiquery/internal/worker"
)

// cacheRun runs one input through a started worker and collector and returns the run
// id, its summary's calls and cached counts, and its output rows.
func (e *env) cacheRun(pipeline, rows string) (string, int64, int64, []map[string]any) {
	e.t.Helper()
	rep, err := e.produce(e.pipeline(pipeline), rows, input.CSV)
	if err != nil {
		e.t.Fatalf("produce: %v", err)
	}
	sum := e.waitSummary(rep.Run, 60*time.Second)
	return rep.Run, sum.Stats.Calls, sum.Stats.Cached, e.lines(rep.Run, sink.ResultsJSONL)
}

// cacheBucket opens the prompt cache bucket.
func (e *env) cacheBucket() jetstream.KeyValue {
	e.t.Helper()
	kv, err := e.js.KeyValue(context.Background(), wire.BucketCache)
	if err != nil {
		e.t.Fatalf("open %s: %v", wire.BucketCache, err)
	}
	return kv
}

// cacheEntries is every entry of the cache bucket, by key.
func (e *env) cacheEntries(kv jetstream.KeyValue) map[string]wire.CacheEntry {
	e.t.Helper()
	ctx := context.Background()
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]wire.CacheEntry{}
	for key := range keys.Keys() {
		entry, err := kv.Get(ctx, key)
		if err != nil {
			e.t.Fatal(err)
		}
		var c wire.CacheEntry
		if err := json.Unmarshal(entry.Value(), &c); err != nil {
			e.t.Fatal(err)
		}
		out[key] = c
	}
	return out
}

// withoutCached is a row without its <query>_cached columns.
func withoutCached(row map[string]any, queries []string) map[string]any {
	out := map[string]any{}
	for k, v := range row {
		out[k] = v
	}
	for _, q := range queries {
		delete(out, q+"_cached")
	}
	return out
}

// Issue 11, acceptance 4: the same input twice with the cache on: the second run makes
// no call (llmsim's counters do not move) and its output rows equal the first run's in
// every column but the <query>_cached markers (false in the first run, true in the
// second). Each of the 40 prompts differs (the row's marker), so equal rows also show
// that no two prompts share an entry.
func TestCacheSecondRunOfTheSameInputMakesNoCalls(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pipeline := matrixPipeline(1, 2, "cache: {enabled: true, ttl: 168h}\n")
	queries := queryNames(1, 2)
	rows := csvRows(20, nil)

	_, calls1, cached1, first := e.cacheRun(pipeline, rows)
	served := e.sim.Stats().Requests
	if calls1 != 40 || cached1 != 0 || served != 40 {
		t.Fatalf("first run: %d calls, %d cached, llmsim served %d; want 40, 0, 40", calls1, cached1, served)
	}
	run2, calls2, cached2, second := e.cacheRun(pipeline, rows)
	if st := e.sim.Stats(); st.Requests != served {
		t.Fatalf("second run: llmsim served %d requests more, want none", st.Requests-served)
	}
	if calls2 != 0 || cached2 != 40 {
		t.Fatalf("second run summary: %d calls, %d cached; want 0 and 40", calls2, cached2)
	}
	if len(first) != 20 || len(second) != 20 {
		t.Fatalf("rows: %d then %d, want 20 each", len(first), len(second))
	}
	for i := range first {
		for _, q := range queries {
			if first[i][q+"_cached"] != false || second[i][q+"_cached"] != true {
				t.Fatalf("row %d %s_cached: %v then %v, want false then true", i, q, first[i][q+"_cached"], second[i][q+"_cached"])
			}
		}
		a, b := withoutCached(first[i], queries), withoutCached(second[i], queries)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("row %d differs:\nfirst  %v\nsecond %v", i, a, b)
		}
	}

	t.Run("a cache hit is audited as cached, without an HTTP status", func(t *testing.T) {
		var rec worker.AuditRecord
		waitFor(t, 10*time.Second, "the audit record of a cached query", func() bool {
			for _, r := range e.readAudit() {
				if r.Run == run2 && r.Row == 0 && r.Query == queries[0] {
					rec = r
					return true
				}
			}
			return false
		})
		if !rec.Cached || rec.Status != 0 || rec.Usage != nil || rec.ResponseHash == "" || rec.Error != nil {
			t.Fatalf("audit record %+v: want cached, status 0, no usage, a response hash, no error", rec)
		}
	})
}

// rowMark finds the row in llmsim's echo of a matrixPipeline prompt ("r7.cs1_k1").
var rowMark = regexp.MustCompile(`\br(\d+)\.cs`)

// Issue 11: an answer stored longer ago than the pipeline's ttl is not used (the query
// calls and stores a fresh answer); one stored within it is, even when it differs from
// what the model would answer now.
func TestCacheIgnoresAnswersOlderThanTheTTL(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	pipeline := matrixPipeline(1, 1, "cache: {enabled: true, ttl: 1h}\n")
	rows := csvRows(10, nil)
	if _, calls, _, _ := e.cacheRun(pipeline, rows); calls != 10 {
		t.Fatalf("first run: %d calls, want 10", calls)
	}

	// Rewrite every stored answer: rows 0-4 stored 2 h ago, rows 5-9 30 min ago, both
	// with an answer of their own that names the row.
	ctx := context.Background()
	kv := e.cacheBucket()
	n := 0
	for key, c := range e.cacheEntries(kv) {
		var answer map[string]any
		if err := json.Unmarshal([]byte(c.Content), &answer); err != nil {
			t.Fatalf("cached content %q: %v", c.Content, err)
		}
		m := rowMark.FindStringSubmatch(fmt.Sprint(answer["echo"]))
		if m == nil {
			t.Fatalf("cached echo %v does not name its row", answer["echo"])
		}
		row, _ := strconv.Atoi(m[1])
		age := 30 * time.Minute
		if row < 5 {
			age = 2 * time.Hour
		}
		c.Stored = time.Now().Add(-age).UTC()
		c.Content = fmt.Sprintf(`{"echo":"from the cache %d","note":"stored %s ago"}`, row, age)
		b, _ := json.Marshal(c)
		if _, err := kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 10 {
		t.Fatalf("%d answers in the cache, want 10", n)
	}

	served := e.sim.Stats().Requests
	_, calls, cached, out := e.cacheRun(pipeline, rows)
	if calls != 5 || cached != 5 || e.sim.Stats().Requests-served != 5 {
		t.Fatalf("second run: %d calls, %d cached, llmsim served %d; want 5 of each", calls, cached, e.sim.Stats().Requests-served)
	}
	for i, row := range out {
		echo := fmt.Sprint(row["cs1_k1_echo"])
		fromCache := echo == fmt.Sprintf("from the cache %d", i)
		if (i >= 5) != fromCache || row["cs1_k1_cached"] != fromCache {
			t.Errorf("row %d: echo %q, cached %v; want the cached answer exactly for rows stored within the ttl (5-9)", i, echo, row["cs1_k1_cached"])
		}
	}

	t.Run("a stale answer is replaced by the fresh one", func(t *testing.T) {
		fresh := 0
		for _, c := range e.cacheEntries(kv) {
			if time.Since(c.Stored) < 10*time.Minute {
				fresh++
			}
		}
		if fresh != 5 {
			t.Errorf("%d answers stored in this run, want the 5 stale ones replaced", fresh)
		}
	})
}

// Issue 11: with the cache off (the default) nothing is read from the cache, even when
// it holds the answers, and nothing is written to it; the output has no _cached column.
func TestCacheOffNeitherReadsNorWrites(t *testing.T) {
	e := setup(t, llmsim.Config{})
	e.startWorker(workerOpts{})
	e.startCollector("")
	const extra = "cache: {enabled: true}\n"
	rows := csvRows(10, nil)
	if _, calls, _, _ := e.cacheRun(matrixPipeline(1, 2, extra), rows); calls != 20 {
		t.Fatalf("run with the cache on: %d calls, want 20", calls)
	}
	cacheStream, err := e.js.Stream(context.Background(), "KV_"+wire.BucketCache)
	if err != nil {
		t.Fatal(err)
	}
	before, err := cacheStream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if before.State.Msgs != 20 {
		t.Fatalf("the cache holds %d answers, want 20", before.State.Msgs)
	}

	served := e.sim.Stats().Requests
	_, calls, cached, out := e.cacheRun(matrixPipeline(1, 2, ""), rows)
	if calls != 20 || cached != 0 || e.sim.Stats().Requests-served != 20 {
		t.Fatalf("run with the cache off: %d calls, %d cached, llmsim served %d; want 20, 0, 20", calls, cached, e.sim.Stats().Requests-served)
	}
	after, err := cacheStream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if after.State.LastSeq != before.State.LastSeq {
		t.Fatalf("the cache was written to: last sequence %d -> %d", before.State.LastSeq, after.State.LastSeq)
	}
	for _, row := range out {
		for k := range row {
			if len(k) > 7 && k[len(k)-7:] == "_cached" {
				t.Fatalf("row %v has a _cached column with the cache off", row)
			}
		}
	}
}

// Issue 11: answers from the cache take no throttle permit, so a cached run is not
// paced: behind a throttle of one call per 5 s, the 20 queries answered from the cache
// finish long before the 100 s that 20 permits would take.
func TestCachedRunIsNotPacedByTheThrottle(t *testing.T) {
	e := setup(t, llmsim.Config{})
	stopFast := e.startWorker(workerOpts{})
	e.startCollector("")
	pipeline := matrixPipeline(1, 1, "cache: {enabled: true}\n")
	rows := csvRows(20, nil)
	if _, calls, _, _ := e.cacheRun(pipeline, rows); calls != 20 {
		t.Fatalf("first run: %d calls, want 20", calls)
	}
	stopFast()

	slow := fastThrottle()
	slow.StartRate, slow.MinRate, slow.MaxRate = 0.2, 0.2, 0.2
	e.startWorker(workerOpts{throttle: &slow})
	served := e.sim.Stats().Requests
	rep, err := e.produce(e.pipeline(pipeline), rows, input.CSV)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	sum := e.waitSummary(rep.Run, 40*time.Second)
	if sum.Stats.Calls != 0 || sum.Stats.Cached != 20 || e.sim.Stats().Requests != served {
		t.Fatalf("second run: %d calls, %d cached, llmsim served %d more; want 0, 20, 0", sum.Stats.Calls, sum.Stats.Cached, e.sim.Stats().Requests-served)
	}
}
