package proc

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	was := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(was) })
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "GOGC" {
				return v
			}
			return ""
		}
	}
	t.Run("without GOGC the target is the default", func(t *testing.T) {
		debug.SetGCPercent(100)
		if got := TuneGC(env("")); got != DefaultGCPercent || debug.SetGCPercent(100) != DefaultGCPercent {
			t.Fatalf("TuneGC = %d, want %d in force", got, DefaultGCPercent)
		}
	})
	t.Run("GOGC in the environment is left in force", func(t *testing.T) {
		debug.SetGCPercent(150) // what the runtime took from GOGC=150
		if got := TuneGC(env("150")); got != 150 || debug.SetGCPercent(100) != 150 {
			t.Fatalf("TuneGC = %d, want 150 left in force", got)
		}
	})
}
