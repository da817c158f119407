package main

import "testing"

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
		{[]string{"--prefix", "team.a"}, 2},                    // a prefix that is no subject token
	} {
		if got := run(tt.args); got != tt.want {
			t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
		}
	}
}

func TestRunRefusesAnInvalidPrefixFromTheEnvironment(t *testing.T) {
	t.Setenv("MQ_PREFIX", "jobs") // the default deployment's job subjects start with it
	if got := run(nil); got != 2 {
		t.Errorf("run with MQ_PREFIX=jobs = %d, want 2", got)
	}
}
