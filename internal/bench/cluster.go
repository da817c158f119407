// Package bench runs the system as real processes (nats-server, llmsim, workers,
// collector, producer built into a bin directory) on 127.0.0.1 and measures it from
// llmsim's request log: the throttle benchmark of docs/BENCHMARKS.md.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// Stack is one set of running processes.
type Stack struct {
	Bin     string
	Dir     string
	NATSURL string
	SimURL  string
	// MonitorURL is nats-server's monitoring endpoint (single server only).
	MonitorURL string
	// Extra are arguments given to every worker, collector and producer (--replicas 3).
	Extra []string
	// Nodes are the nats-server process names (one, or three in a cluster).
	Nodes   []string
	workers []*exec.Cmd
	byName  map[string]*proc
	// Pprof starts workers and the collector with --pprof on a port of their own
	// (OpsAddr by process name), and nats-server with --profile (OpsAddr["nats-server"]).
	Pprof   bool
	OpsAddr map[string]string
}

type proc struct {
	cmd  *exec.Cmd
	args []string
	log  *os.File
	done chan struct{} // closed when the process has exited and been reaped
}

// freePorts returns n distinct free ports: every listener stays open until all are
// chosen, so the kernel cannot hand the same port out twice.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Stack) start(name string, args ...string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(s.Dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	bin := name
	switch {
	case strings.HasPrefix(name, "worker-"):
		bin = "worker"
	case strings.HasPrefix(name, "nats-server-"):
		bin = "nats-server"
	case strings.HasPrefix(name, "collector-"):
		bin = "collector"
	case strings.HasPrefix(name, "llmsim-"):
		bin = "llmsim"
	}
	cmd := exec.Command(filepath.Join(s.Bin, bin), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "MQ_PREFIX=", "NATS_URL="+s.NATSURL, "LLM_ENDPOINT="+s.SimURL+"/v1")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if s.byName == nil {
		s.byName = map[string]*proc{}
	}
	p := &proc{cmd: cmd, args: args, log: logf, done: make(chan struct{})}
	s.byName[name] = p
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return cmd, nil
}

// Exited reports whether a process has exited.
func (s *Stack) Exited(name string) bool {
	p := s.byName[name]
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill9 kills a process by name with SIGKILL and reaps it.
func (s *Stack) Kill9(name string) error {
	p := s.byName[name]
	if p == nil {
		return fmt.Errorf("no process %s", name)
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// Restart starts a killed process again with the same arguments (same port, same store).
func (s *Stack) Restart(name string) error {
	p := s.byName[name]
	if p == nil {
		return fmt.Errorf("no process %s", name)
	}
	_, err := s.start(name, p.args...)
	return err
}

// Signal sends sig to a process and waits up to d for it to exit.
func (s *Stack) Signal(name string, sig os.Signal, d time.Duration) (exited bool, err error) {
	p := s.byName[name]
	if p == nil {
		return false, fmt.Errorf("no process %s", name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return false, err
	}
	select {
	case <-p.done:
		return true, nil
	case <-time.After(d):
		return false, nil
	}
}

// StartStack starts nats-server and llmsim.
func StartStack(bin, dir string, sim []string) (*Stack, error) {
	return startStack(bin, dir, sim, 1, false)
}

// StartClusterStack starts a 3-node JetStream cluster and llmsim; every process is
// given --replicas 3.
func StartClusterStack(bin, dir string, sim []string) (*Stack, error) {
	return startStack(bin, dir, sim, 3, false)
}

func startStack(bin, dir string, sim []string, nodes int, pprof bool) (*Stack, error) {
	s := &Stack{Bin: bin, Dir: dir, Pprof: pprof, OpsAddr: map[string]string{}}
	ports, err := freePorts(2*nodes + 2)
	if err != nil {
		return nil, err
	}
	var urls, routes, addrs []string
	for i := range nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[nodes+i]))
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", ports[i]))
	}
	s.NATSURL = strings.Join(urls, ",")
	sp := ports[2*nodes]
	s.SimURL = fmt.Sprintf("http://127.0.0.1:%d", sp)
	for i := range nodes {
		name := "nats-server"
		args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(ports[i]), "-js", "-sd", filepath.Join(dir, "nats"),
			"-m", strconv.Itoa(ports[2*nodes+1])}
		s.MonitorURL = fmt.Sprintf("http://127.0.0.1:%d", ports[2*nodes+1])
		if nodes > 1 {
			name = fmt.Sprintf("nats-server-%d", i+1)
			args = []string{"-a", "127.0.0.1", "-p", strconv.Itoa(ports[i]), "-js", "-sd", filepath.Join(dir, name),
				"-n", name, "--cluster_name", "mq", "--cluster", routes[i], "--routes", strings.Join(routes, ",")}
			s.Extra = []string{"--replicas", "3"}
		}
		if pprof && nodes == 1 {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			s.OpsAddr[name] = fmt.Sprintf("127.0.0.1:%d", p)
			args = append(args, "--profile", strconv.Itoa(p))
		}
		if _, err := s.start(name, args...); err != nil {
			s.Stop()
			return nil, err
		}
		s.Nodes = append(s.Nodes, name)
	}
	if _, err := s.start("llmsim", append([]string{"--addr", fmt.Sprintf("127.0.0.1:%d", sp)}, sim...)...); err != nil {
		s.Stop()
		return nil, err
	}
	for _, a := range append(addrs, fmt.Sprintf("127.0.0.1:%d", sp)) {
		if err := waitPort(a, 10*time.Second); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

func waitPort(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not come up in %s", addr, d)
}

// ThrottleYAML is a deployment's throttle line of the worker config for settings given
// as a YAML flow map ("{start_rate: 2000}"); "" for the shipped defaults.
func ThrottleYAML(flow string) string {
	if flow == "" {
		return ""
	}
	return "    throttle: " + flow + "\n"
}

// WriteWorkerConfig writes the worker config pointing at the stack's llmsim.
func (s *Stack) WriteWorkerConfig(throttle string) (string, error) {
	p := filepath.Join(s.Dir, "worker.yaml")
	cfg := "deployments:\n  default:\n    provider: openai\n    endpoint: ${LLM_ENDPOINT}\n    timeout: 30s\n" + throttle
	return p, os.WriteFile(p, []byte(cfg), 0o644)
}

// StartWorkers writes the worker configuration (WriteWorkerConfig) and starts n workers
// with args; it returns the configuration's path.
func (s *Stack) StartWorkers(n int, throttle string, args ...string) (string, error) {
	cfg, err := s.WriteWorkerConfig(throttle)
	if err != nil {
		return "", err
	}
	for range n {
		if err := s.StartWorker(cfg, args...); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// StartWorker starts one worker process.
func (s *Stack) StartWorker(cfg string, args ...string) error {
	name := fmt.Sprintf("worker-%d", len(s.workers)+1)
	cmd, err := s.start(name, append(append(append([]string{"--config", cfg, "--name", name, "--ops-addr", ""}, s.Extra...), args...), s.pprofArgs(name)...)...)
	if err != nil {
		return err
	}
	s.workers = append(s.workers, cmd)
	return nil
}

// StartCollector starts the collector writing under dir/out.
func (s *Stack) StartCollector() error {
	_, err := s.start("collector", append(append([]string{"--out", filepath.Join(s.Dir, "out"), "--ops-addr", ""}, s.Extra...), s.pprofArgs("collector")...)...)
	return err
}

// pprofArgs gives a process its own ops port with pprof on (the last --ops-addr wins).
func (s *Stack) pprofArgs(name string) []string {
	if !s.Pprof {
		return nil
	}
	p, err := freePort()
	if err != nil {
		return nil
	}
	s.OpsAddr[name] = fmt.Sprintf("127.0.0.1:%d", p)
	return []string{"--pprof", "--ops-addr", s.OpsAddr[name]}
}

// Profile takes a CPU profile of every process with pprof on, for d, into dir as
// <prefix>-<process>.pprof, then its allocations since it started as
// <prefix>-<process>.allocs.pprof. It returns when every profile is written.
func (s *Stack) Profile(dir, prefix string, d time.Duration) error {
	var errs []error
	done := make(chan error, len(s.OpsAddr))
	for name, addr := range s.OpsAddr {
		go func() {
			if err := waitPort(addr, 10*time.Second); err != nil {
				done <- err
				return
			}
			cpu := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, max(1, int(d.Seconds())))
			err := fetchProfile(cpu, filepath.Join(dir, prefix+"-"+name+".pprof"))
			if err == nil { // then the allocations since the process started
				err = fetchProfile("http://"+addr+"/debug/pprof/allocs", filepath.Join(dir, prefix+"-"+name+".allocs.pprof"))
			}
			done <- err
		}()
	}
	for range s.OpsAddr {
		errs = append(errs, <-done)
	}
	return errors.Join(errs...)
}

func fetchProfile(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	return errors.Join(err, f.Close())
}

// Produce runs the producer to completion and returns the run id.
func (s *Stack) Produce(ctx context.Context, pipeline, input string) (string, error) {
	return s.ProduceRun(ctx, pipeline, input, "")
}

// ProduceRun runs the producer with a given run id ("" = a new one).
func (s *Stack) ProduceRun(ctx context.Context, pipeline, input, run string) (string, error) {
	args := append([]string{"--config", pipeline, "--input", input, "--log-level", "warn"}, s.Extra...)
	if run != "" {
		args = append(args, "--run", run)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(s.Bin, "producer"), args...)
	cmd.Env = append(os.Environ(), "MQ_PREFIX=", "NATS_URL="+s.NATSURL)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("producer: %w: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || f[0] != "run" {
		return "", fmt.Errorf("producer printed %q", out)
	}
	return strings.TrimSuffix(f[1], ":"), nil
}

// summaryPoll is how often WaitSummary looks for the summary. A run's wall is taken
// when it is seen, so the poll adds half of it to every wall on average: at 10 ms that
// was ~5 ms of the replaced system's ~0.35 s runs. A look costs a failed open (~1 µs).
const summaryPoll = time.Millisecond

// WaitSummary waits for the run's summary.json.
func (s *Stack) WaitSummary(ctx context.Context, run string) (map[string]any, error) {
	p := filepath.Join(s.Dir, "out", run, "summary.json")
	for {
		b, err := os.ReadFile(p)
		if err == nil {
			var m map[string]any
			return m, json.Unmarshal(b, &m)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("run %s not complete: %w", run, ctx.Err())
		case <-time.After(summaryPoll):
		}
	}
}

// Admin changes llmsim's settings at run time.
func (s *Stack) Admin(body string) error {
	resp, err := http.Post(s.SimURL+"/admin", "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("admin %s: status %d", body, resp.StatusCode)
	}
	return nil
}

// Requests reads llmsim's request log.
func (s *Stack) Requests() ([]llmsim.RequestLog, error) {
	var out []llmsim.RequestLog
	err := getJSON(s.SimURL+"/requests?since=0", &out)
	return out, err
}

// getJSON decodes the JSON body of a GET of url into v.
func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// Stop terminates every process (SIGTERM, then SIGKILL after 10 s) and waits.
func (s *Stack) Stop() {
	for _, p := range s.byName {
		select {
		case <-p.done:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// writeInput writes a run's pipeline config and its input: rows of "r<i>" ids with a
// quoted text (an embedded comma keeps the CSV quoting path exercised).
func writeInput(dir, pipelineYAML string, rows int) (pipeline, input string, err error) {
	pipeline = filepath.Join(dir, "pipeline.yaml")
	input = filepath.Join(dir, "rows.csv")
	if err := os.WriteFile(pipeline, []byte(pipelineYAML), 0o644); err != nil {
		return "", "", err
	}
	f, err := os.Create(input)
	if err != nil {
		return "", "", err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "id,text")
	for i := range rows {
		fmt.Fprintf(w, "r%d,\"item %d, bench\"\n", i, i)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return "", "", fmt.Errorf("write %s: %w", input, err)
	}
	return pipeline, input, nil
}
