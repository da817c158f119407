package main

import "testing"

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
