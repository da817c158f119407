package producer

import "testing"

func TestAheadRows(t *testing.T) {
	for _, c := range []struct {
		name                    string
		maxAhead, queries, want int
	}{
		{"a set window is kept whatever the queries", 20, 1, 20},
		{"one query per row: the jobs' worth", 0, 1, DefaultAheadJobs},
		{"four queries per row: a quarter of the jobs' worth", 0, 4, DefaultAheadJobs / 4},
		{"many queries per row: never below the least window", 0, 40, DefaultMaxAhead},
		{"no queries counted as one", 0, 0, DefaultAheadJobs},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := AheadRows(c.maxAhead, c.queries); got != c.want {
				t.Fatalf("AheadRows(%d, %d) = %d, want %d", c.maxAhead, c.queries, got, c.want)
			}
		})
	}
}
