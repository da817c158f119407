package local

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/input"
)

// A run whose deployment refuses its key (401: deployment-wide, the calls wait) says
// so in its progress, with the provider's status and code, and gives no ETA: before,
// the progress line only showed an ETA growing for ever.
func TestTheProgressOfARunWhoseKeyIsRefusedSaysItIsBlocked(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","code":"invalid_api_key"}}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	p := scorePipeline(t, dir, "m")
	deps := deploymentsAt(t, dir, srv.URL, "{start_rate: 200, min_rate: 50}")
	in := writeFile(t, dir, "rows.csv", "text\na\nb\nc\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var blocked *Snapshot
	cfg := Config{Pipeline: p, Deployments: deps, InputPath: in, Format: input.CSV, OutDir: filepath.Join(dir, "out"),
		DrainTimeout: time.Second, ProgressEvery: 50 * time.Millisecond,
		Progress: func(s Snapshot) {
			mu.Lock()
			defer mu.Unlock()
			if s.Blocked != "" && blocked == nil {
				blocked = &s
				cancel()
			}
		}}
	_, _ = Run(ctx, cfg, zerolog.Nop())
	mu.Lock()
	defer mu.Unlock()
	if blocked == nil {
		t.Fatal("no progress snapshot said the run was blocked")
	}
	if !strings.Contains(blocked.Blocked, "deployment default: status 401 invalid_api_key") {
		t.Errorf("Blocked = %q, want the deployment, status and code", blocked.Blocked)
	}
	if blocked.ETA != 0 {
		t.Errorf("a blocked run's ETA = %s, want none", blocked.ETA)
	}
}
