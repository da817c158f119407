package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/multiquery/multiquery/internal/throttle"
)

func TestLoadWorkerExample(t *testing.T) {
	t.Setenv("AZURE_OPENAI_ENDPOINT", "https://contoso.openai.azure.com")
	w, err := LoadWorker("testdata/worker.yaml")
	if err != nil {
		t.Fatalf("LoadWorker: %v", err)
	}
	want := &Worker{Deployments: map[string]Deployment{
		"default": {
			Alias:           "default",
			Provider:        ProviderAzure,
			Endpoint:        "https://contoso.openai.azure.com",
			APIVersion:      DefaultAzureAPIVersion,
			AzureDeployment: "gpt-4o-mini-prod",
			APIKeyEnv:       "AZURE_OPENAI_API_KEY",
			Timeout:         90 * time.Second,
			MaxConcurrency:  64,
			Throttle: func() Throttle {
				t := DefaultThrottle()
				t.StartRate, t.MaxRate, t.CatchUp = 10, 2000, 20*time.Millisecond
				return t
			}(),
		},
		"sim": {
			Alias:    "sim",
			Provider: ProviderOpenAI,
			Endpoint: "http://127.0.0.1:8089/v1",
			Timeout:  DefaultTimeout,
			Throttle: DefaultThrottle(),
		},
	}}
	if diff := cmp.Diff(want, w); diff != "" {
		t.Errorf("worker mismatch (-want +got):\n%s", diff)
	}
}

func TestWorkerDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want Deployment
	}{
		{
			name: "azure gets the default api version, timeout and throttle",
			src:  "deployments:\n  a:\n    provider: azure\n    endpoint: https://x.openai.azure.com\n    api_key_env: K\n",
			want: Deployment{
				Alias: "a", Provider: ProviderAzure, Endpoint: "https://x.openai.azure.com", APIKeyEnv: "K",
				APIVersion: "2024-10-21", Timeout: 120 * time.Second, Throttle: DefaultThrottle(),
			},
		},
		{
			name: "openai gets no api version",
			src:  "deployments:\n  a:\n    provider: openai\n    endpoint: https://api.openai.com/v1\n    api_key_env: K\n    timeout: 5s\n",
			want: Deployment{
				Alias: "a", Provider: ProviderOpenAI, Endpoint: "https://api.openai.com/v1", APIKeyEnv: "K",
				Timeout: 5 * time.Second, Throttle: DefaultThrottle(),
			},
		},
		{
			name: "a partial throttle keeps the other defaults and an explicit zero catch_up",
			src:  "deployments:\n  a:\n    provider: openai\n    endpoint: http://localhost:1\n    throttle: {min_rate: 2, catch_up: 0s, window: 1s}\n",
			want: Deployment{
				Alias: "a", Provider: ProviderOpenAI, Endpoint: "http://localhost:1", Timeout: 120 * time.Second,
				Throttle: func() Throttle {
					t := DefaultThrottle()
					t.MinRate, t.CatchUp, t.Window = 2, 0, time.Second
					return t
				}(),
			},
		},
		{
			name: "an empty throttle block gets every default",
			src:  "deployments:\n  a:\n    provider: openai\n    endpoint: http://localhost:1\n    throttle:\n",
			want: Deployment{
				Alias: "a", Provider: ProviderOpenAI, Endpoint: "http://localhost:1", Timeout: 120 * time.Second,
				Throttle: DefaultThrottle(),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w, err := parseWorker([]byte(tt.src), "/cfg", fakeEnv(nil))
			if err != nil {
				t.Fatalf("parseWorker: %v", err)
			}
			if diff := cmp.Diff(tt.want, w.Deployments["a"]); diff != "" {
				t.Errorf("deployment mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestThrottleSetDefaults(t *testing.T) {
	t.Parallel()
	var zero Throttle
	zero.setDefaults()
	if diff := cmp.Diff(DefaultThrottle(), zero); diff != "" {
		t.Errorf("a zero throttle (-want +got):\n%s", diff)
	}
	// A value that sets anything is kept as it is: its zeros are checked, not defaulted.
	partial := Throttle{StartRate: 7}
	partial.setDefaults()
	if diff := cmp.Diff(Throttle{StartRate: 7}, partial); diff != "" {
		t.Errorf("a partial throttle (-want +got):\n%s", diff)
	}
}

func TestDefaultThrottleIsThrottleDefaultParams(t *testing.T) {
	t.Parallel()
	if diff := cmp.Diff(throttle.DefaultParams(), DefaultThrottle().Params()); diff != "" {
		t.Errorf("DefaultThrottle().Params() (-want +got):\n%s", diff)
	}
}

func TestThrottleValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(*Throttle)
		want   string
	}{
		{"decrease of 1 or more", func(t *Throttle) { t.Decrease = 1.2 }, "throttle.decrease: must be in (0,1), got 1.2"},
		{"decrease of 0", func(t *Throttle) { t.Decrease = 0 }, "throttle.decrease: must be in (0,1), got 0"},
		{"zero increase", func(t *Throttle) { t.Increase = 0 }, "throttle.increase: must be > 0, got 0"},
		{"zero window", func(t *Throttle) { t.Window = 0 }, "throttle.window: must be > 0, got 0s"},
		{"negative catch_up", func(t *Throttle) { t.CatchUp = -time.Millisecond }, "throttle.catch_up: must be >= 0, got -1ms"},
		{"zero min_signals", func(t *Throttle) { t.MinSignals = 0 }, "throttle.min_signals: must be >= 1, got 0"},
		{"zero signal_share", func(t *Throttle) { t.SignalShare = 0 }, "throttle.signal_share: must be in (0,1], got 0"},
		{"pause_share below signal_share", func(t *Throttle) { t.PauseShare = 0.1 }, "throttle.pause_share: must be in [signal_share (0.25),1], got 0.1"},
		{"recover_to above 1", func(t *Throttle) { t.RecoverTo = 1.1 }, "throttle.recover_to: must be in (0,1], got 1.1"},
		{"zero recover", func(t *Throttle) { t.Recover = 0 }, "throttle.recover: must be > 0, got 0"},
		{"max_increase below increase", func(t *Throttle) { t.MaxIncrease = 0.01 }, "throttle.max_increase: must be >= increase (0.04), got 0.01"},
		{"zero increase_doubling", func(t *Throttle) { t.IncreaseDoubling = 0 }, "throttle.increase_doubling: must be > 0, got 0s"},
		{"zero period", func(t *Throttle) { t.Period = 0 }, "throttle.period: must be > 0, got 0s"},
		{"zero min rate", func(t *Throttle) { t.MinRate = 0 }, "throttle.min_rate: must be > 0, got 0"},
		{"start below min", func(t *Throttle) { t.MinRate, t.StartRate = 2, 1 }, "throttle.start_rate: must be >= min_rate (2), got 1"},
		{"max below start", func(t *Throttle) { t.MaxRate = 4 }, "throttle.max_rate: must be >= start_rate (5), got 4"},
		{"zero max pause", func(t *Throttle) { t.MaxPause = 0 }, "throttle.max_pause: must be > 0, got 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			th := DefaultThrottle()
			tt.modify(&th)
			err := th.Validate()
			if err == nil || err.Error() != tt.want {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("defaults are valid", func(t *testing.T) {
		t.Parallel()
		if err := DefaultThrottle().Validate(); err != nil {
			t.Errorf("DefaultThrottle().Validate() = %v", err)
		}
	})
	t.Run("zero catch_up and equal rates are valid", func(t *testing.T) {
		t.Parallel()
		th := DefaultThrottle()
		th.CatchUp, th.MinRate, th.StartRate, th.MaxRate = 0, 3, 3, 3
		if err := th.Validate(); err != nil {
			t.Errorf("Validate() = %v", err)
		}
	})
}

func TestWorkerValidate(t *testing.T) {
	t.Parallel()
	const azure = "    provider: azure\n    endpoint: https://x.openai.azure.com\n"
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"no deployments", "deployments: {}\n", []string{"deployments: at least one deployment required"}},
		{"empty file", "", []string{"deployments: at least one deployment required"}},
		{"alias with a dot", "deployments:\n  gpt.4:\n" + azure + "    api_key_env: K\n", []string{"deployments.gpt.4: alias must match ^[A-Za-z0-9_-]+$"}},
		{"unknown provider", "deployments:\n  a:\n    provider: anthropic\n    endpoint: https://x\n    api_key_env: K\n", []string{`deployments.a.provider: must be "openai" or "azure", got "anthropic"`}},
		{"missing provider", "deployments:\n  a:\n    endpoint: https://x\n    api_key_env: K\n", []string{"deployments.a.provider: required"}},
		{"missing endpoint", "deployments:\n  a:\n    provider: openai\n    api_key_env: K\n", []string{"deployments.a.endpoint: required"}},
		{"endpoint without scheme", "deployments:\n  a:\n    provider: openai\n    endpoint: api.openai.com/v1\n    api_key_env: K\n", []string{`deployments.a.endpoint: must be an http(s) URL, got "api.openai.com/v1"`}},
		{"endpoint with another scheme", "deployments:\n  a:\n    provider: openai\n    endpoint: ftp://x/v1\n    api_key_env: K\n", []string{"deployments.a.endpoint: must be an http(s) URL"}},
		{"both key sources", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    api_key_file: k.txt\n", []string{"deployments.a: api_key_env and api_key_file are mutually exclusive"}},
		{"no key source on a remote endpoint", "deployments:\n  a:\n    provider: openai\n    endpoint: https://api.openai.com/v1\n", []string{"deployments.a: api_key_env or api_key_file required"}},
		{"no key source for azure on loopback", "deployments:\n  a:\n    provider: azure\n    endpoint: http://127.0.0.1:9000\n", []string{"deployments.a: api_key_env or api_key_file required"}},
		{"key env that is not a variable name", "deployments:\n  a:\n" + azure + "    api_key_env: sk-abc\n", []string{`deployments.a.api_key_env: must name an environment variable`}},
		{"an explicit zero timeout is refused, not defaulted", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    timeout: 0s\n", []string{"line 6: deployments.a.timeout: must be > 0, got 0s (leave it out for the default)"}},
		{"azure over plain http to another host", "deployments:\n  a:\n    provider: azure\n    endpoint: http://example.invalid:18181\n    api_key_env: K\n", []string{`deployments.a.endpoint: azure over plain http only to a loopback host (a simulator); use https, got "http://example.invalid:18181"`}},
		{"negative timeout", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    timeout: -1s\n", []string{"deployments.a.timeout: must be > 0, got -1s"}},
		{"negative max concurrency", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    max_concurrency: -2\n", []string{"deployments.a.max_concurrency: must be >= 0, got -2"}},
		{"throttle error names the deployment", "deployments:\n  gpt4:\n" + azure + "    api_key_env: K\n    throttle: {decrease: 1.2}\n", []string{"deployments.gpt4.throttle.decrease: must be in (0,1), got 1.2"}},
		{"an explicit zero max_pause is checked, not defaulted", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    throttle: {max_pause: 0s}\n", []string{"deployments.a.throttle.max_pause: must be > 0, got 0s"}},
		{"an explicit zero increase is checked, not defaulted", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    throttle: {increase: 0}\n", []string{"deployments.a.throttle.increase: must be > 0, got 0"}},
		{"timeout as a number is rejected", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    timeout: 60\n", []string{"time.Duration"}},
		{"a negative price", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    prices: {prompt_per_1k: -0.01, completion_per_1k: 0.03}\n", []string{"deployments.a.prices.prompt_per_1k: must be a finite price >= 0 (USD per 1000 tokens), got -0.01"}},
		{"a prices block that prices nothing", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    prices: {}\n", []string{"deployments.a.prices: prompt_per_1k or completion_per_1k must be > 0"}},
		{"a misspelt price key names its path", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    prices: {prompt_per_1000: 1}\n", []string{`unknown field "prompt_per_1000" in deployments.a.prices`}},
		{"unknown key names its path", "deployments:\n  a:\n" + azure + "    api_key_env: K\n    throttle: {jiter: 0.1}\n", []string{`unknown field "jiter" in deployments.a.throttle`}},
		{
			"every problem is reported",
			"deployments:\n  a:\n    provider: x\n    endpoint: nope\n  b:\n" + azure + "    api_key_env: K\n    throttle: {increase: -1}\n",
			[]string{"deployments.a.provider", "deployments.a.endpoint", "deployments.a: api_key_env or api_key_file required", "deployments.b.throttle.increase"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseWorker([]byte(tt.src), "/cfg", fakeEnv(nil))
			if err == nil {
				t.Fatal("parseWorker succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestWorkerPrices(t *testing.T) {
	t.Parallel()
	src := "deployments:\n  priced:\n    provider: openai\n    endpoint: http://127.0.0.1:8089/v1\n    prices: {prompt_per_1k: 0.0025, completion_per_1k: 0.01}\n" +
		"  free:\n    provider: openai\n    endpoint: http://127.0.0.1:8089/v1\n"
	w, err := parseWorker([]byte(src), "", fakeEnv(nil))
	if err != nil {
		t.Fatalf("parseWorker: %v", err)
	}
	if p := w.Deployments["priced"].Prices; p == nil || *p != (Prices{PromptPer1K: 0.0025, CompletionPer1K: 0.01}) {
		t.Errorf("priced: prices %+v", p)
	}
	if p := w.Deployments["free"].Prices; p != nil {
		t.Errorf("free: prices %+v, want none (no cost counted)", p)
	}
}

func TestWorkerKeylessLoopback(t *testing.T) {
	t.Parallel()
	for _, endpoint := range []string{"http://127.0.0.1:8089/v1", "http://localhost:8089/v1", "http://[::1]:8089/v1", "http://127.0.0.2/v1"} {
		t.Run(endpoint, func(t *testing.T) {
			t.Parallel()
			w, err := parseWorker([]byte("deployments:\n  sim:\n    provider: openai\n    endpoint: "+endpoint+"\n"), "", fakeEnv(nil))
			if err != nil {
				t.Fatalf("parseWorker: %v", err)
			}
			key, err := w.Deployments["sim"].APIKey()
			if key != "" || err != nil {
				t.Errorf("APIKey() = %q, %v; want empty, nil", key, err)
			}
		})
	}
}

func TestAPIKeyFromEnv(t *testing.T) {
	t.Setenv("MQ_TEST_KEY", "  sk-from-env\n")
	w, err := ParseWorker([]byte("deployments:\n  a:\n    provider: openai\n    endpoint: https://api.openai.com/v1\n    api_key_env: MQ_TEST_KEY\n"), "")
	if err != nil {
		t.Fatalf("ParseWorker: %v", err)
	}
	d := w.Deployments["a"]
	key, err := d.APIKey()
	if err != nil || key != "sk-from-env" {
		t.Fatalf("APIKey() = %q, %v; want sk-from-env", key, err)
	}

	t.Setenv("MQ_TEST_KEY", "sk-rotated")
	if key, _ := d.APIKey(); key != "sk-rotated" {
		t.Errorf("APIKey() after change = %q, want sk-rotated", key)
	}

	t.Setenv("MQ_TEST_KEY", " ")
	if _, err := d.APIKey(); err == nil || !strings.Contains(err.Error(), `deployment "a": api key env MQ_TEST_KEY is empty`) {
		t.Errorf("APIKey() with an empty variable: %v", err)
	}
	d.APIKeyEnv = "MQ_TEST_KEY_UNSET"
	if _, err := d.APIKey(); err == nil || !strings.Contains(err.Error(), `deployment "a": api key env MQ_TEST_KEY_UNSET is not set`) {
		t.Errorf("APIKey() with an unset variable: %v", err)
	}
}

func TestAPIKeyFromFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "secrets", "key.txt")
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, []byte("sk-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "worker.yaml")
	src := "deployments:\n  a:\n    provider: azure\n    endpoint: https://x.openai.azure.com\n    api_key_file: secrets/key.txt\n"
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := LoadWorker(cfgPath)
	if err != nil {
		t.Fatalf("LoadWorker: %v", err)
	}
	d := w.Deployments["a"]
	if d.APIKeyFile != keyPath {
		t.Errorf("APIKeyFile = %q, want it resolved to %q", d.APIKeyFile, keyPath)
	}
	if key, err := d.APIKey(); err != nil || key != "sk-from-file" {
		t.Fatalf("APIKey() = %q, %v; want sk-from-file", key, err)
	}

	t.Run("a rotated file is read again", func(t *testing.T) {
		if err := os.WriteFile(keyPath, []byte("sk-rotated"), 0o600); err != nil {
			t.Fatal(err)
		}
		if key, err := d.APIKey(); err != nil || key != "sk-rotated" {
			t.Errorf("APIKey() = %q, %v; want sk-rotated", key, err)
		}
	})
	t.Run("an empty file is an error naming it", func(t *testing.T) {
		if err := os.WriteFile(keyPath, []byte(" \n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := d.APIKey()
		if err == nil || !strings.Contains(err.Error(), `deployment "a": api key file `+keyPath+" is empty") {
			t.Errorf("APIKey() = %v", err)
		}
	})
	t.Run("a missing file is an error naming it", func(t *testing.T) {
		d := d
		d.APIKeyFile = filepath.Join(dir, "nope.txt")
		_, err := d.APIKey()
		if err == nil || !strings.Contains(err.Error(), "nope.txt") || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("APIKey() = %v", err)
		}
	})
}

func TestKeyNeverInErrorText(t *testing.T) {
	const secret = "sk-live-SECRET-0123456789"
	t.Setenv("MQ_SECRET_KEY", secret)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	srcs := map[string]string{
		"invalid deployment reading the key from env":    "deployments:\n  a:\n    provider: nope\n    endpoint: bad\n    api_key_env: MQ_SECRET_KEY\n    throttle: {decrease: 2}\n",
		"invalid deployment reading the key from a file": "deployments:\n  a:\n    provider: nope\n    endpoint: bad\n    api_key_file: " + keyFile + "\n",
		"a key pasted under an unknown field":            "deployments:\n  a:\n    provider: openai\n    endpoint: https://x\n    api_key: " + secret + "\n",
		"a key pasted as the key env name":               "deployments:\n  a:\n    provider: openai\n    endpoint: https://x\n    api_key_env: " + secret + "\n",
	}
	for name, src := range srcs {
		t.Run(name, func(t *testing.T) {
			_, err := ParseWorker([]byte(src), dir)
			if err == nil {
				t.Fatal("ParseWorker succeeded, want an error")
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error leaks the key: %q", err)
			}
		})
	}
	t.Run("an api key env holding the key", func(t *testing.T) {
		d := Deployment{Alias: "a", APIKeyEnv: secret}
		_, err := d.APIKey()
		if err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("APIKey() = %v", err)
		}
	})
	t.Run("an api key error", func(t *testing.T) {
		d := Deployment{Alias: "a", APIKeyFile: dir} // a directory: unreadable as a file
		_, err := d.APIKey()
		if err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("APIKey() = %v", err)
		}
	})
}
