package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--seeds", "3,5", "--faults", "429=1,500=2", "--rows", "10"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.seeds) != 2 || o.seeds[0] != 3 || o.seeds[1] != 5 || o.cfg.Rows != 10 || len(o.cfg.Faults) != 2 {
		t.Errorf("parseFlags = %+v", o)
	}
	if got := run([]string{"--seeds", "1,x"}); got != 2 {
		t.Errorf("run(--seeds 1,x) = %d, want 2", got)
	}
	if got := run([]string{"--version"}); got != 0 {
		t.Errorf("run(--version) = %d, want 0", got)
	}
	if got := run([]string{"-h"}); got != 0 {
		t.Errorf("run(-h) = %d, want 0", got)
	}
}

func TestASeedsTemporaryDirectoryGoesOnlyWhenItPassed(t *testing.T) {
	seed := func(base string) string {
		t.Helper()
		d := filepath.Join(base, "seed")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "collector.log"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	for _, tt := range []struct {
		name         string
		made, passed bool
		kept         bool
	}{
		{"made by mqchaos, passed", true, true, false},
		{"made by mqchaos, failed: its logs", true, false, true},
		{"given with --dir, passed", false, true, true},
		{"given with --dir, failed", false, false, true},
	} {
		d := seed(t.TempDir())
		finishSeedDir(d, tt.made, tt.passed)
		if got := exists(filepath.Join(d, "collector.log")); got != tt.kept {
			t.Errorf("%s: kept = %v, want %v", tt.name, got, tt.kept)
		}
	}
}
