package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// buildBinaries builds the real processes the way `make build` does.
func buildBinaries(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range []string{"./cmd/producer", "./cmd/worker", "./cmd/collector", "./cmd/llmsim", "github.com/nats-io/nats-server/v2"} {
		cmd := exec.Command("go", "build", "-o", bin+"/", pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "nats-server")); err != nil {
		t.Fatalf("nats-server not built: %v", err)
	}
	return bin
}

// The short variant of `make chaos`: real processes, kill -9 of a worker, the collector
// and nats-server mid-run; every row must come out exactly once and never partially.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildBinaries(t)
	rep, err := Chaos(context.Background(), ChaosConfig{Bin: bin, Dir: t.TempDir(), Rows: 300, Queries: 2, Workers: 2, Seed: 7,
		KillEvery: 2 * time.Second, CollectorKills: 1, NATSKills: 1,
		Faults: []string{"429=1", "503=1", "500=1", "invalid_json=1", "missing_field=1"}, Timeout: 3 * time.Minute, Log: testWriter{t}})
	if err != nil {
		t.Fatalf("chaos: %v (%s)", err, rep)
	}
	t.Log(rep)
	if err := CheckChaos(rep); err != nil {
		t.Fatal(err)
	}
	if rep.CollectorKills != 1 || rep.NATSKills != 1 {
		t.Fatalf("kills: collector %d, nats %d: the run ended before the faults were injected", rep.CollectorKills, rep.NATSKills)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// Issue 5, acceptance 4: two collectors, the active one kill -9'd mid-run: the standby
// takes the lease over and the output has no gap and no duplicate.
func TestCollectorTakeover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildBinaries(t)
	rep, err := CollectorTakeover(context.Background(), bin, t.TempDir(), 600)
	if err != nil {
		t.Fatalf("takeover: %v (%s)", err, rep.ChaosReport)
	}
	t.Logf("takeover after %s: %s", rep.Takeover, rep.ChaosReport)
	if err := CheckChaos(rep.ChaosReport); err != nil {
		t.Fatal(err)
	}
}
