package ops_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/version"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// get returns an endpoint's status and body; status 0 when nothing answers.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// waitFor polls cond until it holds, failing the test after timeout naming what.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeKeepsMetricsThroughTheDrain(t *testing.T) {
	drained := prometheus.NewCounter(prometheus.CounterOpts{Name: "mq_test_drained_total", Help: "test"})
	srv := ops.NewServer("127.0.0.1:0", zerolog.Nop(), drained)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	draining, finish := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(ctx, func(ctx context.Context) error {
			<-ctx.Done() // SIGTERM: the drain starts
			close(draining)
			<-finish // in-flight work finishing
			drained.Inc()
			return nil
		})
	}()
	waitFor(t, "the ops server to listen", func() bool { return srv.Addr() != "" })
	base := "http://" + srv.Addr()
	waitFor(t, "/readyz 200 while serving", func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusOK })

	stop()
	<-draining
	t.Run("during the drain /readyz is 503", func(t *testing.T) {
		waitFor(t, "/readyz 503", func() bool { c, _ := get(t, base+"/readyz"); return c == http.StatusServiceUnavailable })
	})
	t.Run("during the drain /metrics and /healthz still answer", func(t *testing.T) {
		if c, _ := get(t, base+"/healthz"); c != http.StatusOK {
			t.Errorf("/healthz: %d, want 200", c)
		}
		c, body := get(t, base+"/metrics")
		if c != http.StatusOK || !strings.Contains(body, "mq_test_drained_total 0") || !strings.Contains(body, "mq_build_info{") {
			t.Errorf("/metrics: %d\n%s", c, body)
		}
	})
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Run("once the component returned the endpoints are gone", func(t *testing.T) {
		if c, _ := get(t, base+"/metrics"); c != 0 {
			t.Errorf("/metrics answered %d after Serve returned", c)
		}
	})
}

func TestServeStopsTheComponentWhenTheEndpointsFail(t *testing.T) {
	first := ops.NewServer("127.0.0.1:0", zerolog.Nop())
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Serve(ctx, func(ctx context.Context) error { <-ctx.Done(); return nil }) }()
	waitFor(t, "the first ops server to listen", func() bool { return first.Addr() != "" })
	defer func() { stop(); <-done }()

	second := ops.NewServer(first.Addr(), zerolog.Nop()) // the address is taken
	err := second.Serve(context.Background(), func(ctx context.Context) error { <-ctx.Done(); return nil })
	if err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Serve on a taken address returned %v, want the listen error", err)
	}
}

func TestBuildInfo(t *testing.T) {
	i := version.Get()
	want := `
# HELP mq_build_info Always 1; the labels are the build this process runs: version, VCS revision, Go version.
# TYPE mq_build_info gauge
mq_build_info{go_version="` + i.GoVersion + `",revision="` + i.Revision + `",version="` + i.Version + `"} 1
`
	if err := testutil.CollectAndCompare(ops.BuildInfo(), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestNATSMetricsFollowTheConnection(t *testing.T) {
	srv := natstest.Start(t)
	nc, _ := srv.Connect(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(ops.NATSMetrics(nc)...)
	value := func(name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				m := mf.GetMetric()[0]
				if m.GetGauge() != nil {
					return m.GetGauge().GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
		t.Fatalf("%s not gathered", name)
		return 0
	}
	if value("mq_nats_connected") != 1 || value("mq_nats_reconnects_total") != 0 {
		t.Fatalf("connected: mq_nats_connected %v, reconnects %v", value("mq_nats_connected"), value("mq_nats_reconnects_total"))
	}
	srv.Shutdown()
	waitFor(t, "mq_nats_connected 0 with the server down", func() bool { return value("mq_nats_connected") == 0 })
	srv.Restart()
	waitFor(t, "mq_nats_connected 1 after the reconnect", func() bool { return value("mq_nats_connected") == 1 })
	if got := value("mq_nats_reconnects_total"); got != 1 {
		t.Errorf("mq_nats_reconnects_total %v after one reconnect, want 1", got)
	}
}
