package llmsim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none means valid
	}{
		{name: "zero value is valid", cfg: Config{}},
		{name: "full valid config", cfg: Config{
			Keys: []string{"k"}, Deployments: []string{"d"}, Latency: time.Second, Jitter: time.Millisecond,
			RPS: 50, Burst: 5, TPM: 1000, MaxConcurrency: 3,
			Faults: Faults{"429": 50, "hang": 50}, Burst429: Burst429{Every: time.Minute, For: time.Second},
		}},
		{name: "negative latency", cfg: Config{Latency: -1}, want: []string{"Config.Latency"}},
		{name: "negative jitter", cfg: Config{Jitter: -1}, want: []string{"Config.Jitter"}},
		{name: "negative rps", cfg: Config{RPS: -1}, want: []string{"Config.RPS"}},
		{name: "negative ints", cfg: Config{RPM: -1, Burst: -2, TPM: -3, MaxConcurrency: -4},
			want: []string{"Config.RPM -1", "Config.Burst -2", "Config.TPM -3", "Config.MaxConcurrency -4"}},
		{name: "rps and rpm", cfg: Config{RPS: 1, RPM: 60}, want: []string{"set at most one"}},
		{name: "percent over 100", cfg: Config{Faults: Faults{"503": 101}}, want: []string{`Config.Faults["503"] 101`, "0..100"}},
		{name: "negative percent", cfg: Config{Faults: Faults{"503": -1}}, want: []string{`Config.Faults["503"]`}},
		{name: "unknown kind", cfg: Config{Faults: Faults{"418": 1}}, want: []string{`Config.Faults["418"]: unknown fault kind`}},
		{name: "sum over 100", cfg: Config{Faults: Faults{"429": 60, "500": 50}}, want: []string{"sum to 110"}},
		{name: "empty key", cfg: Config{Keys: []string{""}}, want: []string{"Config.Keys[0]"}},
		{name: "empty deployment", cfg: Config{Deployments: []string{"a", " "}}, want: []string{"Config.Deployments[1]"}},
		{name: "burst longer than period", cfg: Config{Burst429: Burst429{Every: time.Second, For: 2 * time.Second}},
			want: []string{"Config.Burst429.Every"}},
		{name: "azure rate-limit headers", cfg: Config{RateLimitHeaders: RateLimitHeadersAzure}},
		{name: "openai rate-limit headers", cfg: Config{RateLimitHeaders: RateLimitHeadersOpenAI}},
		{name: "no rate-limit headers", cfg: Config{RateLimitHeaders: RateLimitHeadersNone}},
		{name: "unknown rate-limit header set", cfg: Config{RateLimitHeaders: "Azure"},
			want: []string{`Config.RateLimitHeaders "Azure"`, "must be one of azure, openai, none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error naming %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestUpdateJSON(t *testing.T) {
	t.Parallel()
	ptr := func(d time.Duration) *time.Duration { return &d }
	rps, burst, openai := 20.0, 4, RateLimitHeadersOpenAI
	tests := []struct {
		name    string
		body    string
		want    Update
		wantErr bool
	}{
		{name: "rps", body: `{"rps":20,"burst":4}`, want: Update{RPS: &rps, Burst: &burst}},
		{name: "duration string", body: `{"latency":"150ms"}`, want: Update{Latency: ptr(150 * time.Millisecond)}},
		{name: "duration milliseconds", body: `{"jitter":25}`, want: Update{Jitter: ptr(25 * time.Millisecond)}},
		{name: "faults", body: `{"faults":{"429":30},"reset_faults":true}`, want: Update{Faults: Faults{"429": 30}, ResetFaults: true}},
		{name: "burst 429", body: `{"burst_429":{"every":"10s","for":"1s"}}`,
			want: Update{Burst429: &Burst429{Every: 10 * time.Second, For: time.Second}}},
		{name: "ratelimit headers", body: `{"ratelimit_headers":"openai"}`, want: Update{RateLimitHeaders: &openai}},
		{name: "unknown key", body: `{"rsp":20}`, wantErr: true},
		{name: "bad duration", body: `{"latency":"soon"}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got Update
			err := json.Unmarshal([]byte(tt.body), &got)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Unmarshal(%s) err = %v, want error %v", tt.body, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Update (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUpdateApply(t *testing.T) {
	t.Parallel()
	rps, rpm, none := 20.0, 600, RateLimitHeadersNone
	base := Settings{RPM: 60, Faults: Faults{"429": 10, "500": 5}}
	tests := []struct {
		name string
		u    Update
		want Settings
	}{
		{name: "rps clears rpm", u: Update{RPS: &rps}, want: Settings{RPS: 20, Faults: Faults{"429": 10, "500": 5}}},
		{name: "rpm replaces rpm", u: Update{RPM: &rpm}, want: Settings{RPM: 600, Faults: Faults{"429": 10, "500": 5}}},
		{name: "faults merge and zero removes", u: Update{Faults: Faults{"429": 0, "hang": 1}},
			want: Settings{RPM: 60, Faults: Faults{"500": 5, "hang": 1}}},
		{name: "reset faults", u: Update{ResetFaults: true, Faults: Faults{"503": 2}},
			want: Settings{RPM: 60, Faults: Faults{"503": 2}}},
		{name: "ratelimit headers", u: Update{RateLimitHeaders: &none},
			want: Settings{RPM: 60, RateLimitHeaders: "none", Faults: Faults{"429": 10, "500": 5}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, tt.u.apply(base)); diff != "" {
				t.Errorf("apply (-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff(Settings{RPM: 60, Faults: Faults{"429": 10, "500": 5}}, base); diff != "" {
		t.Errorf("apply changed its input (-want +got):\n%s", diff)
	}
}

func TestSettingsJSONRoundTrip(t *testing.T) {
	t.Parallel()
	in := Settings{Latency: 150 * time.Millisecond, RPS: 2.5, Burst: 3, Faults: Faults{"hang": 1},
		InjectedRetryAfter: time.Second, Burst429: Burst429{Every: time.Minute, For: time.Second}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"latency":"150ms"`) {
		t.Errorf("settings JSON %s, want durations as strings", b)
	}
	var out Settings
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}
