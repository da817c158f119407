package collector

import (
	"math/rand/v2"
	"testing"
)

// The purge bound is the lowest sequence of a result whose row is not yet out, whatever
// order rows go out in, however long one row waits, and also if the stream's order were
// ever broken: checked against the definition (a visit of
// every waiting row's results) over random runs.
func TestThePurgeBoundIsTheLowestResultOfARowNotYetOut(t *testing.T) {
	for _, tc := range []struct {
		name      string
		m         int
		unordered bool // sequences not always increasing
		stuck     bool // row 0 waits until the end
	}{
		{name: "one query a row", m: 1},
		{name: "ten queries a row", m: 10},
		{name: "a row that waits for the whole run", m: 3, stuck: true},
		{name: "sequences out of order", m: 2, unordered: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.m)))
			r := &run{m: tc.m, rows: map[int]*rowState{}}
			seq := uint64(0)
			nextRow := 0
			for step := range 20000 {
				switch {
				case rng.IntN(3) > 0 || len(r.rows) == 0: // a result of a waiting or new row
					row := nextRow
					if len(r.rows) > 0 && rng.IntN(2) == 0 {
						for i := range r.rows {
							row = i
							break
						}
					} else {
						nextRow++
					}
					rs := r.rowState(row)
					qi := rng.IntN(tc.m)
					if rs.has(qi) {
						continue
					}
					seq++
					s := seq
					if tc.unordered && rng.IntN(50) == 0 && seq > 10 {
						s = seq - uint64(rng.IntN(10)) - 1
					}
					rs.set(qi)
					rs.resultSeqs[qi] = s
					r.hold(row, qi, s)
				default: // a row goes out
					for i := range r.rows {
						if tc.stuck && i == 0 {
							continue
						}
						delete(r.rows, i)
						break
					}
				}
				if step%7 == 0 {
					if got, want := r.lowestHeld(), r.lowestWaiting(); got != want {
						t.Fatalf("step %d: bound %d, want %d (%d rows waiting)", step, got, want, len(r.rows))
					}
				}
			}
			if got, want := r.lowestHeld(), r.lowestWaiting(); got != want {
				t.Fatalf("bound %d, want %d", got, want)
			}
			if !tc.unordered && len(r.held) > 2*len(r.rows)*tc.m+1024 {
				t.Fatalf("the index holds %d entries for %d waiting rows of %d queries: not compacted", len(r.held), len(r.rows), tc.m)
			}
		})
	}
}

// BenchmarkPurgeBound reads the purge bound of a run with 16000 rows waiting (the
// producer's default window at one query per row), as every checkpoint does: through
// the index, and by visiting every waiting row as before it.
func BenchmarkPurgeBound(b *testing.B) {
	r := &run{m: 1, rows: map[int]*rowState{}}
	for i := range 16000 {
		rs := r.rowState(i)
		rs.set(0)
		rs.resultSeqs[0] = uint64(i + 1)
		r.hold(i, 0, uint64(i+1))
	}
	b.Run("index", func(b *testing.B) {
		for b.Loop() {
			if r.lowestHeld() != 1 {
				b.Fatal("bound")
			}
		}
	})
	b.Run("every row", func(b *testing.B) {
		for b.Loop() {
			if r.lowestWaiting() != 1 {
				b.Fatal("bound")
			}
		}
	})
}
