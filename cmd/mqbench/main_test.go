package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRunUsageErrorsStartNothing(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"-h"}, 0},
		{[]string{"--version"}, 0}, // prints "<cmd> <version> (<revision>, <go version>)"
		{[]string{"--bogus"}, 2},
		{[]string{"--dir", dir, "--cost", "--shapes", "0x1"}, 2},
		{[]string{"--dir", dir, "--cost", "--latency-cells", "4x"}, 2},
		{[]string{"--dir", dir, "--collector-memory", "10,x"}, 2},
		{[]string{"--dir", dir, "--start", "--start-workers", "0"}, 2},
		{[]string{"--dir", dir, "--start", "--start-headers", "anthropic"}, 2},
		{[]string{"--dir", dir, "--churn", "sideways"}, 2},
		{[]string{"--dir", dir, "--churn", "scaleup", "--scaleup-from", "4", "--scaleup-to", "4"}, 2},
		{[]string{"--dir", dir, "--workers", "x"}, 2},
		{[]string{"--dir", dir, "--adapt-workers", "0"}, 2},
	} {
		if got := run(tt.args); got != tt.want {
			t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
		}
	}
}

func TestPositiveInts(t *testing.T) {
	got, err := positiveInts("--x", " 1, 4 ,,16")
	if err != nil || len(got) != 3 || got[0] != 1 || got[1] != 4 || got[2] != 16 {
		t.Errorf("positiveInts = %v, %v; want [1 4 16]", got, err)
	}
	if _, err := positiveInts("--x", "1,-2"); err == nil {
		t.Error("positiveInts accepted -2")
	}
}

func TestTheWorkDirectoryMqbenchMadeGoesUnlessTheRunFailed(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	made := func() *options {
		t.Helper()
		o := &options{}
		if err := o.workDir(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(o.dir, "worker.log"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return o
	}
	exists := func(dir string) bool { _, err := os.Stat(dir); return err == nil }

	o := made()
	o.finish(nil)
	if exists(o.dir) {
		t.Errorf("after a run that succeeded, %s is still there", o.dir)
	}
	o = made()
	o.finish(usagef("--shapes: bad"))
	if exists(o.dir) {
		t.Errorf("after a usage error, %s is still there", o.dir)
	}
	o = made()
	o.finish(errors.New("latency-bound: worker exited"))
	if !exists(filepath.Join(o.dir, "worker.log")) {
		t.Errorf("after a run that failed, its logs in %s are gone", o.dir)
	}
	given := &options{dir: t.TempDir()}
	given.finish(nil)
	if !exists(given.dir) {
		t.Errorf("a --dir given (%s) was removed", given.dir)
	}
}
