package proc

import "runtime/debug"

// DefaultGCPercent is the garbage collector's target (GOGC) of the pipeline processes
// when the environment does not set GOGC: a worker's or collector's live heap is small
// (a few MiB), and at Go's default of 100 the collector runs so often that it takes a
// fifth of a worker's CPU at high throughput. 400 lets the heap grow to five times what
// is live between collections (tens of MiB) for about 15 % less CPU per query
// (docs/BENCHMARKS.md, "Cost per query"). GOGC and GOMEMLIMIT in the environment win.
const DefaultGCPercent = 400

// TuneGC sets the garbage collector's target to DefaultGCPercent unless getenv("GOGC")
// is set, and returns the target in force.
func TuneGC(getenv func(string) string) int {
	if getenv("GOGC") != "" {
		was := debug.SetGCPercent(100) // read it: set and put back
		debug.SetGCPercent(was)
		return was
	}
	debug.SetGCPercent(DefaultGCPercent)
	return DefaultGCPercent
}
