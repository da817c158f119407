package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llmsim"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/provision"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

// Issue 10, acceptance (namespacing): two deployments with different prefixes and an
// unrelated stream on jobs.> share one server; both complete runs; neither sees the
// other's messages.
func TestTwoPrefixedDeploymentsShareOneServer(t *testing.T) {
	const rows, queries = 30, 2
	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Another application owns jobs.> (the default deployment's job subjects): with the
	// default names, MQ_JOBS could not even be created next to it.
	other, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"jobs.>"}})
	if err != nil {
		t.Fatalf("create the unrelated stream: %v", err)
	}
	// Every subject published on the server while the two deployments run.
	var (
		mu   sync.Mutex
		seen []string
	)
	sniff, err := nc.Subscribe(">", func(m *nats.Msg) {
		mu.Lock()
		seen = append(seen, m.Subject)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	deps := map[string]*env{}
	for _, prefix := range []string{"a", "b"} {
		e := newEnv(t, llmsim.Config{})
		e.nats = srv
		_, e.js = srv.Connect(t) // a connection of its own, as separate processes would have
		e.topo.Names = wire.MustNames(prefix)
		e.startWorker(workerOpts{})
		e.startCollector("")
		deps[prefix] = e
	}
	reps := map[string]producer.Report{}
	var wg sync.WaitGroup
	errs := make(chan error, len(deps))
	for prefix, e := range deps {
		p := e.pipeline(matrixPipeline(1, queries, ""))
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := e.produce(p, csvRows(rows, nil), input.CSV)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			reps[prefix] = rep
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("produce: %v", err)
	}

	// Both deployments complete their run with every row.
	for prefix, e := range deps {
		run := reps[prefix].Run
		sum := e.waitSummary(run, 90*time.Second)
		if sum.Stats.RowsOK != rows || sum.Stats.RowsFailed != 0 {
			t.Fatalf("deployment %s: rows ok/failed = %d/%d, want %d/0", prefix, sum.Stats.RowsOK, sum.Stats.RowsFailed, rows)
		}
		if got := e.lines(run, sink.ResultsJSONL); len(got) != rows {
			t.Fatalf("deployment %s: %d result lines, want %d", prefix, len(got), rows)
		}
		// summary.json is written before the files are stored; the status says when.
		if st, err := status.WaitRun(ctx, e.js, e.topo.Names, run, nil); err != nil || !st.Stored {
			t.Fatalf("deployment %s: run %s status %+v (%v), want finished and stored", prefix, run, st, err)
		}
	}

	// Each deployment's streams stored only its own run's messages; the unrelated stream
	// and the default names got nothing.
	for prefix, e := range deps {
		n := e.topo.Names
		// LastSeq counts every message a stream ever stored, the purged ones too.
		for stream, want := range map[string]uint64{
			n.StreamInput():   2, // the open and seal records (each row rides in its first job)
			n.StreamJobs():    rows * queries,
			n.StreamResults(): rows * queries,
		} {
			s, err := js.Stream(ctx, stream)
			if err != nil {
				t.Fatalf("deployment %s: stream %s: %v", prefix, stream, err)
			}
			if got := s.CachedInfo().State.LastSeq; got != want {
				t.Errorf("deployment %s: %s stored %d messages, want its own run's %d", prefix, stream, got, want)
			}
		}
		stored, err := archive.List(ctx, js, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(stored) != 1 || stored[0].Run != reps[prefix].Run {
			t.Errorf("deployment %s: %s holds %+v, want its own run %s only", prefix, n.BucketResults(), stored, reps[prefix].Run)
		}
	}
	info, err := other.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != 0 {
		t.Errorf("the unrelated stream OTHER (jobs.>) stored %d messages, want none", info.State.LastSeq)
	}
	// Every stream on the server is OTHER or one of a deployment's (its streams, and the
	// streams behind its KV buckets and object store).
	known := map[string]bool{"OTHER": true}
	for _, e := range deps {
		n := e.topo.Names
		for _, s := range n.Streams() {
			known[s] = true
		}
		for _, b := range n.Buckets() {
			known["KV_"+b] = true
		}
		known["OBJ_"+n.BucketResults()] = true
	}
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		if !known[name] {
			t.Errorf("stream %s is neither OTHER nor one of the prefixed deployments'", name)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}

	// Every message either deployment sent carries its prefix, and only its own run.
	if err := sniff.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	own := map[string]int{}
	for _, subj := range seen {
		if strings.HasPrefix(subj, "$") || strings.HasPrefix(subj, "_INBOX.") {
			continue // JetStream's API, KV and object store subjects (named by the buckets), replies
		}
		prefix, _, _ := strings.Cut(subj, ".")
		if _, ok := deps[prefix]; !ok {
			t.Errorf("subject %q carries neither deployment's prefix", subj)
			continue
		}
		own[prefix]++
		for p, r := range reps {
			if p != prefix && strings.Contains(subj, "."+r.Run+".") {
				t.Errorf("deployment %s sent %q, about the other deployment's run %s", prefix, subj, r.Run)
			}
		}
	}
	for prefix := range deps {
		if own[prefix] == 0 {
			t.Errorf("saw no message of deployment %s: the sniffer proves nothing", prefix)
		}
	}
}

// prefixedAccounts writes deploy/nats/accounts.conf with the permissions of a deployment
// with prefix p, by the rules of docs/OPERATIONS.md ("Several deployments on one NATS",
// the sed command there): the stream subjects and the throttle subjects get "<p>.", the
// streams in JetStream API subjects "<p>_", the buckets "<p>_" (KV_, OBJ_, $KV., $O.).
func prefixedAccounts(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(accountsConf)
	if err != nil {
		t.Fatal(err)
	}
	s := regexp.MustCompile(`"(input|jobs|results|rows|audit|dead|submit|status|mq\.throttle)\.>"`).ReplaceAllString(string(b), `"`+p+`.$1.>"`)
	s = strings.ReplaceAll(s, ".MQ_", "."+p+"_MQ_")
	s = regexp.MustCompile(`(KV|OBJ)_mq_`).ReplaceAllString(s, "${1}_"+p+"_mq_")
	s = regexp.MustCompile(`\$(KV|O)\.mq_`).ReplaceAllString(s, "$$${1}."+p+"_mq_")
	path := filepath.Join(t.TempDir(), "accounts-"+p+".conf")
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Issue 10 (namespacing): the least-privilege roles, with the prefix added to their
// subjects as docs/OPERATIONS.md says, are enough for a prefixed deployment: the admin
// provisions, the producer, a worker and the collector each run as their role, and no
// permission is missing.
func TestPrefixedDeploymentRunsWithPrefixedRoles(t *testing.T) {
	e := newEnv(t, llmsim.Config{Seed: 1})
	e.topo.Names = wire.MustNames("team-a")
	w := startSecureNATSWith(t, prefixedAccounts(t, "team-a"))
	_, e.js = w.connect(t, e, "mq-admin")
	e.roles = map[string]jetstream.JetStream{}
	for _, role := range []string{"producer", "worker", "collector"} {
		_, e.roles[role] = w.connect(t, e, "mq-"+role)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := provision.Run(ctx, e.js, e.topo.Names, provision.Default(), provision.Options{}); err != nil {
		t.Fatalf("provision as mq-admin: %v", err)
	}
	e.startWorker(workerOpts{})
	e.startCollector("")
	rep, err := e.produce(e.pipeline(matrixPipeline(1, 2, "")), csvRows(10, nil), input.CSV)
	if err != nil {
		t.Fatalf("produce as mq-producer: %v", err)
	}
	if sum := e.waitSummary(rep.Run, 90*time.Second); sum.Stats.RowsOK != 10 {
		t.Fatalf("rows ok = %d, want 10", sum.Stats.RowsOK)
	}
	if st, err := status.WaitRun(ctx, e.jsFor("producer"), e.topo.Names, rep.Run, nil); err != nil || !st.Stored {
		t.Fatalf("run status %+v (%v), want finished and stored", st, err)
	}
	// The collector cleans the finished run up: wait for it, so that its permissions
	// are exercised too.
	waitFor(t, 30*time.Second, "the run purged from the bus", func() bool {
		for _, name := range []string{e.topo.Names.StreamInput(), e.topo.Names.StreamResults(), e.topo.Names.StreamJobs()} {
			s, err := e.js.Stream(ctx, name)
			if err != nil || s.CachedInfo().State.Msgs != 0 {
				return false
			}
		}
		return true
	})
	for _, stop := range e.stopped {
		stop()
	}
	if logs := e.logBuf.String(); strings.Contains(strings.ToLower(logs), "permissions violation") {
		t.Fatalf("a role lacked a permission:\n%s", grepLines(logs, "ermissions"))
	}
	t.Run("the worker may not publish the default deployment's results", func(t *testing.T) {
		js := e.jsFor("worker")
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := js.Publish(cctx, "results.r.0.q", []byte(`{}`)); err == nil {
			t.Fatal("mq-worker of team-a published results.r.0.q")
		}
		waitFor(t, 5*time.Second, "the server's permissions violation", func() bool { return queue.Denied(js, "results.r.0.q") })
	})
}
