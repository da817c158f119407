package main

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestRunExitCodesWithoutNATS(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"-h"}, 0},
		{[]string{"--version"}, 0}, // prints "<cmd> <version> (<revision>, <go version>)"
		{[]string{"--bogus"}, 2},
		{[]string{"--replicas", "x"}, 2},
		{[]string{"--nats-password", "p"}, 2},                  // a password without a user
		{[]string{"--nats-token", "t", "--nats-user", "u"}, 2}, // two authentication methods
		{[]string{"--nats-creds", "/nonexistent/a.creds"}, 2},  // an unreadable file
		{[]string{"--nats-tls-ca", "/nonexistent/ca.pem"}, 2},  // an unreadable CA
		{[]string{"--context", "/nonexistent/ctx.json"}, 2},    // a missing context
		{nil, 2}, // --config is required
		{[]string{"--config", "/nonexistent/p.yaml"}, 2},
		{[]string{"--serve", "/nonexistent"}, 2},
	} {
		if got := run(tt.args); got != tt.want {
			t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
		}
	}
}

// Issue 10, B1: --serve examples/assessment serves the example pipeline and logs the
// two worker configs beside it as skipped.
func TestServeLoadsTheExampleDirectory(t *testing.T) {
	var logs strings.Builder
	pipelines, err := loadPipelines("../../examples/assessment", zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	if len(pipelines) != 1 || pipelines["pipeline"] == nil {
		t.Fatalf("pipelines %v, want only \"pipeline\"", pipelines)
	}
	for _, f := range []string{"worker.yaml", "worker.compose.yaml"} {
		if !strings.Contains(logs.String(), f+`","why":`) || !strings.Contains(logs.String(), "not a pipeline config, skipped") {
			t.Fatalf("no log line says %s is skipped:\n%s", f, logs.String())
		}
	}
}
