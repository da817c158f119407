package validate

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/collector"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/producer"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/worker"
)

const (
	alertsFile    = "../monitoring/alerts.yaml"
	dashboardFile = "../monitoring/dashboard.json"
)

// pendingMetrics are names the chart's KEDA query expects and no process exports yet
// (deploy/README.md, "Scaling"). The alert rules and the dashboard may not use them.
// When a process exports one, the test fails until it is taken off this list.
var pendingMetrics = map[string]string{}

// exportedMetrics are the names the processes serve on /metrics: the collectors the
// commands register (worker, collector, producer service, publish), built through the
// packages' own constructors, plus the Go and process collectors of internal/ops and
// Prometheus's own `up`.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	t.Setenv("OPENAI_API_KEY", "unused") // the example config reads its key from it; no call is made
	wc, err := config.LoadWorker("../../examples/assessment/worker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	deps, err := worker.DeploymentsFromConfig(wc)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(js, worker.Config{Name: "metrics", Deployments: deps}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := collector.New(js, collector.Config{OutDir: t.TempDir()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	nc, _ := srv.Connect(t)
	cs := slices.Concat(w.Collectors(), c.Collectors(), producer.NewMetrics().Collectors(), queue.Collectors(), ops.NATSMetrics(nc),
		[]prometheus.Collector{ops.BuildInfo(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})})
	names := map[string]bool{"up": true}
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, col := range cs {
		ch := make(chan *prometheus.Desc, 256)
		go func() { col.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fq.FindStringSubmatch(d.String()); m != nil {
				names[m[1]] = true
				if isHistogram(col) { // the series PromQL selects
					for _, suffix := range []string{"_bucket", "_sum", "_count"} {
						names[m[1]+suffix] = true
					}
				}
			}
		}
	}
	return names
}

// isHistogram reports whether a collector's metrics are histograms.
func isHistogram(c prometheus.Collector) bool {
	switch c.(type) {
	case *prometheus.HistogramVec, prometheus.Histogram:
		return true
	}
	return false
}

var promql = parser.NewParser(parser.Options{})

// metricNames returns the metric names an expression selects; dashboard variables are
// replaced by values first.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	expr = strings.ReplaceAll(expr, "$__rate_interval", "5m")
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("PromQL %q: %v", expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

func TestMonitoringNamesOnlyExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	for name := range pendingMetrics {
		if exported[name] {
			t.Errorf("%s is exported now: take it off pendingMetrics (and deploy/README.md)", name)
		}
	}
	check := func(where, expr string, allowPending bool) {
		t.Helper()
		names := metricNames(t, expr)
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, expr)
		}
		for _, n := range names {
			if !exported[n] && (!allowPending || pendingMetrics[n] == "") {
				t.Errorf("%s: metric %s is not exported by any process", where, n)
			}
		}
	}

	t.Run("the alert rules parse with Prometheus's rule parser", func(t *testing.T) {
		groups, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, promql, nil)
		for _, err := range errs {
			t.Errorf("%s: %v", alertsFile, err)
		}
		if groups == nil {
			t.FailNow()
		}
		var alerts int
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				check("alert "+r.Alert, r.Expr, false)
				if r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
					t.Errorf("alert %s: needs a summary and a severity", r.Alert)
				}
				alerts++
			}
		}
		if alerts < 6 {
			t.Errorf("%d alerts, want the 6+ the operations guide relies on", alerts)
		}
	})

	t.Run("the dashboard queries exported metrics", func(t *testing.T) {
		b, err := os.ReadFile(dashboardFile)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			UID    string `json:"uid"`
			Panels []struct {
				Title   string `json:"title"`
				Type    string `json:"type"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
			Templating struct {
				List []struct {
					Name       string `json:"name"`
					Definition string `json:"definition"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", dashboardFile, err)
		}
		var queries int
		for _, p := range d.Panels {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				check("panel "+p.Title, tg.Expr, false)
				queries++
			}
		}
		labelValues := regexp.MustCompile(`^label_values\((.+), *\w+\)$`)
		for _, v := range d.Templating.List {
			if m := labelValues.FindStringSubmatch(v.Definition); m != nil {
				check("variable "+v.Name, m[1], false)
			}
		}
		if d.UID == "" || queries < 10 {
			t.Errorf("uid %q, %d queries: not a dashboard", d.UID, queries)
		}
	})

	t.Run("the chart ships the same rules and dashboard", func(t *testing.T) {
		r := mustRender(t, nil, fullValues)
		groups, _ := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, promql, nil)
		if len(r.prometheusRules) != 1 || groups == nil {
			t.Fatalf("%d PrometheusRules", len(r.prometheusRules))
		}
		var fromChart, fromFile []string
		for _, g := range r.prometheusRules[0].Spec.Groups {
			for _, rule := range g.Rules {
				fromChart = append(fromChart, rule.Alert+": "+rule.Expr)
			}
		}
		for _, g := range groups.Groups {
			for _, rule := range g.Rules {
				fromFile = append(fromFile, rule.Alert+": "+rule.Expr)
			}
		}
		if !slices.Equal(fromChart, fromFile) {
			t.Errorf("PrometheusRule alerts %q, the file's %q", fromChart, fromFile)
		}
		want, err := os.ReadFile(dashboardFile)
		if err != nil {
			t.Fatal(err)
		}
		cm := r.configMaps["mq-multiquery-dashboard"]
		if cm == nil || cm.Labels["grafana_dashboard"] != "1" || cm.Data["multiquery.json"] != strings.TrimSpace(string(want)) {
			t.Errorf("the dashboard ConfigMap does not hold %s with the sidecar's label", dashboardFile)
		}
	})

	t.Run("the KEDA query names exported or announced metrics", func(t *testing.T) {
		r := mustRender(t, nil, fullValues)
		if len(r.scaledObjects) != 1 {
			t.Fatalf("%d ScaledObjects", len(r.scaledObjects))
		}
		q := r.scaledObjects[0].Spec.Triggers[0].Metadata["query"]
		if !strings.Contains(q, `namespace="`+namespace+`"`) {
			t.Errorf("query %q is not scoped to the release's namespace", q)
		}
		check("ScaledObject", q, true)
	})
}
