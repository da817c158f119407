package llmsim

import (
	"context"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"
)

// ShutdownGrace is how long Serve lets in-flight answers finish once its
// context ends; requests held by the hang fault are released at once.
const ShutdownGrace = 5 * time.Second

// Serve serves Handler on ln until ctx ends, then shuts down: it stops
// accepting, lets in-flight answers finish for up to ShutdownGrace, aborts
// the rest, and returns only after every handler has returned. It returns
// nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          stdlog.New(s.log.With().Str("source", "net/http").Logger(), "", 0),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	select {
	case err := <-errc:
		cancelBase()
		s.stopHanging()
		_ = hs.Close()
		s.handlers.Wait()
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	s.stopHanging()
	shCtx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	err := hs.Shutdown(shCtx)
	cancel()
	cancelBase()
	_ = hs.Close()
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	s.handlers.Wait()
	if err != nil {
		return fmt.Errorf("shutdown %s: %w", ln.Addr(), err)
	}
	return nil
}

// Start is a convenience for tests: it serves a new Server on a random
// 127.0.0.1 port. baseURL is like "http://127.0.0.1:PORT" (no trailing
// slash); stop shuts the server down, waits for it and may be called more
// than once.
func Start(cfg Config, log zerolog.Logger) (srv *Server, baseURL string, stop func(), err error) {
	srv, err = New(cfg, log)
	if err != nil {
		return nil, "", nil, err
	}
	baseURL, stop, err = srv.serveLocal()
	if err != nil {
		return nil, "", nil, err
	}
	return srv, baseURL, stop, nil
}

func (s *Server) serveLocal() (baseURL string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Serve(ctx, ln); err != nil {
			s.log.Error().Err(err).Msg("serve")
		}
	}()
	stop = func() {
		cancel()
		<-done
	}
	return "http://" + ln.Addr().String(), stop, nil
}
