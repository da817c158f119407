// Package natsconn owns how a process reaches NATS: the server URL and the connection's
// security (a .creds file, an nkey seed, user and password, a token, TLS with a CA and
// a client certificate), taken from flags, their environment variables and the nats
// CLI's contexts, checked, and turned into nats.Options. Every multiquery command that
// connects registers the same flags through Options.Register. Secrets never leave it:
// Describe names the method, never its material.
package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// DefaultURL is the server used when neither --nats, NATS_URL nor a context names one.
const DefaultURL = "nats://127.0.0.1:4222"

// Options is how to connect to NATS. The zero value connects to DefaultURL without
// credentials.
type Options struct {
	URL string // comma-separated server URLs; tls:// implies TLS
	// Context names a nats CLI context (or is the path of its JSON file): its fields
	// fill in whatever the fields below leave empty; its credentials are used only when
	// none of Creds, NKey, User, Password or Token is set.
	Context string

	Creds    string // .creds file (user JWT and seed)
	NKey     string // file holding a user nkey seed
	User     string
	Password string
	Token    string

	CA         string // PEM file of the CA that signed the server's certificate
	Cert, Key  string // PEM files of the client certificate and its key
	ServerName string // the name the server's certificate must carry (default: the URL's host)
	TLSFirst   bool   // TLS handshake before the NATS protocol (a server with handshake_first)

	// env reads the environment (os.Getenv); nil reads nothing.
	env func(string) string
}

// envVars names the environment variable of each flag (the same names the nats CLI reads,
// where it has one).
var envVars = map[string]string{
	"nats":                 "NATS_URL",
	"context":              "NATS_CONTEXT",
	"nats-creds":           "NATS_CREDS",
	"nats-nkey":            "NATS_NKEY",
	"nats-user":            "NATS_USER",
	"nats-password":        "NATS_PASSWORD",
	"nats-token":           "NATS_TOKEN",
	"nats-tls-ca":          "NATS_CA",
	"nats-tls-cert":        "NATS_CERT",
	"nats-tls-key":         "NATS_KEY",
	"nats-tls-server-name": "NATS_TLS_SERVER_NAME",
}

// Register registers the connection flags on fs. A flag left unset takes its
// environment variable (envVars) read through env (os.Getenv in a command) when Resolve
// runs; the values are never flag defaults, so -h prints no secret.
func (o *Options) Register(fs *flag.FlagSet, env func(string) string) {
	o.env = env
	str := func(p *string, name, usage string) {
		fs.StringVar(p, name, "", usage+" (env "+envVars[name]+")")
	}
	str(&o.URL, "nats", "NATS server URL(s), comma-separated; tls:// implies TLS (default "+DefaultURL+", or the context's)")
	str(&o.Context, "context", "nats CLI context name (its JSON under $XDG_CONFIG_HOME/nats/context or ~/.config/nats/context) or file path; flags and env override its fields")
	str(&o.Creds, "nats-creds", "NATS user credentials file (.creds)")
	str(&o.NKey, "nats-nkey", "file holding a NATS user nkey seed")
	str(&o.User, "nats-user", "NATS user name")
	str(&o.Password, "nats-password", "NATS password (needs --nats-user; prefer the env variable to a flag)")
	str(&o.Token, "nats-token", "NATS authentication token (prefer the env variable to a flag)")
	str(&o.CA, "nats-tls-ca", "PEM file of the CA that signs the NATS server's certificate (implies TLS)")
	str(&o.Cert, "nats-tls-cert", "PEM file of the client certificate (implies TLS; needs --nats-tls-key)")
	str(&o.Key, "nats-tls-key", "PEM file of the client certificate's key (implies TLS)")
	str(&o.ServerName, "nats-tls-server-name", "name expected in the NATS server's certificate (default: the URL's host; implies TLS)")
}

// fromEnv fills the empty fields from their environment variables. Credentials come
// from the environment only when no flag gives any: one method, never a mix of sources.
func (o Options) fromEnv() Options {
	if o.env == nil {
		return o
	}
	fill := func(fields map[string]*string) {
		for name, p := range fields {
			if *p == "" {
				*p = o.env(envVars[name])
			}
		}
	}
	fill(map[string]*string{"nats": &o.URL, "context": &o.Context, "nats-tls-ca": &o.CA,
		"nats-tls-cert": &o.Cert, "nats-tls-key": &o.Key, "nats-tls-server-name": &o.ServerName})
	if !o.hasAuth() {
		fill(map[string]*string{"nats-creds": &o.Creds, "nats-nkey": &o.NKey, "nats-user": &o.User,
			"nats-password": &o.Password, "nats-token": &o.Token})
	}
	return o
}

// hasAuth reports whether any credential is set.
func (o Options) hasAuth() bool {
	return o.Creds != "" || o.NKey != "" || o.User != "" || o.Password != "" || o.Token != ""
}

// Resolved is a checked connection setting: the URL and the nats.Options that carry its
// security.
type Resolved struct {
	URL  string
	Opts []nats.Option
	// Auth names the authentication method (creds, nkey, user, token or none) and TLS
	// whether the connection uses TLS: what a log line may show.
	Auth string
	TLS  bool
}

// Describe is a log-safe summary: the URL without its password, the method, TLS.
func (r Resolved) Describe() string {
	return fmt.Sprintf("url=%s auth=%s tls=%t", RedactURL(r.URL), r.Auth, r.TLS)
}

// Resolve fills the unset options from the environment, then from the context (a flag
// or variable wins over the context), checks them (files readable, one
// authentication method, a password only with a user, a client certificate with its
// key) and builds the nats.Options. Its errors are usage errors: nothing connected.
func (o Options) Resolve() (Resolved, error) {
	o = o.fromEnv()
	if o.Context != "" {
		c, err := loadContext(o.Context, o.env)
		if err != nil {
			return Resolved{}, err
		}
		o = o.merge(c)
	}
	if o.URL == "" {
		o.URL = DefaultURL
	}
	r := Resolved{URL: o.URL, Auth: "none"}
	methods := map[string]bool{"--nats-creds": o.Creds != "", "--nats-nkey": o.NKey != "",
		"--nats-user": o.User != "", "--nats-token": o.Token != ""}
	var set []string
	for _, m := range []string{"--nats-creds", "--nats-nkey", "--nats-user", "--nats-token"} {
		if methods[m] {
			set = append(set, m)
		}
	}
	if len(set) > 1 {
		return Resolved{}, fmt.Errorf("%s: conflicting NATS authentication methods, give one", strings.Join(set, " and "))
	}
	if o.Password != "" && o.User == "" {
		return Resolved{}, errors.New("--nats-password needs --nats-user")
	}
	switch {
	case o.Creds != "":
		if err := readable("--nats-creds", o.Creds); err != nil {
			return Resolved{}, err
		}
		r.Opts, r.Auth = append(r.Opts, nats.UserCredentials(o.Creds)), "creds"
	case o.NKey != "":
		if err := readable("--nats-nkey", o.NKey); err != nil {
			return Resolved{}, err
		}
		opt, err := nats.NkeyOptionFromSeed(o.NKey)
		if err != nil {
			return Resolved{}, fmt.Errorf("--nats-nkey %s: %w", o.NKey, err)
		}
		r.Opts, r.Auth = append(r.Opts, opt), "nkey"
	case o.User != "":
		r.Opts, r.Auth = append(r.Opts, nats.UserInfo(o.User, o.Password)), "user"
	case o.Token != "":
		r.Opts, r.Auth = append(r.Opts, nats.Token(o.Token)), "token"
	}
	tlsOpt, on, err := o.tls()
	if err != nil {
		return Resolved{}, err
	}
	if on {
		r.Opts, r.TLS = append(r.Opts, tlsOpt), true
		if o.TLSFirst {
			r.Opts = append(r.Opts, nats.TLSHandshakeFirst())
		}
	}
	return r, nil
}

// tls builds the TLS option when anything asks for TLS: a tls:// URL, a TLS file or
// server name, or a TLS-first handshake.
func (o Options) tls() (nats.Option, bool, error) {
	on := o.CA != "" || o.Cert != "" || o.Key != "" || o.ServerName != "" || o.TLSFirst
	for _, u := range strings.Split(o.URL, ",") {
		on = on || strings.HasPrefix(strings.ToLower(strings.TrimSpace(u)), "tls://")
	}
	if !on {
		return nil, false, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CA != "" {
		pem, err := os.ReadFile(o.CA)
		if err != nil {
			return nil, false, fmt.Errorf("--nats-tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, false, fmt.Errorf("--nats-tls-ca %s: no PEM certificate in it", o.CA)
		}
	}
	switch {
	case o.Cert != "" && o.Key == "":
		return nil, false, errors.New("--nats-tls-cert needs --nats-tls-key")
	case o.Key != "" && o.Cert == "":
		return nil, false, errors.New("--nats-tls-key needs --nats-tls-cert")
	case o.Cert != "":
		for flag, f := range map[string]string{"--nats-tls-cert": o.Cert, "--nats-tls-key": o.Key} {
			if err := readable(flag, f); err != nil {
				return nil, false, err
			}
		}
		pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return nil, false, fmt.Errorf("--nats-tls-cert/--nats-tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return nats.Secure(cfg), true, nil
}

// merge fills the options' empty fields from a context. The context's credentials come
// only when the options carry none: one method, never a mix of two sources.
func (o Options) merge(c contextFile) Options {
	if o.URL == "" {
		o.URL = c.URL
	}
	if !o.hasAuth() {
		o.Creds, o.NKey, o.User, o.Password, o.Token = c.Creds, c.NKey, c.User, c.Password, c.Token
	}
	if o.CA == "" {
		o.CA = c.CA
	}
	if o.Cert == "" && o.Key == "" {
		o.Cert, o.Key = c.Cert, c.Key
	}
	o.TLSFirst = o.TLSFirst || c.TLSFirst
	return o
}

// readable checks that the file of a flag can be read, naming the flag if not.
func readable(flag, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	return f.Close()
}

// RedactURL returns the comma-separated URLs with any password replaced by "xxxxx"
// (and a token-only user info too): safe to log and to put in an error.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			if err != nil && strings.Contains(p, "@") {
				parts[i] = "[unparsable URL redacted]"
			}
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx") // a bare user info is a token
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}
