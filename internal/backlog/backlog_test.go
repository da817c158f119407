package backlog_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/backlog"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// bundle is a NATS server with the topology and a meter.
type bundle struct {
	js    jetstream.JetStream
	meter *backlog.Meter
	topo  queue.Topology
}

func setup(t *testing.T) *bundle {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	// A prefixed deployment: the meter reads the jobs stream of its own names.
	names, err := wire.NewNames("team-a")
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{js: js, meter: backlog.New(js, names, 20*time.Millisecond, zerolog.Nop()), topo: queue.Topology{AckWait: 30 * time.Second, Names: names}}
	if err := queue.EnsureLog(context.Background(), js, b.topo, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	return b
}

// queueJobs creates a run's job consumer for a deployment, as a worker does, and
// publishes n jobs on it.
func (b *bundle) queueJobs(t *testing.T, dep, run string, n int) jetstream.Consumer {
	t.Helper()
	ctx := context.Background()
	c, err := queue.EnsureJobConsumer(ctx, b.js, b.topo, dep, run)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := b.js.Publish(ctx, b.topo.Names.JobSubject(dep, run, i, "q"), []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (b *bundle) poll(t *testing.T) map[string]uint64 {
	t.Helper()
	got, err := b.meter.Poll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// gauge is the value /metrics serves for dep.
func (b *bundle) gauge(dep string) float64 {
	return testutil.ToFloat64(b.meter.Collectors()[0].(*prometheus.GaugeVec).WithLabelValues(dep))
}

func TestBacklog(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	a1 := b.queueJobs(t, "a", "r1", 5)
	b.queueJobs(t, "a", "r2", 3)
	b1 := b.queueJobs(t, "b", "r1", 2)

	t.Run("the backlog is every queued job of the deployment's runs", func(t *testing.T) {
		if got := b.poll(t); got["a"] != 8 || got["b"] != 2 {
			t.Errorf("backlog %v, want a 8, b 2", got)
		}
		if b.gauge("a") != 8 || b.gauge("b") != 2 {
			t.Errorf("mq_jobs_backlog a %v, b %v; want 8, 2", b.gauge("a"), b.gauge("b"))
		}
	})
	t.Run("jobs NAKed with a delay are not counted, though still queued", func(t *testing.T) {
		batch, err := a1.FetchNoWait(3)
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			if err := msg.NakWithDelay(time.Minute); err != nil { // a 429's Retry-After
				t.Fatal(err)
			}
		}
		if got := b.poll(t); got["a"] != 5 || b.gauge("a") != 5 {
			t.Errorf("backlog of a %d (gauge %v), want 5 (8 queued, 3 held back)", got["a"], b.gauge("a"))
		}
		info, err := a1.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending != 3 {
			t.Errorf("NumAckPending %d, want the 3 held back", info.NumAckPending)
		}
	})
	t.Run("a deployment whose jobs are done and whose consumers are gone reads 0", func(t *testing.T) {
		batch, err := b1.FetchNoWait(2)
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			if err := msg.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.js.DeleteConsumer(ctx, b.topo.Names.StreamJobs(), queue.JobConsumerName("b", "r1")); err != nil {
			t.Fatal(err)
		}
		b.poll(t)
		if n := testutil.CollectAndCount(b.meter.Collectors()[0]); n != 2 || b.gauge("b") != 0 {
			t.Errorf("%d series, b %v; want a and b, b at 0", n, b.gauge("b"))
		}
	})
	t.Run("once Run ends the series are removed", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); b.meter.Run(ctx) }()
		cancel()
		<-done
		if n := testutil.CollectAndCount(b.meter.Collectors()[0]); n != 0 {
			t.Errorf("%d series after Run, want none (a standby exports no backlog)", n)
		}
	})
}
