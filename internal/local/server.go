package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/queue"
)

// serverName is the embedded server's name, the same on every start so that a rerun
// finds its JetStream store as it left it.
const serverName = "multiquery-local"

// embedded is the in-process nats-server of a local run: JetStream with its store in a
// directory, no listener (clients connect in-process), its logs through zerolog.
type embedded struct {
	srv  *server.Server
	lock *os.File
}

// startServer locks dir (one local run per store at a time) and starts the server with
// its store there.
func startServer(dir string, log zerolog.Logger) (*embedded, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: serverName,
		JetStream:  true,
		StoreDir:   dir,
		DontListen: true,
		NoSigs:     true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	srv.SetLoggerV2(natsLogger{log.With().Str("component", "nats-server").Logger()}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		lock.Close()
		return nil, errors.New("embedded nats-server: not ready after 30s")
	}
	return &embedded{srv: srv, lock: lock}, nil
}

// connect opens an in-process client connection and its JetStream context.
func (e *embedded) connect(name string, log zerolog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	return queue.ConnectJetStream("", name, log, nats.InProcessServer(e.srv))
}

// shutdown stops the server, waits for it, and releases the store.
func (e *embedded) shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.lock.Close()
}

// lockDir takes an exclusive lock on dir/multiquery.lock, held until the file is
// closed (or the process ends, kill -9 included).
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "multiquery.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("store %s is in use by another multiquery run", dir)
		}
		return nil, fmt.Errorf("store lock %s: %w", path, err)
	}
	return f, nil
}

// natsLogger routes the embedded server's logs through zerolog: its notices (startup
// banners, mostly) at debug level, warnings and errors as such.
type natsLogger struct{ log zerolog.Logger }

var _ server.Logger = natsLogger{}

func (l natsLogger) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l natsLogger) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l natsLogger) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l natsLogger) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l natsLogger) Debugf(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
func (l natsLogger) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
