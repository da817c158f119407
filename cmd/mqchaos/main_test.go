package main

import "testing"

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
