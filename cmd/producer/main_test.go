package main

import "testing"

func TestRunExitCodesWithoutNATS(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"-h"}, 0},
		{[]string{"--bogus"}, 2},
		{[]string{"--replicas", "x"}, 2},
		{nil, 2}, // --config is required
		{[]string{"--config", "/nonexistent/p.yaml"}, 2},
		{[]string{"--serve", "/nonexistent"}, 2},
	} {
		if got := run(tt.args); got != tt.want {
			t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
		}
	}
}
