package cli

import (
	"errors"
	"flag"
	"io"
	"slices"
	"testing"
)

func TestParseExit(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if got := ParseExit(fs.Parse([]string{"-h"})); got != ExitOK {
		t.Errorf("ParseExit(-h) = %d, want %d", got, ExitOK)
	}
	if got := ParseExit(fs.Parse([]string{"--nope"})); got != ExitUsage {
		t.Errorf("ParseExit(--nope) = %d, want %d", got, ExitUsage)
	}
	if got := ParseExit(errors.New("bad")); got != ExitUsage {
		t.Errorf("ParseExit(bad) = %d, want %d", got, ExitUsage)
	}
}

func TestList(t *testing.T) {
	for in, want := range map[string][]string{"": nil, " a, b ,,c ": {"a", "b", "c"}, ",": nil, "x": {"x"}} {
		if got := List(in); !slices.Equal(got, want) {
			t.Errorf("List(%q) = %q, want %q", in, got, want)
		}
	}
}
