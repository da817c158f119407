package ops_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/ops"
)

// lockedBuffer collects log lines from the server's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var servingOn = regexp.MustCompile(`"addr":"([^"]+)"[^\n]*ops endpoints`)

// A second process on one host with the default ops address (a second worker on
// :9090) serves its endpoints on a free port and logs it; an address the operator
// chose stays strict: taken, the process fails naming it.
func TestATakenOpsAddress(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()

	t.Run("the default falls back to a free port, logged", func(t *testing.T) {
		var logs lockedBuffer
		s := ops.NewServer(addr, zerolog.New(&logs))
		s.SetReady(true)
		s.FallBackWhenTaken()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		var got string
		deadline := time.Now().Add(10 * time.Second)
		for got == "" && time.Now().Before(deadline) {
			if m := servingOn.FindStringSubmatch(logs.String()); m != nil {
				got = m[1]
			}
			select {
			case err := <-done:
				t.Fatalf("Run returned %v with the address taken, want it to serve on a free port", err)
			case <-time.After(10 * time.Millisecond):
			}
		}
		if got == "" || got == addr {
			t.Fatalf("serving on %q (logs %s), want a free port other than %s", got, logs.String(), addr)
		}
		if !strings.Contains(logs.String(), `"taken":"`+addr+`"`) {
			t.Fatalf("no log line names the taken address %s: %s", addr, logs.String())
		}
		resp, err := http.Get("http://" + got + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/healthz on the fallback port: %d", resp.StatusCode)
		}
	})
	t.Run("an address the operator chose fails when taken, naming it", func(t *testing.T) {
		s := ops.NewServer(addr, zerolog.Nop())
		err := s.Run(context.Background())
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), addr) {
			t.Fatalf("Run = %v, want EADDRINUSE naming %s", err, addr)
		}
	})
}
