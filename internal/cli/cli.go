// Package cli is what the commands under cmd/ share: their exit codes, flag parsing that
// returns instead of exiting (so that every deferred cleanup runs), the signal context
// and list flags. Each command's main is `os.Exit(run(os.Args[1:]))`. It imports only
// the standard library and package version; the long-running processes' flags and
// serving are package proc.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/multiquery/multiquery/internal/version"
)

// Exit codes every command shares (the producer adds 3: some rows failed).
const (
	ExitOK     = 0 // done
	ExitFailed = 1 // failed while running
	ExitUsage  = 2 // bad flags or configuration: nothing was done
)

// ParseExit is the exit code of a FlagSet.Parse error (flag.ContinueOnError): ExitOK for
// -h and --version (version.ErrPrinted), ExitUsage otherwise (the flag package has
// printed why, and the usage).
func ParseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, version.ErrPrinted) {
		return ExitOK
	}
	return ExitUsage
}

// Usage prints "<cmd>: <err>" on stderr and returns ExitUsage.
func Usage(cmd string, err error) int {
	fmt.Fprintf(os.Stderr, "%s: %v\n", cmd, err)
	return ExitUsage
}

// SignalContext is cancelled by SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// List splits a comma-separated flag value, trimming blanks and dropping empty items.
func List(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
