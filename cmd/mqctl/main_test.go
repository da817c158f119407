package main

import (
	"slices"
	"testing"

	"github.com/multiquery/multiquery/internal/cli"
)

func TestLookup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args     []string
		words    []string // nil: no subcommand
		wantRest []string
	}{
		{args: []string{"status", "r1"}, words: []string{"status"}, wantRest: []string{"r1"}},
		{args: []string{"status", "r1", "--watch", "--json"}, words: []string{"status"}, wantRest: []string{"r1", "--watch", "--json"}},
		{args: []string{"status"}},
		{args: []string{"pause", "r1"}, words: []string{"pause"}, wantRest: []string{"r1"}},
		{args: []string{"resume", "r1"}, words: []string{"resume"}, wantRest: []string{"r1"}},
		{args: []string{"cancel", "r1"}, words: []string{"cancel"}, wantRest: []string{"r1"}},
		{args: []string{"cancel", "r1", "r2"}},
		{args: []string{"cancel"}},
		{args: []string{"dead", "list"}, words: []string{"dead", "list"}, wantRest: []string{}},
		{args: []string{"dead", "list", "--run", "r1"}, words: []string{"dead", "list"}, wantRest: []string{"--run", "r1"}},
		{args: []string{"dead", "replay", "3", "4"}, words: []string{"dead", "replay"}, wantRest: []string{"3", "4"}},
		{args: []string{"dead", "replay"}},
		{args: []string{"dead"}},
		{args: []string{"purge", "r1"}},
		{args: []string{"provision"}, words: []string{"provision"}, wantRest: []string{}},
		{args: []string{"provision", "--limits", "l.yaml", "--update"}, words: []string{"provision"}, wantRest: []string{"--limits", "l.yaml", "--update"}},
		{args: nil},
	}
	for _, tt := range tests {
		c, rest, ok := lookup(tt.args)
		if ok != (tt.words != nil) || !slices.Equal(c.words, tt.words) || !slices.Equal(rest, tt.wantRest) {
			t.Errorf("lookup(%q) = %q, %q, %v; want %q, %q", tt.args, c.words, rest, ok, tt.words, tt.wantRest)
		}
	}
}

func TestRunUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {"nope"}, {"--bogus"}, {"cancel"},
		{"--nats-creds", "/nonexistent/a.creds", "status", "r1"}, {"--nats-user", "u", "--nats-token", "t", "provision"}} {
		if got := run(args); got != cli.ExitUsage {
			t.Errorf("run(%q) = %d, want %d", args, got, cli.ExitUsage)
		}
	}
	if got := run([]string{"-h"}); got != cli.ExitOK {
		t.Errorf("run(-h) = %d, want %d", got, cli.ExitOK)
	}
}
