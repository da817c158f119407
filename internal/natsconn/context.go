package natsconn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// contextFile is what multiquery reads of a nats CLI context (the JSON the nats CLI
// writes with `nats context save`; field names as in nats-io/jsm.go natscontext).
type contextFile struct {
	URL      string `json:"url"`
	Token    string `json:"token"`
	User     string `json:"user"`
	Password string `json:"password"`
	Creds    string `json:"creds"`
	NKey     string `json:"nkey"`
	Cert     string `json:"cert"`
	Key      string `json:"key"`
	CA       string `json:"ca"`
	TLSFirst bool   `json:"tls_first"`

	// Settings multiquery cannot honour: a context that sets one is refused rather
	// than half applied.
	NSC           string `json:"nsc"`
	JSDomain      string `json:"jetstream_domain"`
	JSAPIPrefix   string `json:"jetstream_api_prefix"`
	JSEventPrefix string `json:"jetstream_event_prefix"`
	InboxPrefix   string `json:"inbox_prefix"`
	UserJWT       string `json:"user_jwt"`
	UserSeed      string `json:"user_seed"`
	SocksProxy    string `json:"socks_proxy"`
}

// contextPath is the file of context name: the name itself when it is a path to a
// .json file, else <name>.json in $XDG_CONFIG_HOME/nats/context, or
// ~/.config/nats/context.
func contextPath(name string, env func(string) string) (string, error) {
	if strings.HasSuffix(name, ".json") && strings.ContainsRune(name, filepath.Separator) {
		return name, nil
	}
	if name == "" || strings.Contains(name, "..") || strings.ContainsRune(name, filepath.Separator) {
		return "", fmt.Errorf("--context %q: not a context name", name)
	}
	dir := ""
	if env != nil {
		dir = env("XDG_CONFIG_HOME")
	}
	if dir == "" {
		home := ""
		if env != nil {
			home = env("HOME")
		}
		if home == "" {
			var err error
			if home, err = os.UserHomeDir(); err != nil {
				return "", fmt.Errorf("--context %s: %w", name, err)
			}
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "nats", "context", name+".json"), nil
}

// loadContext reads a nats CLI context. Paths in it may start with ~/ (the home
// directory), as the nats CLI allows.
func loadContext(name string, env func(string) string) (contextFile, error) {
	path, err := contextPath(name, env)
	if err != nil {
		return contextFile{}, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return contextFile{}, fmt.Errorf("--context %s: %w", name, err)
	}
	var c contextFile
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&c); err != nil {
		return contextFile{}, fmt.Errorf("--context %s: %s: %w", name, path, err)
	}
	for field, v := range map[string]string{"nsc": c.NSC, "jetstream_domain": c.JSDomain,
		"jetstream_api_prefix": c.JSAPIPrefix, "jetstream_event_prefix": c.JSEventPrefix,
		"inbox_prefix": c.InboxPrefix, "user_jwt": c.UserJWT, "user_seed": c.UserSeed, "socks_proxy": c.SocksProxy} {
		if v != "" {
			return contextFile{}, fmt.Errorf("--context %s: field %q is not supported by multiquery: use a context without it", name, field)
		}
	}
	for _, p := range []*string{&c.Creds, &c.NKey, &c.Cert, &c.Key, &c.CA} {
		if rest, ok := strings.CutPrefix(*p, "~/"); ok {
			home, err := os.UserHomeDir()
			if env != nil && env("HOME") != "" {
				home, err = env("HOME"), nil
			}
			if err != nil {
				return contextFile{}, errors.New("--context " + name + ": no home directory for ~/")
			}
			*p = filepath.Join(home, rest)
		}
	}
	return c, nil
}
