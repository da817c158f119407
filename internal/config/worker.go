package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/multiquery/multiquery/internal/throttle"
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
	Timeout time.Duration `yaml:"timeout" zero:"refused"`
	// MaxConcurrency caps this deployment's in-flight calls per worker; 0 means the
	// worker's --concurrency.
	MaxConcurrency int `yaml:"max_concurrency"`
	// Throttle parameterises the fleet-wide AIMD throttle of this deployment.
	Throttle Throttle `yaml:"throttle"`
	// Prices, optional, are the deployment's token prices: with them the worker counts
	// the estimated cost of the tokens it is billed (mq_worker_cost_usd_total).
	Prices *Prices `yaml:"prices"`
}

// Prices are a deployment's token prices in USD per 1000 tokens.
type Prices struct {
	// PromptPer1K is the price of 1000 prompt (input) tokens.
	PromptPer1K float64 `yaml:"prompt_per_1k"`
	// CompletionPer1K is the price of 1000 completion (output) tokens.
	CompletionPer1K float64 `yaml:"completion_per_1k"`
}

func (p *Prices) problems(path string) []error {
	if p == nil {
		return nil
	}
	var errs []error
	for _, f := range []struct {
		name string
		v    float64
	}{{"prompt_per_1k", p.PromptPer1K}, {"completion_per_1k", p.CompletionPer1K}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			errs = append(errs, fmt.Errorf("%s.prices.%s: must be a finite price >= 0 (USD per 1000 tokens), got %v", path, f.name, f.v))
		}
	}
	if len(errs) == 0 && p.PromptPer1K == 0 && p.CompletionPer1K == 0 {
		errs = append(errs, fmt.Errorf("%s.prices: prompt_per_1k or completion_per_1k must be > 0 (leave prices out to count no cost)", path))
	}
	return errs
}

// Throttle holds the fleet-wide throttle parameters of one deployment: the fields of
// throttle.Params with their YAML keys (a conversion between the two types checks at
// compile time that they keep the same fields). The defaults are throttle.DefaultParams
// and the checks throttle.Params.Validate; docs/THROTTLE.md has the rule and the model
// results behind each default, docs/OPERATIONS.md the table of keys.
type Throttle struct {
	// StartRate is the initial fleet dispatch rate in requests per second.
	StartRate float64 `yaml:"start_rate"`
	// MinRate is the floor of the rate.
	MinRate float64 `yaml:"min_rate"`
	// MaxRate is the ceiling of the rate.
	MaxRate float64 `yaml:"max_rate"`
	// Increase is the probe's growth right after a cut, a fraction of the rate per
	// second.
	Increase float64 `yaml:"increase"`
	// IncreaseDoubling: the probe's growth doubles every this long without pressure.
	IncreaseDoubling time.Duration `yaml:"increase_doubling"`
	// MaxIncrease caps the probe's growth (fraction per second).
	MaxIncrease float64 `yaml:"max_increase"`
	// Recover is the growth (fraction per second) back to recover_to x the last good
	// rate after a cut.
	Recover float64 `yaml:"recover"`
	// RecoverTo is the part of the last good rate regained fast.
	RecoverTo float64 `yaml:"recover_to"`
	// Decrease is the multiplicative factor of a cut.
	Decrease float64 `yaml:"decrease"`
	// Window: at most one cut per window fleet-wide; the slow-start doubling period;
	// the span over which 429s are counted.
	Window time.Duration `yaml:"window"`
	// MinSignals and SignalShare: 429s whose rate-limit headers do not show the budget
	// spent are pressure only when at least min_signals of them are at least
	// signal_share of a window's answers.
	MinSignals  int     `yaml:"min_signals"`
	SignalShare float64 `yaml:"signal_share"`
	// PauseShare: such 429s also pause the fleet when they are at least this share of
	// the window's answers.
	PauseShare float64 `yaml:"pause_share"`
	// Period is the dispatch grid's period.
	Period time.Duration `yaml:"period"`
	// CatchUp is how late a worker may still use a dispatch slot (0: only a slot due
	// now).
	CatchUp time.Duration `yaml:"catch_up"`
	// MaxPause caps a fleet-wide pause requested by Retry-After.
	MaxPause time.Duration `yaml:"max_pause"`
	// TokensPerMinute is the deployment's token budget, fleet-wide (optional): the
	// worker's token gate paces calls by their estimated tokens within it. Without
	// it, a provider's x-ratelimit-limit-tokens header sets the budget.
	TokensPerMinute float64 `yaml:"tokens_per_minute"`
}

// DefaultThrottle returns the default throttle parameters, throttle.DefaultParams.
func DefaultThrottle() Throttle { return Throttle(throttle.DefaultParams()) }

// Params returns the controller's parameters.
func (t Throttle) Params() throttle.Params { return throttle.Params(t) }

// UnmarshalYAML starts from the defaults, so a key left out keeps its default while an
// explicit value, zero included, is kept and checked (`catch_up: 0s` is valid,
// `max_pause: 0s` is not).
func (t *Throttle) UnmarshalYAML(n *yaml.Node) error {
	type plain Throttle
	p := plain(DefaultThrottle())
	if err := n.Decode(&p); err != nil {
		return err
	}
	*t = Throttle(p)
	return nil
}

// setDefaults gives a deployment without a throttle block (or with an empty one) the
// defaults. A block that sets anything was decoded over the defaults (UnmarshalYAML).
func (t *Throttle) setDefaults() {
	if *t == (Throttle{}) {
		*t = DefaultThrottle()
	}
}

func setZero[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// Validate checks the throttle invariants (throttle.Params.Validate). Each error names
// the field, e.g. "throttle.decrease: must be in (0,1), got 1.2".
func (t Throttle) Validate() error {
	return errors.Join(t.problems("throttle")...)
}

// problems are the errors of throttle.Params.Validate, each prefixed with path.
func (t Throttle) problems(path string) []error {
	err := t.Params().Validate()
	if err == nil {
		return nil
	}
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s.%w", path, e)
	}
	return out
}

// LoadWorker reads, expands, parses, defaults and validates the worker
// configuration at path. A relative api_key_file is resolved against path's
// directory.
func LoadWorker(path string) (*Worker, error) {
	return loadFile(path, "worker", ParseWorker)
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
		if d.Provider == ProviderAzure && u.Scheme == "http" && !loopback {
			// openai-go's Azure client refuses to send the key in the clear: every call
			// would fail.
			add("endpoint", "azure over plain http only to a loopback host (a simulator); use https, got %q", d.Endpoint)
		}
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
	errs = append(errs, d.Prices.problems(path)...)
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
