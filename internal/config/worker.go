package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Providers.
const (
	ProviderOpenAI = "openai"
	ProviderAzure  = "azure"
)

// Worker defaults.
const (
	DefaultAzureAPIVersion = "2024-10-21"
	DefaultTimeout         = 120 * time.Second
)

// nameRE is the shape of every name that becomes a NATS subject token or a KV key:
// deployment aliases, query, case study and criterion names.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Worker is the worker's configuration: where calls for each deployment alias go.
// It is never published on the bus.
type Worker struct {
	// Deployments maps an alias (as named by jobs) to its deployment.
	Deployments map[string]Deployment `yaml:"deployments"`
}

// Deployment is one model endpoint and how to call it.
type Deployment struct {
	// Alias is the map key in Worker.Deployments.
	Alias string `yaml:"-"`
	// Provider is "openai" or "azure".
	Provider string `yaml:"provider"`
	// Endpoint is the base URL: for openai e.g. https://api.openai.com/v1, for azure
	// e.g. https://x.openai.azure.com.
	Endpoint string `yaml:"endpoint"`
	// APIVersion is the Azure API version, default "2024-10-21". Azure only.
	APIVersion string `yaml:"api_version"`
	// AzureDeployment is the Azure deployment name; empty means the model the job
	// asks for.
	AzureDeployment string `yaml:"azure_deployment"`
	// APIKeyEnv names an environment variable holding the API key.
	APIKeyEnv string `yaml:"api_key_env"`
	// APIKeyFile is a file holding the API key (surrounding whitespace trimmed);
	// a relative path is resolved against the config file's directory at load.
	APIKeyFile string `yaml:"api_key_file"`
	// Timeout bounds each call, default 120s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConcurrency caps this deployment's in-flight calls per worker; 0 means the
	// worker's --concurrency.
	MaxConcurrency int `yaml:"max_concurrency"`
	// Throttle parameterises the fleet-wide AIMD throttle of this deployment.
	Throttle Throttle `yaml:"throttle"`
}

// Throttle holds the fleet-wide throttle parameters of one deployment (docs/THROTTLE.md
// has the rule and the model results behind each default).
type Throttle struct {
	// StartRate is the initial fleet dispatch rate in requests per second, default 5.
	StartRate float64 `yaml:"start_rate"`
	// MinRate is the floor of the rate, default 0.5.
	MinRate float64 `yaml:"min_rate"`
	// MaxRate is the ceiling of the rate, default 10000.
	MaxRate float64 `yaml:"max_rate"`
	// Increase is the probe's growth right after a cut, a fraction of the rate per
	// second, default 0.04.
	Increase float64 `yaml:"increase"`
	// IncreaseDoubling: the probe's growth doubles every this long without pressure,
	// default 2s (a limit raised from 20 to 50 req/s is found in ~6 s).
	IncreaseDoubling time.Duration `yaml:"increase_doubling"`
	// MaxIncrease caps the probe's growth (fraction per second), default 1.
	MaxIncrease float64 `yaml:"max_increase"`
	// Recover is the growth (fraction per second) back to recover_to x the last good
	// rate after a cut, default 1.
	Recover float64 `yaml:"recover"`
	// RecoverTo is the part of the last good rate regained fast, default 0.95.
	RecoverTo float64 `yaml:"recover_to"`
	// Decrease is the multiplicative factor of a cut, default 0.9.
	Decrease float64 `yaml:"decrease"`
	// Window: at most one cut per window fleet-wide; the slow-start doubling period;
	// the span over which 429s are counted; default 250ms.
	Window time.Duration `yaml:"window"`
	// MinSignals and SignalShare: 429s whose rate-limit headers do not show the budget
	// spent are pressure only when at least min_signals of them are at least
	// signal_share of a window's answers; defaults 5 and 0.25 (at 5 % random 429s a
	// false cut happens in at most 0.26 % of windows).
	MinSignals  int     `yaml:"min_signals"`
	SignalShare float64 `yaml:"signal_share"`
	// PauseShare: such 429s also pause the fleet when they are at least this share of
	// the window's answers, default 0.5.
	PauseShare float64 `yaml:"pause_share"`
	// Period is the dispatch grid's period, default 1s.
	Period time.Duration `yaml:"period"`
	// CatchUp is how late a worker may still use a dispatch slot, default 50ms.
	CatchUp time.Duration `yaml:"catch_up"`
	// MaxPause caps a fleet-wide pause requested by Retry-After, default 60s.
	MaxPause time.Duration `yaml:"max_pause"`
}

// DefaultThrottle returns the default throttle parameters.
func DefaultThrottle() Throttle {
	return Throttle{
		StartRate:        5,
		MinRate:          0.5,
		MaxRate:          10000,
		Increase:         0.04,
		IncreaseDoubling: 2 * time.Second,
		MaxIncrease:      1,
		Recover:          1,
		RecoverTo:        0.95,
		Decrease:         0.9,
		Window:           250 * time.Millisecond,
		MinSignals:       5,
		SignalShare:      0.25,
		PauseShare:       0.5,
		Period:           time.Second,
		CatchUp:          50 * time.Millisecond,
		MaxPause:         60 * time.Second,
	}
}

// UnmarshalYAML starts from the defaults, so a field left out keeps its default
// while an explicit `jitter: 0` stays 0.
func (t *Throttle) UnmarshalYAML(n *yaml.Node) error {
	type plain Throttle
	p := plain(DefaultThrottle())
	if err := n.Decode(&p); err != nil {
		return err
	}
	*t = Throttle(p)
	return nil
}

// setDefaults fills a zero Throttle with the defaults, and zero fields of a
// partly set one (catch_up 0 is meaningful: only a slot due now may be used).
func (t *Throttle) setDefaults() {
	if *t == (Throttle{}) {
		*t = DefaultThrottle()
		return
	}
	d := DefaultThrottle()
	setZero(&t.StartRate, d.StartRate)
	setZero(&t.MinRate, d.MinRate)
	setZero(&t.MaxRate, d.MaxRate)
	setZero(&t.Increase, d.Increase)
	setZero(&t.IncreaseDoubling, d.IncreaseDoubling)
	setZero(&t.MaxIncrease, d.MaxIncrease)
	setZero(&t.Recover, d.Recover)
	setZero(&t.RecoverTo, d.RecoverTo)
	setZero(&t.Decrease, d.Decrease)
	setZero(&t.Window, d.Window)
	setZero(&t.MinSignals, d.MinSignals)
	setZero(&t.SignalShare, d.SignalShare)
	setZero(&t.PauseShare, d.PauseShare)
	setZero(&t.Period, d.Period)
	setZero(&t.MaxPause, d.MaxPause)
}

func setZero[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate checks the throttle invariants. Each error names the field, e.g.
// "throttle.decrease: must be in (0,1), got 1.2".
func (t Throttle) Validate() error {
	return errors.Join(t.problems("throttle")...)
}

func (t Throttle) problems(path string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", path, field, fmt.Sprintf(format, args...)))
	}
	// Negated comparisons also reject NaN.
	if !(t.Decrease > 0 && t.Decrease < 1) {
		add("decrease", "must be in (0,1), got %v", t.Decrease)
	}
	if !(t.Increase > 0) {
		add("increase", "must be > 0, got %v", t.Increase)
	}
	if t.Window <= 0 {
		add("window", "must be > 0, got %v", t.Window)
	}
	if t.IncreaseDoubling <= 0 {
		add("increase_doubling", "must be > 0, got %v", t.IncreaseDoubling)
	}
	if !(t.MaxIncrease >= t.Increase) {
		add("max_increase", "must be >= increase (%v), got %v", t.Increase, t.MaxIncrease)
	}
	if !(t.Recover > 0) {
		add("recover", "must be > 0, got %v", t.Recover)
	}
	if !(t.RecoverTo > 0 && t.RecoverTo <= 1) {
		add("recover_to", "must be in (0,1], got %v", t.RecoverTo)
	}
	if t.MinSignals < 1 {
		add("min_signals", "must be >= 1, got %v", t.MinSignals)
	}
	if !(t.SignalShare > 0 && t.SignalShare <= 1) {
		add("signal_share", "must be in (0,1], got %v", t.SignalShare)
	}
	if !(t.PauseShare >= t.SignalShare && t.PauseShare <= 1) {
		add("pause_share", "must be in [signal_share (%v),1], got %v", t.SignalShare, t.PauseShare)
	}
	if t.Period <= 0 {
		add("period", "must be > 0, got %v", t.Period)
	}
	if t.CatchUp < 0 {
		add("catch_up", "must be >= 0, got %v", t.CatchUp)
	}
	if !(t.MinRate > 0) {
		add("min_rate", "must be > 0, got %v", t.MinRate)
	}
	if !(t.StartRate >= t.MinRate) {
		add("start_rate", "must be >= min_rate (%v), got %v", t.MinRate, t.StartRate)
	}
	if !(t.MaxRate >= t.StartRate) {
		add("max_rate", "must be >= start_rate (%v), got %v", t.StartRate, t.MaxRate)
	}
	if t.MaxPause <= 0 {
		add("max_pause", "must be > 0, got %v", t.MaxPause)
	}
	return errs
}

// LoadWorker reads, expands, parses, defaults and validates the worker
// configuration at path. A relative api_key_file is resolved against path's
// directory.
func LoadWorker(path string) (*Worker, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read worker config: %w", err)
	}
	w, err := ParseWorker(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("worker config %s: %w", path, err)
	}
	return w, nil
}

// ParseWorker parses, defaults and validates a worker configuration. baseDir
// resolves a relative api_key_file.
func ParseWorker(data []byte, baseDir string) (*Worker, error) {
	return parseWorker(data, baseDir, os.LookupEnv)
}

func parseWorker(data []byte, baseDir string, lookupEnv func(string) (string, bool)) (*Worker, error) {
	var w Worker
	if err := decodeYAML(data, &w, lookupEnv); err != nil {
		return nil, err
	}
	for alias, d := range w.Deployments {
		if d.APIKeyFile != "" && !filepath.IsAbs(d.APIKeyFile) {
			d.APIKeyFile = filepath.Join(baseDir, d.APIKeyFile)
		}
		w.Deployments[alias] = d
	}
	w.setDefaults()
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return &w, nil
}

func (w *Worker) setDefaults() {
	for alias, d := range w.Deployments {
		d.Alias = alias
		if d.Provider == ProviderAzure && d.APIVersion == "" {
			d.APIVersion = DefaultAzureAPIVersion
		}
		setZero(&d.Timeout, DefaultTimeout)
		d.Throttle.setDefaults()
		w.Deployments[alias] = d
	}
}

// Validate checks every deployment and returns all problems joined, each naming
// its field path (e.g. "deployments.gpt4.endpoint: ...").
func (w *Worker) Validate() error {
	if len(w.Deployments) == 0 {
		return errors.New("deployments: at least one deployment required")
	}
	var errs []error
	for _, alias := range slices.Sorted(maps.Keys(w.Deployments)) {
		errs = append(errs, w.Deployments[alias].problems(alias)...)
	}
	return errors.Join(errs...)
}

func (d Deployment) problems(alias string) []error {
	path := "deployments." + alias
	var errs []error
	add := func(field, format string, args ...any) {
		p := path
		if field != "" {
			p += "." + field
		}
		errs = append(errs, fmt.Errorf("%s: %s", p, fmt.Sprintf(format, args...)))
	}
	if !nameRE.MatchString(alias) {
		add("", "alias must match %s", nameRE)
	}
	switch d.Provider {
	case ProviderOpenAI:
	case ProviderAzure:
		if d.APIVersion == "" {
			add("api_version", "required")
		}
	case "":
		add("provider", "required (%q or %q)", ProviderOpenAI, ProviderAzure)
	default:
		add("provider", "must be %q or %q, got %q", ProviderOpenAI, ProviderAzure, d.Provider)
	}

	loopback := false
	if u, err := url.Parse(d.Endpoint); d.Endpoint == "" {
		add("endpoint", "required")
	} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("endpoint", "must be an http(s) URL, got %q", d.Endpoint)
	} else {
		loopback = isLoopback(u.Hostname())
	}

	switch {
	case d.APIKeyEnv != "" && d.APIKeyFile != "":
		add("", "api_key_env and api_key_file are mutually exclusive")
	case d.APIKeyEnv != "":
		if !envName.MatchString(d.APIKeyEnv) {
			// Not echoed: a key pasted here by mistake must not reach a log.
			add("api_key_env", "must name an environment variable (%s), not hold the key", envName)
		}
	case d.APIKeyFile != "":
	case d.Provider == ProviderOpenAI && loopback:
		// A local simulator needs no key.
	default:
		add("", "api_key_env or api_key_file required (a keyless deployment must be provider %q on a loopback endpoint)", ProviderOpenAI)
	}

	if d.Timeout <= 0 {
		add("timeout", "must be > 0, got %v", d.Timeout)
	}
	if d.MaxConcurrency < 0 {
		add("max_concurrency", "must be >= 0, got %d", d.MaxConcurrency)
	}
	return append(errs, d.Throttle.problems(path+".throttle")...)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// APIKey reads the key now, from the environment variable or the file, so a
// rotated file is picked up. It returns "" for a keyless (loopback) deployment.
// Errors name the alias and the source, never the key.
func (d Deployment) APIKey() (string, error) {
	switch {
	case d.APIKeyEnv != "" && !envName.MatchString(d.APIKeyEnv):
		return "", fmt.Errorf("deployment %q: api_key_env must name an environment variable, not hold the key", d.Alias)
	case d.APIKeyEnv != "":
		v, ok := os.LookupEnv(d.APIKeyEnv)
		if !ok {
			return "", fmt.Errorf("deployment %q: api key env %s is not set", d.Alias, d.APIKeyEnv)
		}
		if v = strings.TrimSpace(v); v == "" {
			return "", fmt.Errorf("deployment %q: api key env %s is empty", d.Alias, d.APIKeyEnv)
		}
		return v, nil
	case d.APIKeyFile != "":
		b, err := os.ReadFile(d.APIKeyFile)
		if err != nil {
			// *fs.PathError carries the path and the cause, never the content.
			return "", fmt.Errorf("deployment %q: api key file: %w", d.Alias, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("deployment %q: api key file %s is empty", d.Alias, d.APIKeyFile)
		}
		return v, nil
	}
	return "", nil
}
