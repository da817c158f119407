package bench

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// FencingReport is the outcome of the stalled-collector scenario.
type FencingReport struct {
	ChaosReport
	Stale, Leader string
	Stopped       time.Duration // how long the stale collector was stopped
	// What the stale collector changed between its SIGCONT and its exit, while the new
	// leader was stopped: each must be empty.
	StaleSideEffects []string
	// Checkpoint regressions seen at any time (next or epoch going down).
	Regressions []string
	Restarts    int // times the new leader had to be restarted (it may be fenced itself)
}

// Violations lists what broke the promises.
func (r FencingReport) Violations() []string {
	v := r.ChaosReport.Violations()
	v = append(v, r.StaleSideEffects...)
	return append(v, r.Regressions...)
}

// CollectorFencing runs two collector processes on one output directory with a short
// lease TTL, stops the active one (SIGSTOP) until the standby has taken the lease over
// and written rows, then stops the new leader and resumes the old one: the old one
// must change nothing (files, checkpoint, run status, stream messages) before it exits.
// Then the new leader resumes (or, fenced itself, is restarted) and finishes the run:
// no row lost or doubled, the checkpoint never regressed.
func CollectorFencing(ctx context.Context, bin, dir string, rows int, ttl time.Duration) (FencingReport, error) {
	var rep FencingReport
	rep.RowsIn = rows
	s, err := StartStack(bin, dir, []string{"--latency", "10ms"})
	if err != nil {
		return rep, err
	}
	defer s.Stop()
	cfg, err := s.WriteWorkerConfig("    throttle: {start_rate: 60, min_rate: 30, max_rate: 60}\n")
	if err != nil {
		return rep, err
	}
	if err := s.StartWorker(cfg, "--concurrency", "8"); err != nil {
		return rep, err
	}
	outDir := filepath.Join(dir, "out")
	for _, name := range []string{"collector-a", "collector-b"} {
		if _, err := s.start(name, "--out", outDir, "--ops-addr", "", "--name", name, "--lease-ttl", ttl.String()); err != nil {
			return rep, err
		}
	}
	nc, js, err := queue.ConnectJetStream(s.NATSURL, "bench-fencing", zerolog.Nop())
	if err != nil {
		return rep, err
	}
	defer nc.Close()
	pipeline, input, err := writeInput(dir, chaosPipeline(2), rows)
	if err != nil {
		return rep, err
	}
	run := fmt.Sprintf("fencing-%d", time.Now().UnixNano()%1e9)
	prodErr := make(chan error, 1)
	go func() { _, err := s.ProduceRun(ctx, pipeline, input, run); prodErr <- err }()
	out := filepath.Join(outDir, run)

	// Watch the checkpoint for the whole run: next and epoch never go down.
	mon := &checkpointMonitor{path: filepath.Join(out, sink.Checkpoint)}
	mctx, stopMon := context.WithCancel(ctx)
	var mwg sync.WaitGroup
	mwg.Add(1)
	go func() { defer mwg.Done(); mon.watch(mctx) }()
	defer func() { stopMon(); mwg.Wait() }()

	if err := poll(ctx, 3*time.Minute, "a quarter of the rows written", func() bool {
		return countRows(out) >= rows/4
	}); err != nil {
		return rep, err
	}
	kv, err := js.KeyValue(ctx, lease.Bucket)
	if err != nil {
		return rep, fmt.Errorf("open the lease bucket: %w", err)
	}
	holder := func() string {
		e, err := kv.Get(ctx, "collector")
		if err != nil {
			return ""
		}
		return string(e.Value())
	}
	rep.Stale = holder()
	switch rep.Stale {
	case "collector-a":
		rep.Leader = "collector-b"
	case "collector-b":
		rep.Leader = "collector-a"
	default:
		return rep, fmt.Errorf("lease holder %q is none of the collectors", rep.Stale)
	}
	if err := s.sig(rep.Stale, syscall.SIGSTOP); err != nil {
		return rep, err
	}
	stopped := time.Now()
	atStop := readNext(filepath.Join(out, sink.Checkpoint))
	// The standby takes over once the lease expired, and writes rows of its own.
	if err := poll(ctx, time.Minute, "the standby taking the lease over", func() bool { return holder() == rep.Leader }); err != nil {
		return rep, err
	}
	if err := poll(ctx, time.Minute, "the new leader writing rows", func() bool {
		return readNext(filepath.Join(out, sink.Checkpoint)) >= atStop+10
	}); err != nil {
		return rep, err
	}
	// Wide margin: the stale one stays stopped at least three TTLs.
	for time.Since(stopped) < 3*ttl {
		time.Sleep(50 * time.Millisecond)
	}
	// Freeze the new leader, so that whatever changes now is the stale one's doing.
	if err := s.sig(rep.Leader, syscall.SIGSTOP); err != nil {
		return rep, err
	}
	before, err := snapshot(ctx, js, out, run)
	if err != nil {
		return rep, err
	}
	if err := s.sig(rep.Stale, syscall.SIGCONT); err != nil {
		return rep, err
	}
	rep.Stopped = time.Since(stopped)
	if err := poll(ctx, 30*time.Second, "the stale collector stepping down (exit)", func() bool { return s.Exited(rep.Stale) }); err != nil {
		rep.StaleSideEffects = append(rep.StaleSideEffects, "the stale collector kept running after SIGCONT")
	}
	after, err := snapshot(ctx, js, out, run)
	if err != nil {
		return rep, err
	}
	rep.StaleSideEffects = append(rep.StaleSideEffects, before.diff(after)...)
	if err := s.sig(rep.Leader, syscall.SIGCONT); err != nil {
		return rep, err
	}
	// As an orchestrator would: restart a collector that exited (the new leader may have
	// been fenced itself while stopped).
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	for {
		if _, err := os.Stat(filepath.Join(out, sink.Summary)); err == nil {
			break
		}
		if wctx.Err() != nil {
			return rep, fmt.Errorf("run %s not complete (%d of %d rows out): %w", run, countRows(out), rows, wctx.Err())
		}
		if s.Exited(rep.Leader) {
			rep.Restarts++
			if err := s.Restart(rep.Leader); err != nil {
				return rep, err
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := <-prodErr; err != nil {
		return rep, err
	}
	stopMon()
	mwg.Wait()
	rep.Regressions = mon.regressions()
	return rep, checkRows(out, rows, 2, &rep.ChaosReport)
}

func (s *Stack) sig(name string, sig syscall.Signal) error {
	p := s.byName[name]
	if p == nil {
		return fmt.Errorf("no process %s", name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, name, err)
	}
	return nil
}

func poll(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("waited %s for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func countRows(out string) int {
	a, _ := sink.CountLines(filepath.Join(out, sink.ResultsJSONL))
	b, _ := sink.CountLines(filepath.Join(out, sink.ErrorsJSONL))
	return a + b
}

type cpProbe struct {
	Next  int    `json:"next"`
	Epoch uint64 `json:"lease_epoch"`
}

func readNext(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	var cp cpProbe
	if json.Unmarshal(b, &cp) != nil {
		return -1
	}
	return cp.Next
}

// checkpointMonitor reads a checkpoint file often and records every regression.
type checkpointMonitor struct {
	path string
	mu   sync.Mutex
	seen []string
}

func (m *checkpointMonitor) watch(ctx context.Context) {
	var last cpProbe
	for ctx.Err() == nil {
		b, err := os.ReadFile(m.path)
		var cp cpProbe
		if err == nil && json.Unmarshal(b, &cp) == nil {
			if cp.Next < last.Next || cp.Epoch < last.Epoch {
				m.mu.Lock()
				m.seen = append(m.seen, fmt.Sprintf("checkpoint regressed: next %d -> %d, epoch %d -> %d", last.Next, cp.Next, last.Epoch, cp.Epoch))
				m.mu.Unlock()
			}
			last = cp
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (m *checkpointMonitor) regressions() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.seen...)
}

// state is what a collector's side effects can change.
type state struct {
	files      map[string][32]byte
	statusRev  uint64
	streamHead map[string][2]uint64 // first sequence, deleted count
}

func snapshot(ctx context.Context, js jetstream.JetStream, out, run string) (state, error) {
	st := state{files: map[string][32]byte{}, streamHead: map[string][2]uint64{}}
	for _, n := range []string{sink.ResultsJSONL, sink.ErrorsJSONL, sink.Checkpoint, sink.Summary} {
		b, err := os.ReadFile(filepath.Join(out, n))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return st, err
		}
		st.files[n] = sha256.Sum256(b)
	}
	kv, err := js.KeyValue(ctx, wire.BucketRuns)
	if err != nil {
		return st, err
	}
	if e, err := kv.Get(ctx, run); err == nil {
		st.statusRev = e.Revision()
	}
	for _, name := range []string{wire.StreamInput, wire.StreamResults} {
		str, err := js.Stream(ctx, name)
		if err != nil {
			return st, err
		}
		info, err := str.Info(ctx)
		if err != nil {
			return st, err
		}
		st.streamHead[name] = [2]uint64{info.State.FirstSeq, uint64(info.State.NumDeleted)}
	}
	return st, nil
}

func (a state) diff(b state) []string {
	var d []string
	for n, h := range a.files {
		if h != b.files[n] {
			d = append(d, "the stale collector changed "+n)
		}
	}
	if a.statusRev != b.statusRev {
		d = append(d, fmt.Sprintf("the stale collector wrote the run status (revision %d -> %d)", a.statusRev, b.statusRev))
	}
	for n, h := range a.streamHead {
		if h != b.streamHead[n] {
			d = append(d, fmt.Sprintf("the stale collector deleted messages of %s (first seq, deleted: %v -> %v)", n, h, b.streamHead[n]))
		}
	}
	return d
}
