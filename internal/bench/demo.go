package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// DemoRow is one run of `make demo` as shipped (scripts/demo.sh: llmsim at 50 ms with 5 %
// injected 429s, 2 workers x 32 slots, examples/assessment).
type DemoRow struct {
	RunWall    time.Duration // the run's wall (summary wall_seconds): open to last row
	ScriptWall time.Duration // the whole script: start-up, run, checks, shutdown
	Rows       int
	RowsOK     int
	Calls      int64
	Retries    int64
	Injected   int64 // 429s llmsim injected (its counters, printed by the demo)
}

var (
	demoRun      = regexp.MustCompile(`(?m)^run ([^:\s]+):`)
	demoInjected = regexp.MustCompile(`"injected_429":\s*(\d+)`)
)

// Demo runs script (scripts/demo.sh) with the binaries of bin, its state and output
// under dir, and reads what its run did from the run's summary.json.
func Demo(ctx context.Context, script, bin, dir string) (DemoRow, error) {
	out := filepath.Join(dir, "out")
	bin, err := filepath.Abs(bin)
	if err != nil {
		return DemoRow{}, err
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "BIN="+bin, "DEMO_DIR="+filepath.Join(dir, "state"), "OUT="+out, "NATS_URL=", "MQ_PREFIX=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	began := time.Now()
	if err := cmd.Run(); err != nil {
		return DemoRow{}, fmt.Errorf("%s: %w: %s", script, err, lastLines(stderr.String(), 5))
	}
	row := DemoRow{ScriptWall: time.Since(began)}
	m := demoRun.FindStringSubmatch(stdout.String())
	if m == nil {
		return row, fmt.Errorf("%s printed no run id", script)
	}
	b, err := os.ReadFile(filepath.Join(out, m[1], "summary.json"))
	if err != nil {
		return row, fmt.Errorf("demo run %s: %w", m[1], err)
	}
	var sum struct {
		Rows  int     `json:"rows_total"`
		Wall  float64 `json:"wall_seconds"`
		Stats struct {
			RowsOK  int   `json:"rows_ok"`
			Calls   int64 `json:"calls"`
			Retries int64 `json:"retries"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(b, &sum); err != nil {
		return row, fmt.Errorf("demo run %s: summary.json: %w", m[1], err)
	}
	row.RunWall = time.Duration(sum.Wall * float64(time.Second))
	row.Rows, row.RowsOK, row.Calls, row.Retries = sum.Rows, sum.Stats.RowsOK, sum.Stats.Calls, sum.Stats.Retries
	if m := demoInjected.FindStringSubmatch(stdout.String()); m != nil {
		row.Injected, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return row, nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// DemoTable prints the demo runs, one line each.
func DemoTable(rows []DemoRow) string {
	var b strings.Builder
	b.WriteString("| measure | run wall (summary) | script wall | rows ok / total | calls | 429s injected | retries |\n|---|---|---|---|---|---|---|\n")
	for i, r := range rows {
		fmt.Fprintf(&b, "| make demo, round %d | %.2f s | %.1f s | %d / %d | %d | %d | %d |\n",
			i+1, r.RunWall.Seconds(), r.ScriptWall.Seconds(), r.RowsOK, r.Rows, r.Calls, r.Injected, r.Retries)
	}
	return b.String()
}
