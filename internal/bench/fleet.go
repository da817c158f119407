package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/multiquery/multiquery/internal/wire"
)

// Group is Count worker processes of Slots slots (--concurrency) each.
type Group struct{ Count, Slots int }

// Shape is a fleet of one or more groups: "16x4", "4x64+28x4".
type Shape []Group

// ParseShape reads "W" (W workers x defSlots slots), "WxS" (W workers x S slots), or
// such groups joined by "+".
func ParseShape(s string, defSlots int) (Shape, error) {
	var sh Shape
	for _, part := range strings.Split(strings.TrimSpace(s), "+") {
		w, slots, hasSlots := strings.Cut(strings.TrimSpace(part), "x")
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("fleet %q: %q is not W or WxS with W >= 1", s, part)
		}
		g := Group{Count: n, Slots: defSlots}
		if hasSlots {
			if g.Slots, err = strconv.Atoi(slots); err != nil || g.Slots < 1 {
				return nil, fmt.Errorf("fleet %q: %q is not WxS with S >= 1", s, part)
			}
		}
		sh = append(sh, g)
	}
	return sh, nil
}

// ParseShapes reads a comma-separated list of shapes.
func ParseShapes(list string, defSlots int) ([]Shape, error) {
	var out []Shape
	for _, f := range strings.Split(list, ",") {
		sh, err := ParseShape(f, defSlots)
		if err != nil {
			return nil, err
		}
		out = append(out, sh)
	}
	return out, nil
}

// Workers is the number of worker processes.
func (s Shape) Workers() int {
	n := 0
	for _, g := range s {
		n += g.Count
	}
	return n
}

// Slots is the fleet's total of slots.
func (s Shape) Slots() int {
	n := 0
	for _, g := range s {
		n += g.Count * g.Slots
	}
	return n
}

func (s Shape) String() string {
	parts := make([]string, len(s))
	for i, g := range s {
		parts[i] = fmt.Sprintf("%dx%d", g.Count, g.Slots)
	}
	return strings.Join(parts, "+")
}

// startWorker starts one worker process and returns its name.
func (s *Stack) startWorker(cfg string, args ...string) (string, error) {
	name := fmt.Sprintf("worker-%d", len(s.workers)+1)
	return name, s.StartWorker(cfg, args...)
}

// startFleet starts the shape's workers in order, each with args and its group's
// --concurrency, and returns their names.
func (s *Stack) startFleet(cfg string, sh Shape, args ...string) ([]string, error) {
	var names []string
	for _, g := range sh {
		for range g.Count {
			name, err := s.startWorker(cfg, append(append([]string(nil), args...), "--concurrency", strconv.Itoa(g.Slots))...)
			if err != nil {
				return names, fmt.Errorf("start %s of %s: %w", name, sh, err)
			}
			names = append(names, name)
		}
	}
	return names, nil
}

func (s *Stack) pid(name string) int {
	if p := s.byName[name]; p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// ThrottleSubjects are the fleet throttle's core-NATS subjects (signals and heartbeats)
// of the benchmarked deployment (the default names: the bench clears MQ_PREFIX for the
// processes it starts).
var ThrottleSubjects = wire.Names{}.ThrottleSubjects()

// throttleWatch counts the fleet throttle's traffic on core NATS and remembers the
// members heard in heartbeats. Each subscriber gets every message once, so the count
// is the published rate.
type throttleWatch struct {
	nc          *nats.Conn
	stop        func() bool
	msgs, bytes atomic.Int64
	mu          sync.Mutex
	members     map[string]time.Time // heartbeat member id -> first heard
}

// watchThrottle subscribes to the stack's throttle subjects until ctx ends or Close.
func watchThrottle(ctx context.Context, url string) (*throttleWatch, error) {
	nc, err := nats.Connect(url, nats.Name("mqbench-throttle-watch"))
	if err != nil {
		return nil, fmt.Errorf("connect the throttle watch to %s: %w", url, err)
	}
	w := &throttleWatch{nc: nc, members: map[string]time.Time{}}
	if _, err := nc.Subscribe(ThrottleSubjects, w.onMsg); err != nil {
		nc.Close()
		return nil, fmt.Errorf("subscribe %s: %w", ThrottleSubjects, err)
	}
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("flush the %s subscription: %w", ThrottleSubjects, err)
	}
	w.stop = context.AfterFunc(ctx, nc.Close)
	return w, nil
}

// Close ends the subscription.
func (w *throttleWatch) Close() {
	w.stop()
	w.nc.Close()
}

func (w *throttleWatch) onMsg(m *nats.Msg) {
	w.msgs.Add(1)
	w.bytes.Add(int64(len(m.Data)))
	if !strings.HasSuffix(m.Subject, ".hb") {
		return
	}
	var hb struct {
		Member string `json:"member"`
	}
	if json.Unmarshal(m.Data, &hb) != nil {
		return
	}
	w.mu.Lock()
	if _, ok := w.members[hb.Member]; !ok {
		w.members[hb.Member] = time.Now()
	}
	w.mu.Unlock()
}

// heard reports whether the named worker has sent a heartbeat (its member ids are
// "<name>-<random>").
func (w *throttleWatch) heard(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id := range w.members {
		if strings.HasPrefix(id, name+"-") {
			return true
		}
	}
	return false
}

// waitUp waits until every named worker is up: heard in a heartbeat with the fleet
// throttle; after a fixed 2 s with the naive one, which sends none.
func (w *throttleWatch) waitUp(ctx context.Context, mode string, names []string, d time.Duration) error {
	if mode == "naive" {
		return sleepCtx(ctx, 2*time.Second)
	}
	deadline := time.Now().Add(d)
	for _, name := range names {
		for !w.heard(name) {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s sent no throttle heartbeat within %s", name, d)
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// trafficMark is the watch's counters at one instant.
type trafficMark struct {
	at          time.Time
	msgs, bytes int64
}

func (w *throttleWatch) mark() trafficMark {
	return trafficMark{at: time.Now(), msgs: w.msgs.Load(), bytes: w.bytes.Load()}
}

// Traffic is the throttle's core-NATS traffic over a window.
type Traffic struct {
	MsgsPerSec  float64 // published messages per second
	BytesPerSec float64 // published payload bytes per second
	// DeliveriesPerSec is MsgsPerSec x members: every member subscribes to both subjects.
	DeliveriesPerSec float64
}

func trafficBetween(a, b trafficMark, members int) Traffic {
	d := b.at.Sub(a.at).Seconds()
	if d <= 0 {
		return Traffic{}
	}
	m := float64(b.msgs-a.msgs) / d
	return Traffic{MsgsPerSec: m, BytesPerSec: float64(b.bytes-a.bytes) / d, DeliveriesPerSec: m * float64(members)}
}

// Spread is the median and the maximum over a fleet's workers.
type Spread struct{ Med, Max float64 }

func spreadOf(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return Spread{Med: median(s), Max: s[len(s)-1]}
}

// worse keeps the larger median and the larger maximum.
func (s Spread) worse(o Spread) Spread {
	return Spread{Med: max(s.Med, o.Med), Max: max(s.Max, o.Max)}
}

// WorkerWeight is what one worker process costs, over the fleet's workers.
type WorkerWeight struct {
	IdleRSS, RunRSS Spread // MiB (VmRSS; during the run the highest of 1 s samples)
	IdleCPU, RunCPU Spread // fraction of one core
}

// worse keeps the heavier of each figure.
func (w WorkerWeight) worse(o WorkerWeight) WorkerWeight {
	return WorkerWeight{IdleRSS: w.IdleRSS.worse(o.IdleRSS), RunRSS: w.RunRSS.worse(o.RunRSS),
		IdleCPU: w.IdleCPU.worse(o.IdleCPU), RunCPU: w.RunCPU.worse(o.RunCPU)}
}

// procStatusKB reads one kB field (VmRSS, VmHWM) of /proc/PID/status.
func procStatusKB(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", key, pid)
}

// fleetProbe samples the CPU time and RSS of a fleet's worker processes.
type fleetProbe struct {
	s     *Stack
	names []string
}

// cpu reads each worker's user+system CPU time (0 for a process that is gone).
func (p fleetProbe) cpu() []time.Duration {
	out := make([]time.Duration, len(p.names))
	for i, n := range p.names {
		out[i], _ = procCPU(p.s.pid(n))
	}
	return out
}

// rssMiB reads each worker's VmRSS in MiB (0 for a process that is gone).
func (p fleetProbe) rssMiB() []float64 {
	out := make([]float64, len(p.names))
	for i, n := range p.names {
		kb, _ := procStatusKB(p.s.pid(n), "VmRSS")
		out[i] = float64(kb) / 1024
	}
	return out
}

// cpuShare is each worker's CPU between two samples as a fraction of one core.
func cpuShare(a, b []time.Duration, d time.Duration) []float64 {
	out := make([]float64, len(a))
	if d <= 0 {
		return out
	}
	for i := range a {
		out[i] = (b[i] - a[i]).Seconds() / d.Seconds()
	}
	return out
}

// idle measures the fleet's CPU over d and its RSS at the end.
func (p fleetProbe) idle(ctx context.Context, d time.Duration) (cpu, rss Spread, err error) {
	c0, t0 := p.cpu(), time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return cpu, rss, err
	}
	c1 := p.cpu()
	return spreadOf(cpuShare(c0, c1, time.Since(t0))), spreadOf(p.rssMiB()), nil
}

// window measures the fleet from now to end: CPU over the window, per-worker peak RSS
// of samples taken every second.
func (p fleetProbe) window(ctx context.Context, end time.Time) (cpu, rss Spread, err error) {
	c0, t0 := p.cpu(), time.Now()
	peak := p.rssMiB()
	for time.Now().Before(end) {
		if err := sleepCtx(ctx, min(time.Second, time.Until(end))); err != nil {
			return cpu, rss, err
		}
		for i, v := range p.rssMiB() {
			peak[i] = max(peak[i], v)
		}
	}
	c1 := p.cpu()
	return spreadOf(cpuShare(c0, c1, time.Since(t0))), spreadOf(peak), nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// waitFirstRequest polls llmsim's request log, up to d, until it holds a request and
// returns the earliest arrival.
func (s *Stack) waitFirstRequest(ctx context.Context, d time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		reqs, err := s.Requests()
		if err != nil {
			return time.Time{}, fmt.Errorf("read llmsim's request log: %w", err)
		}
		if t := firstRequest(reqs); !t.IsZero() {
			return t, nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return time.Time{}, fmt.Errorf("no request reached llmsim: %w", err)
		}
	}
}

// produced is a background producer's outcome.
type produced struct {
	run string
	err error
}

// produceAsync runs the producer in the background (it is flow-controlled, so it runs
// for most of a long run); the channel receives its outcome once. It stops with ctx.
func (s *Stack) produceAsync(ctx context.Context, pipeline, input string) <-chan produced {
	ch := make(chan produced, 1)
	go func() {
		run, err := s.Produce(ctx, pipeline, input)
		ch <- produced{run, err}
	}()
	return ch
}

// waitProduced waits for a background producer, then for its run's summary, both
// within timeout: completed is whether the summary came; err is the producer's failure.
func (s *Stack) waitProduced(ctx context.Context, ch <-chan produced, timeout time.Duration) (run string, completed bool, err error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var p produced
	select {
	case p = <-ch:
	case <-wctx.Done():
		return "", false, ctx.Err()
	}
	if p.err != nil {
		return "", false, p.err
	}
	_, err = s.WaitSummary(wctx, p.run)
	return p.run, err == nil, ctx.Err()
}

// fleetStack is a stack (nats-server, llmsim) with a fleet of workers that have each sent
// their first heartbeat, the collector, and a watcher of the throttle subjects.
type fleetStack struct {
	*Stack
	tw    *throttleWatch
	cfg   string   // the workers' config file
	names []string // the fleet's workers
}

// startFleetStack starts a stack in dir (llmsim with sim), the fleet sh in mode with the
// throttle settings (a YAML flow map, e.g. "{start_rate: 2000}"; "" for the shipped
// defaults) and the extra worker args, and the collector, and waits until every worker
// is up. The watcher
// stops with ctx; Stop stops the processes.
func startFleetStack(ctx context.Context, bin, dir string, sim []string, sh Shape, mode, throttle string, args ...string) (*fleetStack, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s, err := StartStack(bin, dir, sim)
	if err != nil {
		return nil, fmt.Errorf("start nats-server and llmsim %s (see %s): %w", strings.Join(sim, " "), filepath.Join(dir, "llmsim.log"), err)
	}
	f := &fleetStack{Stack: s}
	if err := f.start(ctx, sh, mode, throttle, args); err != nil {
		s.Stop()
		return nil, err
	}
	return f, nil
}

func (f *fleetStack) start(ctx context.Context, sh Shape, mode, throttle string, args []string) error {
	var err error
	if f.tw, err = watchThrottle(ctx, f.NATSURL); err != nil {
		return err
	}
	if f.cfg, err = f.WriteWorkerConfig(ThrottleYAML(throttle)); err != nil {
		return err
	}
	if f.names, err = f.startFleet(f.cfg, sh, args...); err != nil {
		return err
	}
	if err := f.StartCollector(); err != nil {
		return err
	}
	return f.tw.waitUp(ctx, mode, f.names, upTimeout(len(f.names)))
}

// Stop stops the watcher and every process.
func (f *fleetStack) Stop() {
	if f.tw != nil {
		f.tw.Close()
	}
	f.Stack.Stop()
}
