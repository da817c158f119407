package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/natsconn"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/provision"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// accountsConf is the roles file operators deploy: the test loads that very file.
const accountsConf = "../../deploy/nats/accounts.conf"

// secureWorld is a NATS server configured from deploy/nats/accounts.conf, with TLS
// and client certificates, and what a client needs to reach it.
type secureWorld struct {
	url       string
	passwords map[string]string // user -> password
	tls       natsconn.Options  // CA and client certificate
}

// startSecureNATS starts an in-process server with the accounts and users of
// deploy/nats/accounts.conf (passwords from the environment, as in production), TLS
// required and client certificates verified.
func startSecureNATS(t *testing.T) *secureWorld { return startSecureNATSWith(t, accountsConf) }

// startSecureNATSWith is startSecureNATS with the roles file conf.
func startSecureNATSWith(t *testing.T, conf string) *secureWorld {
	t.Helper()
	w := &secureWorld{passwords: map[string]string{}}
	for _, user := range []string{"admin", "producer", "worker", "collector", "upstream"} {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		w.passwords["mq-"+user] = hex.EncodeToString(b)
		t.Setenv("MQ_"+strings.ToUpper(user)+"_PASSWORD", w.passwords["mq-"+user])
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("load %s: %v", conf, err)
	}
	opts.ServerName, opts.Host, opts.Port = "mq-secure", "127.0.0.1", -1
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	dir := t.TempDir()
	ca, srvCert, srvKey, cliCert, cliKey := writeCerts(t, dir)
	opts.TLSConfig, err = server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: ca, Verify: true})
	if err != nil {
		t.Fatalf("server tls: %v", err)
	}
	opts.TLS, opts.TLSVerify, opts.TLSTimeout = true, true, 5
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("new nats server: %v", err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	w.url = "tls://" + srv.Addr().String()
	w.tls = natsconn.Options{CA: ca, Cert: cliCert, Key: cliKey}
	return w
}

// connect connects as user over TLS, the way every command does (natsconn, then
// queue.ConnectJetStream), logging into e's logs.
func (w *secureWorld) connect(t *testing.T, e *env, user string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	o := w.tls
	o.URL, o.User, o.Password = w.url, user, w.passwords[user]
	r, err := o.Resolve()
	if err != nil {
		t.Fatalf("resolve %s: %v", user, err)
	}
	nc, js, err := queue.ConnectJetStream(r.URL, user, e.log.With().Str("user", user).Logger(), r.Opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	if err := queue.WaitConnected(context.Background(), nc, 10*time.Second); err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	return nc, js
}

// secureSetup is a world where each component connects as its own role, and e.js is
// the admin's connection.
func secureSetup(t *testing.T) (*env, *secureWorld) {
	t.Helper()
	e := newEnv(t, llmsim.Config{Seed: 1})
	w := startSecureNATS(t)
	_, e.js = w.connect(t, e, "mq-admin")
	e.roles = map[string]jetstream.JetStream{}
	for _, role := range []string{"producer", "worker", "collector"} {
		_, e.roles[role] = w.connect(t, e, "mq-"+role)
	}
	return e, w
}

// Acceptance (issue 10): on a NATS with one user per role (deploy/nats/accounts.conf)
// and TLS, the admin provisions, then the producer, a worker and the collector, each
// with its own role, run a pipeline to the end without stream-admin rights; a client
// without credentials is refused, and each role is denied what it must not do.
func TestPipelineRunsWithLeastPrivilegeRoles(t *testing.T) {
	e, w := secureSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("a client without credentials is refused", func(t *testing.T) {
		r, err := natsconn.Options{URL: w.url, CA: w.tls.CA, Cert: w.tls.Cert, Key: w.tls.Key}.Resolve()
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(r.URL, r.Opts...)
		if err == nil {
			nc.Close()
			t.Fatal("an anonymous client connected")
		}
		if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("anonymous connect: %v, want an authorization violation", err)
		}
	})
	t.Run("a client without TLS is refused", func(t *testing.T) {
		nc, err := nats.Connect(strings.Replace(w.url, "tls://", "nats://", 1),
			nats.UserInfo("mq-admin", w.passwords["mq-admin"]), nats.Timeout(2*time.Second))
		if err == nil {
			nc.Close()
			t.Fatal("a client without TLS (and without a client certificate) connected")
		}
	})
	t.Run("a one-off process started before provision fails and names mqctl provision", func(t *testing.T) {
		err := queue.Ensure(ctx, e.jsFor("worker"), e.topo)
		if !errors.Is(err, queue.ErrNotAllowed) || !errors.Is(err, queue.ErrNotProvisioned) || !strings.Contains(err.Error(), "mqctl provision") {
			t.Fatalf("Ensure as mq-worker on an empty server = %v, want ErrNotAllowed and ErrNotProvisioned naming mqctl provision", err)
		}
	})

	// The long-running processes started before provision (a Helm install, where the
	// provision hook runs after the pods) wait for it, not ready, instead of exiting
	// into a crash loop; they start once the streams exist.
	// With the prompt cache on, so that the worker's role reads and writes mq_cache.
	p := e.pipeline(matrixPipeline(1, 2, "cache: {enabled: true}\n"))
	e.startWorker(workerOpts{})
	e.startCollector("")
	// An upstream system submits a run to the producer service (docs/WIRE.md).
	e.run("producer-service", func(ctx context.Context) error {
		return producer.Serve(ctx, e.jsFor("producer"), producer.ServiceConfig{Pipelines: map[string]*config.Pipeline{"assess": p}, Topology: e.topo}, e.log)
	})
	waitFor(t, 20*time.Second, "the worker, the collector and the producer service waiting for mqctl provision", func() bool {
		return strings.Count(e.logBuf.String(), "waiting for mqctl provision") >= 3
	})
	results, err := provision.Run(ctx, e.js, e.topo.Names, provision.Default(), provision.Options{})
	if err != nil {
		t.Fatalf("provision as mq-admin: %v", err)
	}
	for _, r := range results {
		if r.State != provision.Created {
			t.Fatalf("provision on an empty server: %s, want created", r)
		}
	}

	mark := len(e.logBuf.String()) // the logs of the runs start here
	rep, err := e.produce(p, csvRows(20, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce as mq-producer: %v", err)
	}
	upNC, upstream := w.connect(t, e, "mq-upstream")
	const submitted = "submitted-run"
	// The submitter subscribes to its run's events first (docs/WIRE.md).
	events, err := upNC.SubscribeSync(wire.StatusSubject(submitted))
	if err != nil {
		t.Fatal(err)
	}
	if err := upNC.Flush(); err != nil {
		t.Fatal(err)
	}
	pub := func(subject, body string) {
		t.Helper()
		if _, err := upstream.Publish(ctx, subject, []byte(body)); err != nil {
			t.Fatalf("publish %s as mq-upstream: %v", subject, err)
		}
	}
	pub(wire.SubmitOpenSubject("assess", submitted), `{"v":1}`)
	for i := range 5 {
		pub(wire.SubmitRowSubject("assess", submitted, i), fmt.Sprintf(`{"v":1,"data":{"id":"r%d","text":"row %d","fault":"","fault_query":""}}`, i, i))
	}
	pub(wire.SubmitSealSubject("assess", submitted), `{"v":1,"rows":5}`)

	for _, want := range []string{wire.SubmitAccepted, wire.SubmitSealed, wire.SubmitCompleted} {
		m, err := events.NextMsg(90 * time.Second)
		if err != nil {
			t.Fatalf("mq-upstream waiting for the %s event of its run: %v", want, err)
		}
		var ev wire.SubmitEvent
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.State != want {
			t.Fatalf("mq-upstream got event %s (%v), want state %s", m.Data, err, want)
		}
	}
	for run, rows := range map[string]int{rep.Run: 20, submitted: 5} {
		sum := e.waitSummary(run, 90*time.Second)
		if sum.Stats.RowsOK != rows || len(e.lines(run, sink.ResultsJSONL)) != rows {
			t.Fatalf("run %s: %d rows ok, %d result lines; want %d", run, sum.Stats.RowsOK, len(e.lines(run, sink.ResultsJSONL)), rows)
		}
	}
	if cache, err := e.js.KeyValue(ctx, wire.BucketCache); err != nil {
		t.Fatal(err)
	} else if st, err := cache.Status(ctx); err != nil || st.Values() != 50 {
		t.Fatalf("prompt cache: %v answers (%v), want the 50 of both runs stored by the worker's role", st.Values(), err)
	}
	// The collector cleans finished runs up (purges, consumer deletions): wait for it,
	// so that its permissions are exercised too.
	waitFor(t, 30*time.Second, "both runs purged from the bus", func() bool {
		for _, name := range []string{wire.StreamInput, wire.StreamResults, wire.StreamJobs, wire.StreamSubmit} {
			s, err := e.js.Stream(ctx, name)
			if err != nil || s.CachedInfo().State.Msgs != 0 {
				return false
			}
		}
		return true
	})
	for _, stop := range e.stopped {
		stop()
	}
	logs := e.logBuf.String()[mark:]
	if strings.Contains(strings.ToLower(logs), "permissions violation") {
		t.Fatalf("a role lacked a permission during the run:\n%s", grepLines(logs, "ermissions"))
	}
	if strings.Contains(logs, "job backlog not read") {
		t.Fatalf("the collector could not read the job backlog:\n%s", grepLines(logs, "backlog"))
	}
	if strings.Contains(logs, "differs from what multiquery would create") {
		t.Fatalf("a process found the provisioned topology different from its own:\n%s", grepLines(logs, "differs"))
	}

	jobs := jetstream.StreamConfig{Name: wire.StreamJobs, Subjects: []string{"jobs.>"}, Retention: jetstream.WorkQueuePolicy}
	for _, tt := range []struct {
		name, role, subject string
		call                func(ctx context.Context, js jetstream.JetStream) error
	}{
		{"the worker cannot create a stream", "worker", "$JS.API.STREAM.CREATE.MQ_EVIL", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MQ_EVIL", Subjects: []string{"evil.>"}})
			return err
		}},
		{"the worker cannot delete a stream", "worker", "$JS.API.STREAM.DELETE.MQ_JOBS", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, wire.StreamJobs)
		}},
		{"the producer cannot delete a stream", "producer", "$JS.API.STREAM.DELETE.MQ_INPUT", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, wire.StreamInput)
		}},
		{"the producer cannot publish a result", "producer", "results.r.0.q", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, "results.r.0.q", []byte(`{}`))
			return err
		}},
		{"the collector cannot change a stream's limits", "collector", "$JS.API.STREAM.UPDATE.MQ_JOBS", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.UpdateStream(ctx, jobs)
			return err
		}},
		{"the worker cannot publish jobs", "worker", "jobs.default.r.0.q", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, "jobs.default.r.0.q", []byte(`{}`))
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			js := e.jsFor(tt.role)
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if err := tt.call(cctx, js); err == nil {
				t.Fatalf("mq-%s was allowed %s", tt.role, tt.subject)
			}
			waitFor(t, 5*time.Second, "the server's permissions violation for "+tt.subject, func() bool { return queue.Denied(js, tt.subject) })
		})
	}
	t.Run("a user that may not look a stream up is refused, naming the permission", func(t *testing.T) {
		err := queue.Ensure(ctx, upstream, e.topo) // mq-upstream may look up only KV_mq_runs
		if !errors.Is(err, queue.ErrNotAllowed) || !strings.Contains(err.Error(), "$JS.API.STREAM.INFO.MQ_INPUT") {
			t.Fatalf("Ensure as mq-upstream = %v, want ErrNotAllowed naming $JS.API.STREAM.INFO.MQ_INPUT", err)
		}
	})
	for _, name := range []string{wire.StreamJobs, wire.StreamInput} {
		if _, err := e.js.Stream(ctx, name); err != nil {
			t.Fatalf("stream %s after the denied calls: %v", name, err)
		}
	}
}

// Acceptance 3: limits an operator set on the streams through the JetStream API survive
// every process's start and restart (each process only looks the streams up).
func TestOperatorLimitsSurviveProcessRestarts(t *testing.T) {
	e, _ := secureSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := provision.Run(ctx, e.js, e.topo.Names, provision.Default(), provision.Options{}); err != nil {
		t.Fatal(err)
	}
	set := func(name string, edit func(*jetstream.StreamConfig)) jetstream.StreamConfig {
		t.Helper()
		s, err := e.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		edit(&cfg)
		info, err := e.js.UpdateStream(ctx, cfg)
		if err != nil {
			t.Fatalf("operator update of %s: %v", name, err)
		}
		return info.CachedInfo().Config
	}
	want := map[string]jetstream.StreamConfig{
		wire.StreamJobs: set(wire.StreamJobs, func(c *jetstream.StreamConfig) {
			c.MaxBytes, c.MaxMsgs, c.MaxMsgSize = 64<<20, 50000, 1<<20
		}),
		wire.StreamAudit: set(wire.StreamAudit, func(c *jetstream.StreamConfig) { c.MaxAge, c.MaxBytes = time.Hour, 32<<20 }),
		wire.StreamResults: set(wire.StreamResults, func(c *jetstream.StreamConfig) {
			c.MaxBytes = 128 << 20
		}),
	}
	for round := range 2 { // start every process, stop them, start them again
		stopW := e.startWorker(workerOpts{})
		stopC := e.startCollector("")
		rep, err := e.produce(e.pipeline(matrixPipeline(1, 1, "")), csvRows(3, nil), input.CSV)
		if err != nil {
			t.Fatalf("round %d: produce: %v", round, err)
		}
		if sum := e.waitSummary(rep.Run, 60*time.Second); sum.Stats.RowsOK != 3 {
			t.Fatalf("round %d: %d rows ok, want 3", round, sum.Stats.RowsOK)
		}
		stopW()
		stopC()
		for name, w := range want {
			s, err := e.js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			got := s.CachedInfo().Config
			if got.MaxBytes != w.MaxBytes || got.MaxMsgs != w.MaxMsgs || got.MaxAge != w.MaxAge || got.MaxMsgSize != w.MaxMsgSize {
				t.Fatalf("round %d: %s limits (bytes %d, msgs %d, age %s, msg size %d) after the processes started, want the operator's (%d, %d, %s, %d)",
					round, name, got.MaxBytes, got.MaxMsgs, got.MaxAge, got.MaxMsgSize, w.MaxBytes, w.MaxMsgs, w.MaxAge, w.MaxMsgSize)
			}
		}
	}
}

// grepLines returns the lines of s containing sub (at most 20).
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && len(out) < 20 {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// writeCerts writes a CA, a server certificate for 127.0.0.1 and a client certificate,
// all signed by the CA, as PEM files in dir.
func writeCerts(t *testing.T, dir string) (ca, srvCert, srvKey, cliCert, cliKey string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mq test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	ca = writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", kb)
	}
	srvCert, srvKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	cliCert, cliKey = leaf("client", 3, x509.ExtKeyUsageClientAuth, nil)
	return ca, srvCert, srvKey, cliCert, cliKey
}

func writePEM(t *testing.T, dir, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
