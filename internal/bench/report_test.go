package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Record writes between the marker lines only, and a second record replaces the first.
func TestRecordReplacesOnlyWhatIsBetweenTheMarkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "benchmarks.txt")
	before, after := "# Benchmarks\n\nby hand above\n\n", "\nby hand below\n"
	if err := os.WriteFile(path, []byte(before+RecordBegin+"\nold\n"+RecordEnd+after), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, block := range []string{"first table", "second table\n| a | b |"} {
		if err := Record(path, block); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if want := before + RecordBegin + "\n" + block + "\n" + RecordEnd + after; string(got) != want {
			t.Fatalf("document after recording %q:\n%s\nwant:\n%s", block, got, want)
		}
	}
}

// A document without both markers, once each and in order, is left as it was.
func TestRecordRefusesADocumentWithoutItsMarkers(t *testing.T) {
	for name, doc := range map[string]string{
		"none":     "# Benchmarks\n",
		"no end":   RecordBegin + "\n",
		"reversed": RecordEnd + "\n" + RecordBegin + "\n",
		"twice":    RecordBegin + "\n" + RecordEnd + "\n" + RecordBegin + "\n" + RecordEnd + "\n",
	} {
		path := filepath.Join(t.TempDir(), "benchmarks.txt")
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		err := Record(path, "table")
		if err == nil || !strings.Contains(err.Error(), "marker") && !strings.Contains(err.Error(), "once each") {
			t.Errorf("%s: Record = %v, want an error naming the marker lines", name, err)
		}
		if got, _ := os.ReadFile(path); string(got) != doc {
			t.Errorf("%s: the document changed to %q", name, got)
		}
	}
}

func costRound(rawCPU, pipeCPU time.Duration, rawRate, pipeRate float64, left uint64) []CostRow {
	row := func(name string, cpu time.Duration, rate float64) CostRow {
		q := 1000
		return CostRow{Name: name, Queries: q, Wall: time.Duration(float64(q) / rate * float64(time.Second)),
			CPU: map[string]time.Duration{"all": cpu * time.Duration(q)}, MsgsIn: 4 * int64(q), MsgsOut: 4 * int64(q)}
	}
	p := row("pipeline 1000x1", pipeCPU, pipeRate)
	p.Left = map[string]uint64{"MQ_JOBS": 0, "MQ_RESULTS": left}
	return []CostRow{row("raw 512 slots", rawCPU/2, 2*rawRate), row("raw+http 512 slots", rawCPU, rawRate), p}
}

// The bounds take the median of the per-round ratios: one bad round of three does not
// fail a point, two do; anything a run left fails point 6.
func TestCostBoundsHoldOnTheMedianRound(t *testing.T) {
	good := costRound(100*time.Microsecond, 190*time.Microsecond, 1000, 600, 0)
	bad := costRound(100*time.Microsecond, 230*time.Microsecond, 1000, 400, 0)
	held := func(bs []Bound, asks string) bool { return boundAsking(t, bs, asks).Met }
	if bs := CostBounds([][]CostRow{good, bad, good}, nil, nil); !held(bs, "CPU per query") || !held(bs, "throughput") {
		t.Errorf("one bad round of three: %v", bs)
	}
	if bs := CostBounds([][]CostRow{bad, good, bad}, nil, nil); held(bs, "CPU per query") || held(bs, "throughput") {
		t.Errorf("two bad rounds of three held: %v", bs)
	}
	if bs := CostBounds([][]CostRow{good, costRound(100*time.Microsecond, 190*time.Microsecond, 1000, 600, 3), good}, nil, nil); held(bs, "a completed run leaves nothing") {
		t.Errorf("3 results left in one round held: %v", bs)
	}
	if bs := CostBounds(nil, nil, nil); held(bs, "CPU per query") || held(bs, "latency-bound") || held(bs, "replaced") || boundAsking(t, bs, "next run").Met || held(bs, "make demo") {
		t.Errorf("no measurement held a bound: %v", bs)
	}
}

// boundAsking is the bound whose question contains asks.
func boundAsking(t *testing.T, bs []Bound, asks string) Bound {
	t.Helper()
	for _, b := range bs {
		if strings.Contains(b.Asks, asks) {
			return b
		}
	}
	t.Fatalf("no bound asks %q: %v", asks, bs)
	return Bound{}
}

// Each shape is judged on its own rows, also when one shape's name begins with another's.
func TestCostBoundsTellShapesApartWhoseNamesShareAPrefix(t *testing.T) {
	round := func() []CostRow {
		rs := costRound(100*time.Microsecond, 250*time.Microsecond, 1000, 600, 0) // raw, raw+http, one shape at 2.5x
		rs[2].Name = "pipeline 20000x10"
		ok := costRound(100*time.Microsecond, 190*time.Microsecond, 1000, 600, 0)[2]
		ok.Name = "pipeline 20000x1"
		return append(rs, ok)
	}
	bs := CostBounds([][]CostRow{round(), round(), round()}, nil, nil)
	if got := bs[0].Measured; got != "20000x10 2.50x, 20000x1 1.90x" {
		t.Fatalf("CPU bound measured %q, want each shape's own ratio", got)
	}
	if bs[0].Met {
		t.Errorf("a shape at 2.5x held the CPU bound: %+v", bs[0])
	}
}

// A fleet's first run is held against the raw loop's first pass, and a run on a fleet
// that has run against the loop's next pass: each is judged on its own line, and the
// table's ratio column takes the same base.
func TestAFirstRunIsHeldAgainstTheLoopsFirstPass(t *testing.T) {
	round := func(firstRun time.Duration) []CostRow {
		rs := costRound(200*time.Microsecond, 300*time.Microsecond, 1000, 600, 0) // raw, raw+http, pipeline 1000x1 (1.5x)
		coldRaw := rs[1]
		coldRaw.Name, coldRaw.Cold = "raw+http 512 slots, first pass", true
		coldRaw.CPU = map[string]time.Duration{"all": 300 * time.Microsecond * time.Duration(coldRaw.Queries)}
		first := rs[2]
		first.Name, first.Cold = "pipeline 1000x1, first run", true
		first.CPU = map[string]time.Duration{"all": firstRun * time.Duration(first.Queries)}
		return []CostRow{rs[0], coldRaw, rs[1], first, rs[2]}
	}
	// 500 µs: 1.67x the first pass (300 µs), 2.5x the next pass (200 µs).
	bs := CostBounds([][]CostRow{round(500 * time.Microsecond), round(500 * time.Microsecond), round(500 * time.Microsecond)}, nil, nil)
	steady, first := boundAsking(t, bs, "CPU per query <= 2x the raw+HTTP loop's"), boundAsking(t, bs, "first run")
	if steady.Measured != "1000x1 1.50x" || !steady.Met {
		t.Errorf("steady state: %+v, want 1000x1 1.50x held (the first run not in it)", steady)
	}
	if first.Point != 1 || first.Measured != "1000x1, first run 1.67x" || !first.Met {
		t.Errorf("first run: %+v, want 1000x1, first run 1.67x against the first pass, held", first)
	}
	bs = CostBounds([][]CostRow{round(700 * time.Microsecond)}, nil, nil)
	if first := boundAsking(t, bs, "first run"); first.Met || !boundAsking(t, bs, "CPU per query <= 2x the raw+HTTP loop's").Met {
		t.Errorf("a first run at 2.33x its base held, or failed the steady line: %+v", bs[:4])
	}
	var firstRow string
	for _, l := range strings.Split(CostTable([][]CostRow{round(500 * time.Microsecond)}), "\n") {
		if strings.HasPrefix(l, "| pipeline 1000x1, first run |") {
			firstRow = l
		}
	}
	if cells := strings.Split(firstRow, "|"); len(cells) < 5 || strings.TrimSpace(cells[4]) != "1.67" {
		t.Errorf("the table's first-run row %q: want its ratio 1.67, against the loop's first pass", firstRow)
	}
}

// The latency points: 64 slots against slots / latency, the larger cells against the
// raw loop of their round; the replaced system's scenario in its worst round.
func TestLatencyAndReplacedBounds(t *testing.T) {
	round := func(share64, ofRaw float64, replacedWall time.Duration, peak int64) []LatencyRow {
		return []LatencyRow{
			{Slots: 64, Ideal: 1280, Achieved: 1000, Raw: true},
			{Slots: 64, Ideal: 1280, Achieved: share64 * 1280},
			{Slots: 1024, Ideal: 20480, Achieved: 10000, Raw: true},
			{Slots: 1024, Ideal: 20480, Achieved: ofRaw * 10000},
			{Slots: 100, Ideal: 2000, Queries: 500, Wall: replacedWall, Peak: peak, Shipped: true},
		}
	}
	bs := CostBounds(nil, [][]LatencyRow{round(0.92, 0.85, 300*time.Millisecond, 100), round(0.91, 0.5, 350*time.Millisecond, 95), round(0.8, 0.9, 360*time.Millisecond, 98)}, nil)
	if !boundAsking(t, bs, "64 slots").Met || !boundAsking(t, bs, "1024 slots").Met {
		t.Errorf("medians 91 %% and 85 %% did not hold: %v", bs)
	}
	if !boundAsking(t, bs, "replaced").Met {
		t.Errorf("walls <= 0.375 s and peaks >= 90 did not hold: %v", bs)
	}
	bs = CostBounds(nil, [][]LatencyRow{round(0.92, 0.85, 300*time.Millisecond, 100), round(0.92, 0.85, 400*time.Millisecond, 100)}, nil)
	if boundAsking(t, bs, "replaced").Met {
		t.Errorf("a 0.4 s round held the replaced system's bound of 0.375 s: %v", bs)
	}
	bs = CostBounds(nil, [][]LatencyRow{round(0.92, 0.85, 300*time.Millisecond, 89)}, nil)
	if boundAsking(t, bs, "replaced").Met {
		t.Errorf("a peak of 89 held: %v", bs)
	}
}

// The replaced system's scenario is judged apart on a fleet's first run and on its next
// run: a fast next run does not hold the first run's bound, nor a slow first run the
// next run's.
func TestAFleetsFirstAndNextRunsAreJudgedApart(t *testing.T) {
	round := func(first, next time.Duration, nextPeak int64) []LatencyRow {
		return []LatencyRow{
			{Slots: 100, Ideal: 2000, Queries: 500, Wall: first, Peak: 100, Shipped: true},
			{Slots: 100, Ideal: 2000, Queries: 500, Wall: next, Peak: nextPeak, Shipped: true, Next: true},
		}
	}
	bs := CostBounds(nil, [][]LatencyRow{round(2*time.Second, 350*time.Millisecond, 100), round(2100*time.Millisecond, 360*time.Millisecond, 95)}, nil)
	first, next := boundAsking(t, bs, "first run"), boundAsking(t, bs, "next run")
	if first.Met || !strings.Contains(first.Measured, "2.10 s") {
		t.Errorf("first runs of 2.0 and 2.1 s: %+v", first)
	}
	if !next.Met || !strings.Contains(next.Measured, "0.36 s") || !strings.Contains(next.Measured, "lowest peak 95") {
		t.Errorf("next runs of 0.35 and 0.36 s, peaks >= 95: %+v", next)
	}
	bs = CostBounds(nil, [][]LatencyRow{round(300*time.Millisecond, 400*time.Millisecond, 100)}, nil)
	if first, next := boundAsking(t, bs, "first run"), boundAsking(t, bs, "next run"); !first.Met || next.Met {
		t.Errorf("a first run of 0.3 s and a next run of 0.4 s: %+v, %+v", first, next)
	}
}

// The raw+HTTP loop run at the replaced system's slots and calls is shown beside its
// bound, and judged by none: a pipeline slower than the bound fails it whatever the loop
// took, and one within it holds it.
func TestTheReplacedBoundShowsTheRawLoopAtItsShapeUnjudged(t *testing.T) {
	round := func(raw, next time.Duration) []LatencyRow {
		return []LatencyRow{
			{Slots: 100, Ideal: 2000, Queries: 500, Wall: raw, Peak: 100, Raw: true},
			{Slots: 100, Ideal: 2000, Queries: 500, Wall: 2 * time.Second, Peak: 100, Shipped: true},
			{Slots: 100, Ideal: 2000, Queries: 500, Wall: next, Peak: 100, Shipped: true, Next: true},
		}
	}
	bs := CostBounds(nil, [][]LatencyRow{round(390*time.Millisecond, 350*time.Millisecond), round(410*time.Millisecond, 360*time.Millisecond)}, nil)
	next := boundAsking(t, bs, "next run")
	if !next.Met || !strings.Contains(next.Measured, "raw+HTTP loop, 100 slots and 500 calls: worst 0.41 s") {
		t.Errorf("next runs of 0.35 and 0.36 s beside raw loops of 0.39 and 0.41 s: %+v", next)
	}
	if first := boundAsking(t, bs, "first run"); first.Met || !strings.Contains(first.Measured, "worst 0.41 s") {
		t.Errorf("first runs of 2 s: %+v", first)
	}
	bs = CostBounds(nil, [][]LatencyRow{round(300*time.Millisecond, 400*time.Millisecond)}, nil)
	if next := boundAsking(t, bs, "next run"); next.Met {
		t.Errorf("a next run of 0.4 s held beside a raw loop of 0.3 s: %+v", next)
	}
	if bs := CostBounds(nil, [][]LatencyRow{round(300*time.Millisecond, 400*time.Millisecond)[1:]}, nil); strings.Contains(boundAsking(t, bs, "next run").Measured, "raw") {
		t.Errorf("a raw loop shown that did not run: %+v", bs)
	}
}

// The replaced system's scenario with other throttle settings (--replaced-throttle) is
// shown, not judged: it neither holds acceptance 4 for the shipped defaults nor becomes
// a latency-bound cell of its own.
func TestAnAsideRowIsJudgedByNoBound(t *testing.T) {
	round := []LatencyRow{
		{Slots: 64, Ideal: 1280, Achieved: 1000, Raw: true},
		{Slots: 64, Ideal: 1280, Achieved: 1200},
		{Slots: 100, Ideal: 2000, Queries: 500, Wall: 2 * time.Second, Peak: 100, Shipped: true},
		{Slots: 100, Ideal: 2000, Queries: 500, Wall: 2 * time.Second, Peak: 100, Shipped: true, Next: true},
		{Slots: 100, Ideal: 2000, Queries: 500, Wall: 300 * time.Millisecond, Peak: 100, Aside: true},
		{Slots: 100, Ideal: 2000, Queries: 500, Wall: 300 * time.Millisecond, Peak: 100, Aside: true, Next: true},
	}
	bs := CostBounds(nil, [][]LatencyRow{round}, nil)
	for _, b := range bs {
		if strings.Contains(b.Asks, "100 slots") {
			t.Errorf("the aside row became a latency-bound cell: %v", b)
		}
		if strings.Contains(b.Asks, "replaced") && (b.Met || !strings.Contains(b.Measured, "2.00 s")) {
			t.Errorf("the replaced system's bound read the aside row: %v", b)
		}
	}
}

// Demo reads the run id the script prints, the run's summary and llmsim's 429 count.
func TestDemoReadsTheRunsSummary(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "demo.sh")
	err := os.WriteFile(script, []byte(`#!/usr/bin/env bash
set -e
mkdir -p "$OUT/r1"
echo '{"run":"r1","rows_total":50,"wall_seconds":2.5,"stats":{"rows_ok":50,"calls":530,"retries":30}}' >"$OUT/r1/summary.json"
echo "run r1: 50 rows published"
echo 'demo: llmsim counters: {"requests":530,"injected_429": 30,"ok":500}'
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Demo(context.Background(), script, dir, filepath.Join(dir, "work"))
	if err != nil {
		t.Fatal(err)
	}
	if d.RunWall != 2500*time.Millisecond || d.Rows != 50 || d.RowsOK != 50 || d.Calls != 530 || d.Retries != 30 || d.Injected != 30 {
		t.Fatalf("Demo = %+v", d)
	}
	if b := demoBound([]DemoRow{d}); !b.Met {
		t.Errorf("a 2.5 s run did not hold: %+v", b)
	}
	if b := demoBound([]DemoRow{{RunWall: 3100 * time.Millisecond, Rows: 50, RowsOK: 50}}); b.Met {
		t.Errorf("a 3.1 s run held: %+v", b)
	}
}

// A demo that fails is an error naming the script, with the end of what it said.
func TestDemoThatFailsIsAnError(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "demo.sh")
	if err := os.WriteFile(script, []byte("echo 'demo: port 14222 for nats-server is already in use' >&2; exit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Demo(context.Background(), script, dir, dir)
	if err == nil || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), script) {
		t.Fatalf("Demo = %v, want the script's name and its last words", err)
	}
}
