package natsconn

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// files writes the named files (content "x") in a temp dir and returns their paths.
func files(t *testing.T, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	out := map[string]string{}
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		out[n] = p
	}
	return out
}

func TestResolveRefusesWhatCannotWork(t *testing.T) {
	t.Parallel()
	f := files(t, "a.creds", "seed.nk")
	tests := []struct {
		name string
		o    Options
		want string // in the error
	}{
		{"two authentication methods", Options{Creds: f["a.creds"], Token: "t"}, "conflicting"},
		{"user and token", Options{User: "u", Password: "p", Token: "t"}, "conflicting"},
		{"a password without a user", Options{Password: "p"}, "--nats-password needs --nats-user"},
		{"an unreadable creds file", Options{Creds: "/nonexistent/a.creds"}, "--nats-creds"},
		{"an unreadable nkey file", Options{NKey: "/nonexistent/seed.nk"}, "--nats-nkey"},
		{"an nkey file without a seed", Options{NKey: f["seed.nk"]}, "--nats-nkey"},
		{"an unreadable CA", Options{CA: "/nonexistent/ca.pem"}, "--nats-tls-ca"},
		{"a CA file without a certificate", Options{CA: f["a.creds"]}, "no PEM certificate"},
		{"a client certificate without its key", Options{Cert: f["a.creds"]}, "--nats-tls-cert needs --nats-tls-key"},
		{"a key without its certificate", Options{Key: f["a.creds"]}, "--nats-tls-key needs --nats-tls-cert"},
		{"an unknown context", Options{Context: "nope", env: mapEnv{"XDG_CONFIG_HOME": t.TempDir()}.get}, "--context nope"},
		{"a context name with a path in it", Options{Context: "../x"}, "not a context name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.o.Resolve()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Resolve() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

type mapEnv map[string]string

func (m mapEnv) get(k string) string { return m[k] }

// writeContext writes a nats CLI context under $XDG_CONFIG_HOME/nats/context.
func writeContext(t *testing.T, xdg, name, body string) {
	t.Helper()
	dir := filepath.Join(xdg, "nats", "context")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestContextsFlagsAndEnvironment(t *testing.T) {
	t.Parallel()
	xdg := t.TempDir()
	f := files(t, "ctx.creds", "flag.creds")
	writeContext(t, xdg, "prod", `{"description":"prod","url":"nats://ctx:4222","creds":"`+f["ctx.creds"]+`","color_scheme":"blue"}`)
	writeContext(t, xdg, "domain", `{"url":"nats://x:4222","jetstream_domain":"hub"}`)
	writeContext(t, xdg, "userpass", `{"url":"tls://ctx:4222","user":"u","password":"p"}`)

	parse := func(t *testing.T, env mapEnv, args ...string) (Resolved, error) {
		t.Helper()
		env["XDG_CONFIG_HOME"] = xdg
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		var o Options
		o.Register(fs, env.get)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return o.Resolve()
	}
	t.Run("a context gives the URL and the credentials", func(t *testing.T) {
		r, err := parse(t, mapEnv{}, "--context", "prod")
		if err != nil || r.URL != "nats://ctx:4222" || r.Auth != "creds" || r.TLS {
			t.Fatalf("Resolve = %+v, %v; want the context's URL and creds, no TLS", r, err)
		}
	})
	t.Run("the context can come from NATS_CONTEXT", func(t *testing.T) {
		r, err := parse(t, mapEnv{"NATS_CONTEXT": "prod"})
		if err != nil || r.URL != "nats://ctx:4222" || r.Auth != "creds" {
			t.Fatalf("Resolve = %+v, %v; want the context's settings", r, err)
		}
	})
	t.Run("flags override the context's URL and credentials", func(t *testing.T) {
		r, err := parse(t, mapEnv{}, "--context", "prod", "--nats", "nats://flag:4222", "--nats-token", "tok")
		if err != nil || r.URL != "nats://flag:4222" || r.Auth != "token" {
			t.Fatalf("Resolve = %+v, %v; want the flag's URL and token (no conflict with the context's creds)", r, err)
		}
	})
	t.Run("a flag's credentials win over the environment's", func(t *testing.T) {
		r, err := parse(t, mapEnv{"NATS_USER": "envuser", "NATS_PASSWORD": "envpw"}, "--nats-creds", f["flag.creds"])
		if err != nil || r.Auth != "creds" {
			t.Fatalf("Resolve = %+v, %v; want the flag's creds", r, err)
		}
	})
	t.Run("the environment fills what no flag gives", func(t *testing.T) {
		r, err := parse(t, mapEnv{"NATS_URL": "nats://env:4222", "NATS_USER": "u", "NATS_PASSWORD": "p"})
		if err != nil || r.URL != "nats://env:4222" || r.Auth != "user" {
			t.Fatalf("Resolve = %+v, %v; want the environment's URL and user", r, err)
		}
	})
	t.Run("a tls URL turns TLS on", func(t *testing.T) {
		r, err := parse(t, mapEnv{}, "--context", "userpass")
		if err != nil || !r.TLS || r.Auth != "user" {
			t.Fatalf("Resolve = %+v, %v; want TLS and user", r, err)
		}
	})
	t.Run("a context with a setting multiquery cannot honour is refused", func(t *testing.T) {
		if _, err := parse(t, mapEnv{}, "--context", "domain"); err == nil || !strings.Contains(err.Error(), "jetstream_domain") {
			t.Fatalf("Resolve error = %v, want one naming jetstream_domain", err)
		}
	})
	t.Run("without anything it is the local server without credentials", func(t *testing.T) {
		r, err := parse(t, mapEnv{})
		if err != nil || r.URL != DefaultURL || r.Auth != "none" || r.TLS || len(r.Opts) != 0 {
			t.Fatalf("Resolve = %+v, %v", r, err)
		}
	})
}

func TestNoSecretInUsageOrDescription(t *testing.T) {
	t.Parallel()
	env := mapEnv{"NATS_PASSWORD": "s3cret-pw", "NATS_USER": "u", "NATS_TOKEN": "", "NATS_URL": "nats://u:s3cret-url@h:4222"}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var usage strings.Builder
	fs.SetOutput(&usage)
	var o Options
	o.Register(fs, env.get)
	fs.PrintDefaults()
	r, err := o.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	for what, s := range map[string]string{"usage": usage.String(), "Describe": r.Describe()} {
		if strings.Contains(s, "s3cret") {
			t.Fatalf("%s shows a secret: %s", what, s)
		}
	}
	if got := RedactURL("nats://tok@a:4222,nats://u:pw@b:4222,nats://c:4222"); got != "nats://xxxxx@a:4222,nats://u:xxxxx@b:4222,nats://c:4222" {
		t.Fatalf("RedactURL = %s", got)
	}
}
