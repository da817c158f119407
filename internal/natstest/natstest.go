// Package natstest starts real in-process NATS servers with JetStream for tests:
// loopback only, a random port, the store in t.TempDir(), shut down by t.Cleanup.
// Restart keeps the same port, server name and store so clients reconnect.
package natstest

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// Server is a running in-process nats-server.
type Server struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
}

// Start runs a JetStream-enabled server on 127.0.0.1 with its store in a temp dir.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, nil)
}

// StartWith is Start with the server's options changed by edit (nil: none), e.g. a
// smaller max_payload.
func StartWith(t testing.TB, edit func(*server.Options)) *Server {
	t.Helper()
	opts := server.Options{
		ServerName: "mq-test",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
	if edit != nil {
		edit(&opts)
	}
	s := &Server{t: t, opts: opts}
	s.start()
	// The first start picked a random port: keep it for restarts.
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("new nats server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("nats server not ready")
	}
	s.srv = srv
}

// URL is the client URL.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Shutdown stops the server and waits for it; safe to call twice.
func (s *Server) Shutdown() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart stops the server and starts it again on the same port, name and store.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.start()
}

// Connect returns a client connection closed at cleanup, and its JetStream context.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// LeakOptions are the goleak options for a package whose tests run in-process servers:
// the server's own goroutines and pollers that outlive a test's shutdown by a moment,
// and one goroutine of nats.go's object store Put (v1.55.0): Put makes a JetStream
// context of its own whose reconnect listener, started by the first publish, blocks for
// good on a nil channel when Put's cleanup runs before it is scheduled.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreAnyFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"),
	}
}
