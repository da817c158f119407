package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/llmsim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		want    options
		wantErr bool
	}{
		{
			name: "defaults",
			args: nil,
			want: options{addr: "127.0.0.1:8081", logLevel: "info", sim: llmsim.Config{
				InjectedRetryAfter: time.Second, Seed: 1, Faults: llmsim.Faults{},
			}},
		},
		{
			name: "everything",
			args: []string{
				"--addr", ":9000", "--keys", "a, b", "--deployments", "d1", "--latency", "50ms", "--jitter", "10ms",
				"--rps", "50", "--burst", "5", "--tpm", "100000", "--max-concurrency", "8",
				"--fault", "429=10", "--fault", "invalid_json=2.5%", "--injected-retry-after", "2s", "--seed", "7",
				"--burst429-every", "1m", "--burst429-for", "5s",
			},
			want: options{addr: ":9000", logLevel: "info", sim: llmsim.Config{
				Keys: []string{"a", "b"}, Deployments: []string{"d1"}, Latency: 50 * time.Millisecond, Jitter: 10 * time.Millisecond,
				RPS: 50, Burst: 5, TPM: 100000, MaxConcurrency: 8,
				Faults:             llmsim.Faults{"429": 10, "invalid_json": 2.5},
				InjectedRetryAfter: 2 * time.Second, Seed: 7,
				Burst429: llmsim.Burst429{Every: time.Minute, For: 5 * time.Second},
			}},
		},
		{name: "bad fault", args: []string{"--fault", "429"}, wantErr: true},
		{name: "unknown fault kind", args: []string{"--fault", "teapot=1"}, wantErr: true},
		{name: "invalid config", args: []string{"--rps", "-1"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseFlags(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseFlags(%q) err = %v, want error %v", tt.args, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(options{})); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseFlagsRateLimitHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		want    string // Config.RateLimitHeaders
		wantErr string // substring of the error; "" means valid
	}{
		{name: "unset: the library default, azure", args: nil, want: ""},
		{name: "azure", args: []string{"--ratelimit-headers", "azure"}, want: llmsim.RateLimitHeadersAzure},
		{name: "openai", args: []string{"--ratelimit-headers=openai"}, want: llmsim.RateLimitHeadersOpenAI},
		{name: "none", args: []string{"--ratelimit-headers", "none"}, want: llmsim.RateLimitHeadersNone},
		{name: "unknown set", args: []string{"--ratelimit-headers", "anthropic"},
			wantErr: `invalid value "anthropic" for flag -ratelimit-headers: want one of azure, openai, none`},
		{name: "empty", args: []string{"--ratelimit-headers", ""}, wantErr: "-ratelimit-headers: want one of azure, openai, none"},
		{name: "case matters", args: []string{"--ratelimit-headers", "OpenAI"}, wantErr: "-ratelimit-headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseFlags(%q) err = %v, want it to contain %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%q) = %v", tt.args, err)
			}
			if got.sim.RateLimitHeaders != tt.want {
				t.Errorf("parseFlags(%q) RateLimitHeaders = %q, want %q", tt.args, got.sim.RateLimitHeaders, tt.want)
			}
		})
	}
}

func TestRunVersionExitsZero(t *testing.T) {
	t.Parallel()
	if got := run([]string{"--version"}); got != 0 {
		t.Errorf("run(--version) = %d, want 0", got)
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, options{addr: "127.0.0.1:0", sim: llmsim.Config{}}, zerolog.Nop())
	}()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve = %v, want nil after cancel", err)
	}
	if err := serve(context.Background(), options{addr: "256.0.0.1:1"}, zerolog.Nop()); err == nil {
		t.Fatal("serve on a bad address returned nil")
	}
}
