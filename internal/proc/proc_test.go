package proc

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/rs/zerolog"
)

// --ops-addr left at its default may fall back to a free port when taken; given, even
// with the default's value, it is the operator's choice and stays strict.
func TestOpsAddrFallsBackOnlyWhenNotGiven(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		addr     string
		fallback bool
	}{
		{nil, ":9090", true},
		{[]string{"--ops-addr", ":9090"}, ":9090", false},
		{[]string{"--ops-addr", "127.0.0.1:9190"}, "127.0.0.1:9190", false},
		{[]string{"--ops-addr", ""}, "", false},
	} {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var p Flags
		p.Register(fs, ":9090", "address of /metrics")
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		if p.OpsAddr != tt.addr || !p.opsAddrSet != tt.fallback {
			t.Errorf("%q: addr %q, fallback %v; want %q, %v", tt.args, p.OpsAddr, !p.opsAddrSet, tt.addr, tt.fallback)
		}
	}
}

// stopAt is a component that works until its context ends, then takes drainFor.
type stopAt struct{ drainFor time.Duration }

func (c stopAt) Run(ctx context.Context) error {
	<-ctx.Done()
	time.Sleep(c.drainFor)
	return nil
}

func (stopAt) Started() bool { return true }

// An operator who sends SIGTERM sees in the log that the process heard it and is
// draining (a collector's drain can take a while), then that it stopped cleanly.
func TestServeLogsTheShutdownItWasAskedFor(t *testing.T) {
	nc, _ := natstest.Start(t).Connect(t)
	var buf syncBuffer
	log := zerolog.New(&buf)
	ctx, cancel := context.WithCancel(context.Background())
	p := Flags{OpsAddr: "127.0.0.1:0"}
	done := make(chan int)
	go func() { done <- p.Serve(ctx, "collector", nc, stopAt{drainFor: 200 * time.Millisecond}, log) }()
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(buf.String(), "shutdown") {
		t.Fatalf("logged a shutdown nobody asked for:\n%s", buf.String())
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), `"message":"shutdown requested: collector drains and exits"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown line while draining:\n%s", buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if !strings.Contains(buf.String(), `"message":"collector stopped cleanly"`) {
		t.Fatalf("no line for the clean stop:\n%s", buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
