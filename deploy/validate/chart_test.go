package validate

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/provision"
)

const (
	chartDir   = "../helm/multiquery"
	fullValues = "../helm/values-full.yaml"
	release    = "mq"
	namespace  = "batch"
)

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1) the chart writes;
// decoding strictly into it rejects any field the chart misspells or KEDA lacks.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval *int32 `json:"pollingInterval"`
		CooldownPeriod  *int32 `json:"cooldownPeriod"`
		Triggers        []struct {
			Type       string            `json:"type"`
			MetricType string            `json:"metricType"`
			Metadata   map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) the chart writes.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// prometheusRule is the Prometheus Operator's PrometheusRule (monitoring.coreos.com/v1),
// its rule fields as rulefmt has them.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// rendered is one render of the chart, each object decoded into its type.
type rendered struct {
	deployments     map[string]*appsv1.Deployment // by component
	configMaps      map[string]*corev1.ConfigMap  // by name
	secrets         map[string]*corev1.Secret
	services        []*corev1.Service
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	scaledObjects   []*scaledObject
	serviceMonitors []*serviceMonitor
	prometheusRules []*prometheusRule
	jobs            []*batchv1.Job
	pvcs            []*corev1.PersistentVolumeClaim
	serviceAccounts []*corev1.ServiceAccount
	netpols         []*networkingv1.NetworkPolicy
	kinds           map[string]int
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

// renderChart renders the chart as `helm install` would, with the values of files then
// overrides, and returns the manifests by template file. The NATS dependency is not in
// the repository (helm dependency update fetches it), so it never renders here.
func renderChart(t *testing.T, overrides map[string]any, files ...string) (map[string]string, error) {
	t.Helper()
	c := loadChart(t)
	vals := chartutil.Values{}
	for _, f := range files {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		vals = chartutil.CoalesceTables(v.AsMap(), vals)
	}
	vals = chartutil.CoalesceTables(overrides, vals)
	if err := chartutil.ProcessDependenciesWithMerge(c, vals); err != nil {
		return nil, fmt.Errorf("dependencies: %w", err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	rv, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}, caps)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return engine.Render(c, rv)
}

// mustRender renders and decodes every object strictly.
func mustRender(t *testing.T, overrides map[string]any, files ...string) *rendered {
	t.Helper()
	out, err := renderChart(t, overrides, files...)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	r := &rendered{deployments: map[string]*appsv1.Deployment{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, kinds: map[string]int{}}
	for _, name := range slices.Sorted(maps.Keys(out)) {
		if !strings.HasSuffix(name, ".yaml") {
			continue // NOTES.txt
		}
		for _, doc := range releaseutil.SplitManifests(out[name]) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			if err := r.add(doc); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
		}
	}
	return r
}

// decode unmarshals doc into v, rejecting unknown and duplicate fields.
func decode[T any](doc string, v *T) (*T, error) {
	if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
		return nil, err
	}
	return v, nil
}

func (r *rendered) add(doc string) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
		return err
	}
	key := tm.APIVersion + "/" + tm.Kind
	r.kinds[key]++
	var err error
	switch key {
	case "apps/v1/Deployment":
		var d *appsv1.Deployment
		if d, err = decode(doc, &appsv1.Deployment{}); err == nil {
			r.deployments[d.Labels["app.kubernetes.io/component"]] = d
		}
	case "v1/ConfigMap":
		var cm *corev1.ConfigMap
		if cm, err = decode(doc, &corev1.ConfigMap{}); err == nil {
			r.configMaps[cm.Name] = cm
		}
	case "v1/Secret":
		var s *corev1.Secret
		if s, err = decode(doc, &corev1.Secret{}); err == nil {
			r.secrets[s.Name] = s
		}
	case "v1/Service":
		r.services, err = appendDecoded(r.services, doc)
	case "v1/ServiceAccount":
		r.serviceAccounts, err = appendDecoded(r.serviceAccounts, doc)
	case "v1/PersistentVolumeClaim":
		r.pvcs, err = appendDecoded(r.pvcs, doc)
	case "policy/v1/PodDisruptionBudget":
		r.pdbs, err = appendDecoded(r.pdbs, doc)
	case "autoscaling/v2/HorizontalPodAutoscaler":
		r.hpas, err = appendDecoded(r.hpas, doc)
	case "networking.k8s.io/v1/NetworkPolicy":
		r.netpols, err = appendDecoded(r.netpols, doc)
	case "batch/v1/Job":
		r.jobs, err = appendDecoded(r.jobs, doc)
	case "keda.sh/v1alpha1/ScaledObject":
		r.scaledObjects, err = appendDecoded(r.scaledObjects, doc)
	case "monitoring.coreos.com/v1/ServiceMonitor":
		r.serviceMonitors, err = appendDecoded(r.serviceMonitors, doc)
	case "monitoring.coreos.com/v1/PrometheusRule":
		r.prometheusRules, err = appendDecoded(r.prometheusRules, doc)
	default:
		return fmt.Errorf("no type known for %s: add it to the test", key)
	}
	return err
}

func appendDecoded[T any](list []*T, doc string) ([]*T, error) {
	v, err := decode(doc, new(T))
	if err != nil {
		return list, err
	}
	return append(list, v), nil
}

// podSpecs are the pod templates of every workload, by component (provision: the Job).
func (r *rendered) podSpecs() map[string]*corev1.PodTemplateSpec {
	pods := map[string]*corev1.PodTemplateSpec{}
	for c, d := range r.deployments {
		pods[c] = &d.Spec.Template
	}
	for _, j := range r.jobs {
		pods[j.Labels["app.kubernetes.io/component"]] = &j.Spec.Template
	}
	return pods
}

func TestChartRendersStrictly(t *testing.T) {
	cases := []struct {
		name  string
		files []string
		set   map[string]any
		kinds []string // kinds that must be there
		none  []string // kinds that must not
	}{
		{name: "with the default values, a NATS URL given",
			set:   map[string]any{"natsClient": map[string]any{"url": "nats://nats.nats.svc:4222"}},
			kinds: []string{"apps/v1/Deployment", "v1/ConfigMap", "v1/Service", "policy/v1/PodDisruptionBudget", "v1/PersistentVolumeClaim", "v1/ServiceAccount"},
			none: []string{"autoscaling/v2/HorizontalPodAutoscaler", "keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/ServiceMonitor",
				"monitoring.coreos.com/v1/PrometheusRule", "batch/v1/Job", "v1/Secret", "networking.k8s.io/v1/NetworkPolicy"}},
		{name: "with the default values and the bundled NATS",
			set:   map[string]any{"nats": map[string]any{"enabled": true}},
			kinds: []string{"apps/v1/Deployment"}},
		{name: "with every optional feature on and KEDA",
			files: []string{fullValues},
			kinds: []string{"keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule", "batch/v1/Job", "v1/Secret",
				"networking.k8s.io/v1/NetworkPolicy"},
			none: []string{"autoscaling/v2/HorizontalPodAutoscaler"}},
		{name: "with every optional feature on and the HPA",
			files: []string{fullValues},
			set:   map[string]any{"worker": map[string]any{"autoscaling": map[string]any{"kind": "hpa"}}},
			kinds: []string{"autoscaling/v2/HorizontalPodAutoscaler"},
			none:  []string{"keda.sh/v1alpha1/ScaledObject"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.set, tc.files...)
			for _, k := range tc.kinds {
				if r.kinds[k] == 0 {
					t.Errorf("no %s rendered; got %v", k, r.kinds)
				}
			}
			for _, k := range tc.none {
				if r.kinds[k] != 0 {
					t.Errorf("%d %s rendered, want none", r.kinds[k], k)
				}
			}
			checkWorkloads(t, r)
			checkSelectors(t, r)
		})
	}
}

// checkWorkloads checks what every pod must have: the non-root numeric user, a read-only
// root, no capabilities, probes on the port --ops-addr names, files only from volumes.
func checkWorkloads(t *testing.T, r *rendered) {
	t.Helper()
	for _, c := range []string{"worker", "collector", "producer"} {
		if r.deployments[c] == nil {
			t.Errorf("no %s Deployment", c)
		}
	}
	for comp, pod := range r.podSpecs() {
		ps := pod.Spec.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser != 65532 {
			t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and runAsUser 65532", comp, ps)
		}
		if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
			t.Errorf("%s: the service account token is mounted", comp)
		}
		for _, ctr := range pod.Spec.Containers {
			sc := ctr.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
				sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
				t.Errorf("%s: container securityContext %+v", comp, sc)
			}
			if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s: no memory request or limit", comp)
			}
			checkFilesMounted(t, comp, ctr)
			if comp == "provision" {
				if !slices.Contains(ctr.Args, "provision") {
					t.Errorf("provision: args %q lack the subcommand", ctr.Args)
				}
				continue
			}
			checkProbes(t, comp, ctr)
		}
	}
}

var opsAddr = regexp.MustCompile(`^--ops-addr=:(\d+)$`)

func checkProbes(t *testing.T, comp string, ctr corev1.Container) {
	t.Helper()
	var port string
	for _, a := range ctr.Args {
		if m := opsAddr.FindStringSubmatch(a); m != nil {
			port = m[1]
		}
	}
	if port == "" {
		t.Fatalf("%s: no --ops-addr in %q", comp, ctr.Args)
	}
	var named bool
	for _, p := range ctr.Ports {
		named = named || (p.Name == "ops" && fmt.Sprint(p.ContainerPort) == port)
	}
	if !named {
		t.Errorf("%s: no container port \"ops\" = %s (the --ops-addr)", comp, port)
	}
	for what, pr := range map[string]*corev1.Probe{"/readyz": ctr.ReadinessProbe, "/healthz": ctr.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != what || pr.HTTPGet.Port.String() != "ops" {
			t.Errorf("%s: probe %s is %+v", comp, what, pr)
		}
	}
}

// checkFilesMounted checks that each path a flag names lies in a mounted volume.
func checkFilesMounted(t *testing.T, comp string, ctr corev1.Container) {
	t.Helper()
	for _, a := range ctr.Args {
		flag, path, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(path, "/") || flag == "--out" {
			continue
		}
		mounted := slices.ContainsFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool {
			return strings.HasPrefix(path, m.MountPath+"/") || path == m.MountPath
		})
		if !mounted {
			t.Errorf("%s: %s names %s, which no volume mount holds", comp, flag, path)
		}
	}
}

// checkSelectors checks that Services, PDBs, ServiceMonitors and autoscalers reach the
// workloads they are for.
func checkSelectors(t *testing.T, r *rendered) {
	t.Helper()
	pods := r.podSpecs()
	matches := func(sel map[string]string) string {
		for comp, p := range pods {
			if comp != "provision" && matchLabels(sel, p.Labels) {
				return comp
			}
		}
		return ""
	}
	for _, s := range r.services {
		if matches(s.Spec.Selector) == "" {
			t.Errorf("Service %s selects no pod", s.Name)
		}
	}
	for _, p := range r.pdbs {
		if matches(p.Spec.Selector.MatchLabels) == "" {
			t.Errorf("PodDisruptionBudget %s selects no pod", p.Name)
		}
	}
	for _, sm := range r.serviceMonitors {
		found := slices.ContainsFunc(r.services, func(s *corev1.Service) bool {
			return matchLabels(sm.Spec.Selector.MatchLabels, s.Labels) &&
				slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == sm.Spec.Endpoints[0].Port })
		})
		if !found {
			t.Errorf("ServiceMonitor %s selects no Service with port %q", sm.Name, sm.Spec.Endpoints[0].Port)
		}
	}
	for _, np := range r.netpols {
		comp := np.Labels["app.kubernetes.io/component"]
		if p := pods[comp]; p == nil || !matchLabels(np.Spec.PodSelector.MatchLabels, p.Labels) {
			t.Errorf("NetworkPolicy %s does not select the %s pods", np.Name, comp)
		}
	}
	w := r.deployments["worker"]
	for _, h := range r.hpas {
		if h.Spec.ScaleTargetRef.Name != w.Name {
			t.Errorf("HPA scales %s, not the workers", h.Spec.ScaleTargetRef.Name)
		}
	}
	for _, so := range r.scaledObjects {
		if so.Spec.ScaleTargetRef.Name != w.Name {
			t.Errorf("ScaledObject scales %s, not the workers", so.Spec.ScaleTargetRef.Name)
		}
	}
	autoscaled := len(r.hpas)+len(r.scaledObjects) > 0
	if autoscaled != (w.Spec.Replicas == nil) {
		t.Errorf("autoscaled %v but the worker Deployment's replicas is %v: an apply must not fight the autoscaler", autoscaled, w.Spec.Replicas)
	}
}

func matchLabels(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestChartConfigsLoadWithTheBinariesLoaders(t *testing.T) {
	for name, files := range map[string][]string{"default values": nil, "every feature on": {fullValues}} {
		t.Run("with "+name, func(t *testing.T) {
			r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}}, files...)
			w := r.deployments["worker"].Spec.Template.Spec.Containers[0]
			for _, e := range w.Env {
				t.Setenv(e.Name, "placeholder") // the key variables api_key_env names
			}
			dir := t.TempDir()
			for _, cm := range r.configMaps {
				if cm.Labels["app.kubernetes.io/component"] == "provision" {
					continue // mqctl provision's limits: TestChartProvisionsWithTheChartsLimits
				}
				for file, body := range cm.Data {
					if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			wc, err := config.LoadWorker(filepath.Join(dir, "worker.yaml"))
			if err != nil {
				t.Fatalf("the chart's worker config: %v", err)
			}
			for alias, d := range wc.Deployments {
				if d.APIKeyEnv != "" && !slices.ContainsFunc(w.Env, func(e corev1.EnvVar) bool { return e.Name == d.APIKeyEnv }) {
					t.Errorf("deployment %s reads its key from $%s, which the workers do not get", alias, d.APIKeyEnv)
				}
			}
			// producer --serve's loader: every pipeline config of the directory, the
			// worker config skipped.
			d, err := config.LoadPipelineDir(dir)
			if err != nil {
				t.Fatalf("the chart's pipelines: %v", err)
			}
			for _, f := range d.Skipped {
				if filepath.Base(f.Path) != "worker.yaml" {
					t.Errorf("the chart's %s is not a pipeline config: %s", filepath.Base(f.Path), f.Why)
				}
			}
			var loaded int
			for name, pl := range d.Pipelines {
				if _, ok := wc.Deployments[pl.LLM.Deployment]; !ok {
					t.Errorf("pipeline %s names deployment %q, which the worker config lacks", name, pl.LLM.Deployment)
				}
				loaded++
			}
			if loaded == 0 {
				t.Error("no pipeline rendered")
			}
		})
	}
}

func TestChartSecretsHoldWhatThePodsRead(t *testing.T) {
	r := mustRender(t, nil, fullValues)
	for comp, pod := range r.podSpecs() {
		for _, ctr := range pod.Spec.Containers {
			for _, e := range ctr.Env {
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					continue
				}
				ref := e.ValueFrom.SecretKeyRef
				s, ok := r.secrets[ref.Name]
				if !ok {
					t.Errorf("%s: $%s reads Secret %s, which the chart does not create", comp, e.Name, ref.Name)
					continue
				}
				if _, ok := s.StringData[ref.Key]; !ok {
					t.Errorf("%s: $%s reads key %s, which Secret %s lacks", comp, e.Name, ref.Key, ref.Name)
				}
			}
		}
	}
	creds := r.secrets["mq-multiquery-nats-creds"]
	if creds == nil || creds.StringData["nats.creds"] == "" {
		t.Errorf("no NATS credentials Secret with nats.creds: %v", slices.Collect(maps.Keys(r.secrets)))
	}
}

func TestChartRefusesValuesThatCannotWork(t *testing.T) {
	url := map[string]any{"url": "nats://nats:4222"}
	cases := []struct {
		name string
		set  map[string]any
		want string
	}{
		{"no NATS URL and no bundled NATS", map[string]any{}, "natsClient.url is required"},
		{"a grace period not above the drain timeout",
			map[string]any{"natsClient": url, "worker": map[string]any{"terminationGracePeriodSeconds": 120}}, "terminationGracePeriodSeconds must be above"},
		{"standby collectors on a ReadWriteOnce volume",
			map[string]any{"natsClient": url, "collector": map[string]any{"replicas": 2}}, "needs a ReadWriteMany volume"},
		{"an autoscaler kind that does not exist",
			map[string]any{"natsClient": url, "worker": map[string]any{"autoscaling": map[string]any{"enabled": true, "kind": "vpa"}}}, "/worker/autoscaling/kind"},
		{"a misspelled value (values.schema.json)",
			map[string]any{"natsClient": url, "worker": map[string]any{"autoscalling": map[string]any{"enabled": true}}}, "autoscalling"},
		{"a pipeline name that is no subject token",
			map[string]any{"natsClient": url, "producer": map[string]any{"pipelines": map[string]any{"my.pipeline": map[string]any{}}}}, "my.pipeline"},
		{"TLS without its Secret",
			map[string]any{"natsClient": map[string]any{"url": "tls://nats:4222", "tls": map[string]any{"enabled": true}}}, "natsClient.tls.existingSecret is required"},
		{"a prefix that is no subject token",
			map[string]any{"natsClient": url, "prefix": "team.a"}, "prefix"},
		{"a prefix the default names' subjects start with",
			map[string]any{"natsClient": url, "prefix": "jobs"}, "prefix"},
		{"a collector holding more row bodies than its memory limit",
			map[string]any{"natsClient": url, "collector": map[string]any{"memoryLimit": 2147483648}}, "must be below collector.resources.limits.memory"},
		{"a memory limit GOMEMLIMIT cannot be derived from",
			map[string]any{"natsClient": url, "worker": map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": "5e8"}}}}, "GOMEMLIMIT cannot be derived"},
		{"pod labels that would change a component's selector",
			map[string]any{"natsClient": url, "worker": map[string]any{"podLabels": map[string]any{"app.kubernetes.io/component": "collector"}}}, "invalid propertyName 'app.kubernetes.io/component'"},
		{"a producer file that would load as a pipeline",
			map[string]any{"natsClient": url, "producer": map[string]any{"files": map[string]any{"lookup.yaml": "a: b"}}}, "name it .yml"},
	}
	for _, tc := range cases {
		t.Run("it refuses "+tc.name, func(t *testing.T) {
			_, err := renderChart(t, tc.set)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestChartGivesEveryProcessTheSamePrefix(t *testing.T) {
	url := map[string]any{"url": "nats://nats:4222"}
	for _, tc := range []struct {
		name string
		set  map[string]any
		want string // the --prefix flag every container has; "" none
	}{
		{"with no prefix, no process gets --prefix (the default names)", map[string]any{"natsClient": url}, ""},
		{"with a prefix, every process and the provision Job get it", map[string]any{"natsClient": url, "prefix": "team-a",
			"provision": map[string]any{"enabled": true}}, "--prefix=team-a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.set)
			pods := r.podSpecs()
			if tc.want != "" && pods["provision"] == nil {
				t.Fatal("no provision Job rendered")
			}
			for comp, pod := range pods {
				for _, ctr := range pod.Spec.Containers {
					var got []string
					for _, a := range ctr.Args {
						if strings.HasPrefix(a, "--prefix") {
							got = append(got, a)
						}
					}
					if want := slices.DeleteFunc([]string{tc.want}, func(s string) bool { return s == "" }); !slices.Equal(got, want) {
						t.Errorf("%s: prefix flags %q, want %q", comp, got, want)
					}
				}
			}
		})
	}
}

// Every process creates the streams and buckets that are missing with its --replicas,
// and the provision Job creates them all: each must have the chart's streamReplicas, or
// the streams of a 3-node cluster come out with one replica (mqctl provision's default).
func TestChartGivesEveryProcessTheStreamReplicas(t *testing.T) {
	r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}, "streamReplicas": 3,
		"provision": map[string]any{"enabled": true}})
	pods := r.podSpecs()
	if pods["provision"] == nil {
		t.Fatal("no provision Job rendered")
	}
	for comp, pod := range pods {
		for _, ctr := range pod.Spec.Containers {
			var got []string
			for _, a := range ctr.Args {
				if strings.HasPrefix(a, "--replicas") {
					got = append(got, a)
				}
			}
			if !slices.Equal(got, []string{"--replicas=3"}) {
				t.Errorf("%s: replicas flags %q, want [--replicas=3]", comp, got)
			}
			if j := slices.Index(ctr.Args, "--replicas=3"); comp == "provision" && j >= 0 && j < slices.Index(ctr.Args, "provision") {
				t.Errorf("provision: --replicas comes before the subcommand, which takes it: %q", ctr.Args)
			}
		}
	}
}

// The provision Job's limits file loads with mqctl provision's loader, with the values'
// stream limits and the collectors' lease TTL (the lease bucket's TTL).
func TestChartProvisionsWithTheChartsLimits(t *testing.T) {
	r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"},
		"collector": map[string]any{"leaseTTL": "20s"},
		"provision": map[string]any{"enabled": true, "update": true,
			"limits": map[string]any{"streams": map[string]any{"MQ_JOBS": map[string]any{"max_bytes": "8GiB"}}}}})
	cm := r.configMaps["mq-multiquery-provision"]
	if cm == nil {
		t.Fatalf("no provision ConfigMap: %v", slices.Collect(maps.Keys(r.configMaps)))
	}
	file := filepath.Join(t.TempDir(), "limits.yaml")
	if err := os.WriteFile(file, []byte(cm.Data["limits.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := provision.Load(file)
	if err != nil {
		t.Fatalf("the chart's limits: %v", err)
	}
	if l.LeaseTTL != 20*time.Second {
		t.Errorf("lease_ttl %s, want the collectors' 20s", l.LeaseTTL)
	}
	if got := l.Streams["MQ_JOBS"].MaxBytes; got != 8<<30 {
		t.Errorf("MQ_JOBS max_bytes %d, want 8 GiB", got)
	}
	ctr := r.podSpecs()["provision"].Spec.Containers[0]
	checkFilesMounted(t, "provision", ctr)
	for _, want := range []string{"--limits=/etc/multiquery/provision/limits.yaml", "--update"} {
		if !slices.Contains(ctr.Args, want) {
			t.Errorf("provision: args %q lack %s", ctr.Args, want)
		}
	}
}

// A PodDisruptionBudget must not block a node drain for ever: with the default policy
// (IfHealthyBudget) a pod that is not ready counts against maxUnavailable, so one
// crash-looping worker (a revoked key) or a collector cut off from NATS leaves no
// disruption allowed, and `kubectl drain` waits until someone deletes the pod by hand.
func TestChartDisruptionBudgetsNeverBlockADrain(t *testing.T) {
	r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}})
	if len(r.pdbs) != 3 {
		t.Fatalf("%d PodDisruptionBudgets, want one per component", len(r.pdbs))
	}
	for _, p := range r.pdbs {
		if pol := p.Spec.UnhealthyPodEvictionPolicy; pol == nil || *pol != policyv1.AlwaysAllow {
			t.Errorf("%s: unhealthyPodEvictionPolicy %v, want AlwaysAllow", p.Name, pol)
		}
		if p.Spec.MinAvailable != nil || p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() < 1 {
			t.Errorf("%s: minAvailable %v, maxUnavailable %v: one pod at a time must be allowed to go", p.Name, p.Spec.MinAvailable, p.Spec.MaxUnavailable)
		}
	}
}

// The processes raise the garbage collector's target to GOGC=400 (internal/proc): the
// heap may grow to five times what is live before a collection. Without a GOMEMLIMIT
// below the container's memory limit, the kernel kills the container before the
// collector runs; with one, the GC works harder near the limit instead.
func TestChartSetsGOMEMLIMITBelowEveryMemoryLimit(t *testing.T) {
	for name, files := range map[string][]string{"default values": nil, "every feature on": {fullValues}} {
		t.Run("with "+name, func(t *testing.T) {
			r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}, "provision": map[string]any{"enabled": true},
				"producer": map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": 536870912}}}}, files...)
			for comp, pod := range r.podSpecs() {
				for _, ctr := range pod.Spec.Containers {
					var vals []string
					for _, e := range ctr.Env {
						if e.Name == "GOMEMLIMIT" {
							vals = append(vals, e.Value)
						}
					}
					if len(vals) != 1 {
						t.Errorf("%s: GOMEMLIMIT %q, want one", comp, vals)
						continue
					}
					if comp == "worker" && slices.Contains(files, fullValues) {
						if vals[0] != "400MiB" {
							t.Errorf("worker: GOMEMLIMIT %s, want extraEnv's 400MiB", vals[0])
						}
						continue
					}
					limit := ctr.Resources.Limits.Memory().Value()
					got, err := strconv.ParseInt(vals[0], 10, 64)
					if err != nil || got < limit*8/10 || got >= limit {
						t.Errorf("%s: GOMEMLIMIT %s for a memory limit of %d bytes: want bytes between 80 %% and the limit", comp, vals[0], limit)
					}
				}
			}
		})
	}
	t.Run("off with goMemLimitRatio 0", func(t *testing.T) {
		r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}, "goMemLimitRatio": 0})
		for comp, pod := range r.podSpecs() {
			if slices.ContainsFunc(pod.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" }) {
				t.Errorf("%s: GOMEMLIMIT set", comp)
			}
		}
	})
}

// The Go runtime sets GOMAXPROCS from the container's CPU limit by itself from Go 1.25
// on (the go directive of the main module): the chart sets none, and the values say so.
func TestTheBinariesFollowTheCPULimit(t *testing.T) {
	b, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go 1\.(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no go directive in go.mod")
	}
	if minor, _ := strconv.Atoi(string(m[1])); minor < 25 {
		t.Errorf("go 1.%d: before 1.25 GOMAXPROCS ignores the CPU limit, and the chart must set it", minor)
	}
}

func TestChartDeclaresNATSAsAConditionalDependency(t *testing.T) {
	c := loadChart(t)
	deps := c.Metadata.Dependencies
	if len(deps) != 1 || deps[0].Name != "nats" || deps[0].Condition != "nats.enabled" ||
		!regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(deps[0].Version) {
		t.Fatalf("dependencies %+v, want nats pinned to one version under nats.enabled", deps)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Chart.yaml: %v", err)
	}
}

func TestOneOffRunManifestDecodesStrictly(t *testing.T) {
	b, err := os.ReadFile("../k8s/producer-job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := &rendered{deployments: map[string]*appsv1.Deployment{}, configMaps: map[string]*corev1.ConfigMap{},
		secrets: map[string]*corev1.Secret{}, kinds: map[string]int{}}
	for _, doc := range releaseutil.SplitManifests(string(b)) {
		if err := r.add(doc); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
	}
	if len(r.jobs) != 1 || len(r.configMaps) != 1 {
		t.Fatalf("kinds %v, want a Job and its ConfigMap", r.kinds)
	}
	dir := t.TempDir()
	for file, body := range r.configMaps["multiquery-run-reviews-0001"].Data {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := config.LoadPipeline(filepath.Join(dir, "pipeline.yaml")); err != nil {
		t.Errorf("the Job's pipeline: %v", err)
	}
}
