package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/multiquery/multiquery/internal/bench"
)

// runCost runs the cost benchmark, then (with --cost-latency) the latency-bound and
// replaced-system scenarios and (with --cost-demo) make demo's script, --rounds rounds
// each; it prints every table and issue 9's bounds, and with --record writes them into
// a document.
func runCost(ctx context.Context, o *options) error {
	shapes, err := parsePairs("--shapes", "ROWSxQUERIES", o.cost.shapes)
	if err != nil {
		return err
	}
	cells, err := parsePairs("--latency-cells", "WORKERSxSLOTS", o.cost.cells)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	began := time.Now()
	machine := bench.Machine(runtime.NumCPU())
	cc := bench.CostConfig{Bin: o.bin, Dir: o.dir, Self: self, Rounds: o.cost.rounds, RawJobs: o.raw.Jobs,
		Shapes: shapes, Slots: 256, Workers: 2, Log: os.Stdout, Profile: o.cost.profile, ProfileFor: o.cost.profileFor}
	fmt.Printf("mqbench cost: %s; %d rounds, raw loop %d jobs at %d slots, pipeline %d workers x %d slots, llmsim 0 latency\n",
		machine, cc.Rounds, cc.RawJobs, cc.Slots*cc.Workers, cc.Workers, cc.Slots)
	res, err := bench.Cost(ctx, cc)
	tables := []string{bench.CostTable(res)}
	fmt.Print(tables[0])
	if err != nil {
		return err
	}
	var lat [][]bench.LatencyRow
	if o.cost.latency {
		if lat, err = runLatency(ctx, o, self, cells); err != nil {
			return err
		}
		tables = append(tables, bench.LatencyTable(flatten(lat)))
		fmt.Print(tables[len(tables)-1])
		if calls := bench.CallProfileTable(flatten(lat)); calls != "" {
			tables = append(tables, calls)
			fmt.Print(calls)
		}
	}
	var demo []bench.DemoRow
	if o.cost.demo {
		for r := range o.cost.rounds {
			dir, err := os.MkdirTemp(o.dir, fmt.Sprintf("demo%d-", r+1))
			if err != nil {
				return err
			}
			d, err := bench.Demo(ctx, o.cost.demoScript, o.bin, dir)
			if err != nil {
				return fmt.Errorf("make demo, round %d: %w", r+1, err)
			}
			demo = append(demo, d)
			fmt.Printf("demo round %d done\n", r+1)
		}
		tables = append(tables, bench.DemoTable(demo))
		fmt.Print(tables[len(tables)-1])
	}
	bounds := bench.BoundsTable(bench.CostBounds(res, lat, demo))
	fmt.Print(bounds)
	if o.cost.record == "" {
		return nil
	}
	head := fmt.Sprintf("**Last `make bench`, recorded by `mqbench --record`:** %s UTC, %s; %d min %d s; binaries: %s.\nCommand: `%s`",
		began.UTC().Format("2006-01-02 15:04"), machine, int(time.Since(began).Minutes()), int(time.Since(began).Seconds())%60,
		binVersion(o.bin), strings.Join(append([]string{"./bin/mqbench"}, os.Args[1:]...), " "))
	block := head + "\n\n" + strings.Join(append(tables, bounds), "\n")
	if err := bench.Record(o.cost.record, block); err != nil {
		return err
	}
	fmt.Printf("recorded in %s\n", o.cost.record)
	return nil
}

// binVersion is what the measured worker binary says of itself.
func binVersion(bin string) string {
	out, err := exec.Command(bin+"/worker", "--version").Output()
	if err != nil {
		return "worker of unknown version"
	}
	return strings.TrimSpace(string(out))
}

func flatten(rounds [][]bench.LatencyRow) []bench.LatencyRow {
	var out []bench.LatencyRow
	for _, rs := range rounds {
		out = append(out, rs...)
	}
	return out
}

// parsePairs parses a flag of pairs NxM, comma-separated (--shapes: rows x queries,
// --latency-cells: workers x slots each).
func parsePairs(flag, form, v string) ([][2]int, error) {
	var sh [][2]int
	for _, f := range strings.Split(v, ",") {
		var r, q int
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%dx%d", &r, &q); err != nil || r < 1 || q < 1 {
			return nil, usagef("%s: %q is not %s", flag, f, form)
		}
		sh = append(sh, [2]int{r, q})
	}
	return sh, nil
}

// runLatency runs the latency-bound cells (workers x slots each) and the replaced
// system's scenario, --rounds times.
func runLatency(ctx context.Context, o *options, self string, cells [][2]int) ([][]bench.LatencyRow, error) {
	var lat [][]bench.LatencyRow
	for r := range o.cost.rounds {
		var round []bench.LatencyRow
		// Issue 9's cells by default: 1 x 64, 2 x 128 and 4 x 256 slots (64, 256, 1024 in all).
		for _, c := range cells {
			workers, slots := c[0], c[0]*c[1]
			cc := bench.CostConfig{Bin: o.bin, Dir: o.dir, Self: self, Log: os.Stdout, Profile: o.cost.profile, ProfileFor: o.cost.profileFor}
			rows, err := bench.LatencyBound(ctx, cc, 50*time.Millisecond,
				workers, slots, slots*o.cost.callsPerSlot, 1, 1, bench.NonLimiting)
			round = append(round, rows...)
			if err != nil {
				return append(lat, round), fmt.Errorf("latency-bound: %w", err)
			}
		}
		// The replaced system's scenario: 50 rows x 10 queries, 100 slots, 50 ms,
		// shipped throttle defaults; ideal wall 500 / (100 / 50 ms) = 0.25 s. Twice on
		// each fleet: its first run, and its next (a deployed fleet has run before).
		// With --replaced-throttle, the same scenario again with those settings (not the
		// shipped defaults: not judged against acceptance 4, shown beside it).
		var throttles []string
		if o.cost.replaced {
			throttles = append(throttles, "")
		}
		if o.cost.replacedThrottle != "" {
			throttles = append(throttles, o.cost.replacedThrottle)
		}
		for _, th := range throttles {
			// The raw+HTTP loop at the same slots and calls, once a round (before the
			// first fleet of the shipped defaults): shown beside acceptance 4, judged by
			// no bound.
			raw := th == ""
			for _, ws := range [][2]int{{1, 100}, {4, 100}} {
				cc := bench.CostConfig{Bin: o.bin, Dir: o.dir}
				if raw {
					cc.Self, raw = self, false
				}
				rows, err := bench.LatencyBound(ctx, cc, 50*time.Millisecond, ws[0], ws[1], 50, 10, 2, bench.ThrottleYAML(th))
				if th != "" {
					for i := range rows {
						rows[i].Name += ", throttle " + th
						rows[i].Aside = true
					}
				}
				round = append(round, rows...)
				if err != nil {
					return append(lat, round), fmt.Errorf("replaced-system scenario: %w", err)
				}
			}
		}
		lat = append(lat, round)
		fmt.Printf("latency round %d done\n", r+1)
	}
	return lat, nil
}
