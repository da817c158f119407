package bench

import (
	"strings"
	"testing"
	"time"
)

// llmsim's CPU is shown beside a measurement and counted in none of its figures: issue
// 9 counts every process but llmsim.
func TestTheCostTableShowsLlmsimsCPUApart(t *testing.T) {
	const n = 1000
	round := []CostRow{
		{Name: "raw+http 512 slots", Queries: n, Wall: time.Second, CPU: map[string]time.Duration{"loop": 200 * time.Millisecond}, Sim: 100 * time.Millisecond},
		{Name: "pipeline 1000x1", Queries: n, Wall: 2 * time.Second, CPU: map[string]time.Duration{"worker": 400 * time.Millisecond}, Sim: 120 * time.Millisecond},
		{Name: "raw 512 slots", Queries: n, Wall: time.Second, CPU: map[string]time.Duration{"loop": 100 * time.Millisecond}},
	}
	rows := strings.Split(strings.TrimSpace(CostTable([][]CostRow{round})), "\n")
	if len(rows) != 5 || !strings.HasSuffix(rows[0], "| llmsim CPU/query µs, in no ratio (med round) |") {
		t.Fatalf("want a header with llmsim's column and three rows, got:\n%s", strings.Join(rows, "\n"))
	}
	for i, want := range []struct{ cpu, ratio, sim string }{
		{"| 200 / 200 / 200 |", "| 1.00 |", "| 100 |"},
		{"| 400 / 400 / 400 |", "| 2.00 |", "| 120 |"},
		{"| 100 / 100 / 100 |", "| 0.50 |", "| - |"}, // no llmsim in the loop without HTTP
	} {
		row := rows[2+i]
		if !strings.Contains(row, want.cpu) || !strings.Contains(row, want.ratio) || !strings.HasSuffix(row, want.sim) {
			t.Errorf("row %d: want CPU/query %s, ratio %s and llmsim %s, got %s", i, want.cpu, want.ratio, want.sim, row)
		}
	}
}
