package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
		// 200 ms calls over 2 x 16 slots: at most ~160 calls/s, so the run outlasts the
		// nats-server kill at 12 % and the collector kill at 30 % however fast the
		// pipeline is (2.7 % of the rows a progress check at most).
		Latency:   200 * time.Millisecond,
		KillEvery: 2 * time.Second, CollectorKills: 1, NATSKills: 1,
		Faults: []string{"429=1", "503=1", "500=1", "invalid_json=1", "missing_field=1"}, Timeout: 3 * time.Minute, Log: testWriter{t}})
	if err != nil {
		t.Fatalf("chaos: %v (%s)", err, rep)
	}
	t.Log(rep)
	if err := CheckChaos(rep); err != nil {
		t.Fatal(err)
	}
	if rep.CollectorKills+rep.CollectorRestarts < 1 || rep.NATSKills != 1 {
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

// Issue 8, item 2: two collectors on one --out with a 2 s lease; the active one is
// stopped (SIGSTOP) well past the TTL, the standby takes over, then the old one resumes
// while the new leader is stopped: the old one must write no row, no checkpoint, no
// status and delete no message before it steps down; the run then completes with no
// row lost or doubled and a checkpoint that never went back.
func TestStaleCollectorIsFencedAfterSIGSTOP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildBinaries(t)
	dir := t.TempDir()
	rep, err := CollectorFencing(context.Background(), bin, dir, 800, 2*time.Second)
	if err != nil {
		logs(t, dir)
		t.Fatalf("fencing: %v (%s)", err, rep.ChaosReport)
	}
	t.Logf("stale %s stopped %s, leader %s (restarted %d times): %s", rep.Stale, rep.Stopped.Round(time.Millisecond), rep.Leader, rep.Restarts, rep.ChaosReport)
	if v := rep.Violations(); len(v) > 0 {
		logs(t, dir)
		t.Fatalf("promises broken:\n%s", strings.Join(v, "\n"))
	}
}

// logs prints the collectors' logs of a failed real-process test.
func logs(t *testing.T, dir string) {
	t.Helper()
	for _, n := range []string{"collector-a.log", "collector-b.log"} {
		if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil {
			t.Logf("--- %s (last 6000 bytes)\n%s", n, tail(b, 6000))
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
