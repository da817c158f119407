package main

import (
	"os"
	"path/filepath"
	"testing"
)

// Issue 11, dry run: `producer --dry-run` needs no NATS (here none listens where
// --nats points) and exits as a run would: 0, 3 with error rows, 2 for a bad header.
func TestDryRunExitCodesWithoutNATS(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cfg := "../../examples/assessment/pipeline.yaml"
	header := "case_id,history,symptoms,diagnosis,treatment\n"
	for _, tt := range []struct {
		name, input string
		want        int
	}{
		{"every row renders", header + "c1,a,b,c,d\n", 0},
		{"a malformed record is an error row", header + "c1,a,b,c,d\nc2\n", 3},
		{"an input column collides with an output column", "case_id,history_accuracy_score\nc1,a\n", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := write("rows.csv", tt.input)
			args := []string{"--dry-run", "--nats", "nats://127.0.0.1:1", "--config", cfg, "--input", in}
			if got := run(args); got != tt.want {
				t.Errorf("exit %d, want %d", got, tt.want)
			}
		})
	}
}
