package validate

import (
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"

	"github.com/multiquery/multiquery/internal/config"
)

// restricted evaluates pods against the Pod Security Standards' "restricted" level with
// the admission controller's own checks (k8s.io/pod-security-admission), at the oldest
// Kubernetes the chart supports (Chart.yaml's kubeVersion) and at the latest.
func checkRestricted(t *testing.T, what string, pod *corev1.PodTemplateSpec) {
	t.Helper()
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []psaapi.Version{psaapi.MajorMinorVersion(1, 26), psaapi.LatestVersion()} {
		res := policy.AggregateCheckResults(eval.EvaluatePod(psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: v}, &pod.ObjectMeta, &pod.Spec))
		if !res.Allowed {
			t.Errorf("%s: not allowed in a namespace enforcing pod-security restricted:%s: %s", what, v, res.ForbiddenDetail())
		}
	}
}

// A shared cluster enforces the "restricted" Pod Security Standard on the namespace
// (pod-security.kubernetes.io/enforce: restricted): every pod the chart creates, the
// provision hook's included, and the one-off run's Job must be admitted there.
func TestEveryPodMeetsTheRestrictedPodSecurityStandard(t *testing.T) {
	for name, files := range map[string][]string{"default values": nil, "every feature on": {fullValues}} {
		t.Run("with "+name, func(t *testing.T) {
			r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}, "provision": map[string]any{"enabled": true}}, files...)
			pods := r.podSpecs()
			if pods["provision"] == nil {
				t.Fatal("no provision Job rendered")
			}
			for _, comp := range slices.Sorted(maps.Keys(pods)) {
				checkRestricted(t, comp, pods[comp])
			}
		})
	}
	t.Run("the one-off run's Job", func(t *testing.T) {
		b, err := os.ReadFile("../k8s/producer-job.yaml")
		if err != nil {
			t.Fatal(err)
		}
		r := &rendered{deployments: map[string]*appsv1.Deployment{}, configMaps: map[string]*corev1.ConfigMap{},
			secrets: map[string]*corev1.Secret{}, kinds: map[string]int{}}
		for _, doc := range releaseutil.SplitManifests(string(b)) {
			if err := r.add(doc); err != nil {
				t.Fatal(err)
			}
		}
		for _, j := range r.jobs {
			checkRestricted(t, j.Name, &j.Spec.Template)
			if a := j.Spec.Template.Spec.AutomountServiceAccountToken; a == nil || *a {
				t.Errorf("%s: the service account token is mounted, and the producer calls no Kubernetes API", j.Name)
			}
		}
	})
}

// A shared cluster places, labels and ranks every pod its own way: each component's pods
// (the provision hook's too) take a priority class, labels and annotations, a node
// selector, tolerations, affinity and their own topology spread.
func TestEveryPodTakesTheClustersSchedulingAndMetadata(t *testing.T) {
	comps := []string{"worker", "collector", "producer", "provision"}
	set := map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}}
	for _, c := range comps {
		set[c] = map[string]any{
			"podLabels":         map[string]any{"example.com/cost-center": c},
			"podAnnotations":    map[string]any{"example.com/owner": "platform"},
			"priorityClassName": "batch-" + c,
			"nodeSelector":      map[string]any{"example.com/pool": "batch"},
			"tolerations":       []any{map[string]any{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}},
			"affinity": map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{
				"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{"key": "kubernetes.io/arch", "operator": "In", "values": []any{"amd64"}}}}}}}},
			"topologySpread": []any{map[string]any{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}},
		}
	}
	set["provision"].(map[string]any)["enabled"] = true
	pods := mustRender(t, set).podSpecs()
	for _, c := range comps {
		pod := pods[c]
		if pod == nil {
			t.Errorf("no %s pod", c)
			continue
		}
		if pod.Labels["example.com/cost-center"] != c || pod.Labels["app.kubernetes.io/component"] != c {
			t.Errorf("%s: pod labels %v", c, pod.Labels)
		}
		if pod.Annotations["example.com/owner"] != "platform" {
			t.Errorf("%s: pod annotations %v", c, pod.Annotations)
		}
		s := pod.Spec
		if s.PriorityClassName != "batch-"+c {
			t.Errorf("%s: priorityClassName %q", c, s.PriorityClassName)
		}
		if s.NodeSelector["example.com/pool"] != "batch" || len(s.Tolerations) != 1 || s.Affinity == nil || s.Affinity.NodeAffinity == nil {
			t.Errorf("%s: nodeSelector %v, tolerations %v, affinity %v", c, s.NodeSelector, s.Tolerations, s.Affinity)
		}
		if len(s.TopologySpreadConstraints) != 1 || s.TopologySpreadConstraints[0].WhenUnsatisfiable != corev1.DoNotSchedule ||
			s.TopologySpreadConstraints[0].LabelSelector == nil || s.TopologySpreadConstraints[0].LabelSelector.MatchLabels["app.kubernetes.io/component"] != c {
			t.Errorf("%s: topologySpreadConstraints %+v, want the component's own, selecting its pods", c, s.TopologySpreadConstraints)
		}
	}
	t.Run("and without, the chart's spread and no priority class", func(t *testing.T) {
		pods := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}, "provision": map[string]any{"enabled": true}}).podSpecs()
		for _, c := range comps {
			want := 2
			if c == "provision" {
				want = 0 // one pod
			}
			if got := len(pods[c].Spec.TopologySpreadConstraints); got != want {
				t.Errorf("%s: %d topology spread constraints, want %d", c, got, want)
			}
			if pods[c].Spec.PriorityClassName != "" {
				t.Errorf("%s: priorityClassName %q", c, pods[c].Spec.PriorityClassName)
			}
		}
	})
}

// Admission policies may require images by digest; the pull secrets reach every pod.
func TestEveryPodTakesTheImageByDigest(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	pods := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}, "provision": map[string]any{"enabled": true},
		"image":            map[string]any{"repository": "registry.example.com/multiquery", "tag": "1.0.0", "digest": digest},
		"imagePullSecrets": []any{map[string]any{"name": "registry"}}}).podSpecs()
	for c, pod := range pods {
		if img := pod.Spec.Containers[0].Image; img != "registry.example.com/multiquery@"+digest {
			t.Errorf("%s: image %s, want it by digest", c, img)
		}
		if len(pod.Spec.ImagePullSecrets) != 1 || pod.Spec.ImagePullSecrets[0].Name != "registry" {
			t.Errorf("%s: imagePullSecrets %v", c, pod.Spec.ImagePullSecrets)
		}
	}
}

// The collector's volume holds every run's output files: a recursive change of their
// group at each start (fsGroupChangePolicy Always, the default) delays a restart or a
// takeover by as long as the walk takes.
func TestTheCollectorsVolumeIsNotWalkedAtEachStart(t *testing.T) {
	pod := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}}).deployments["collector"].Spec.Template
	sc := pod.Spec.SecurityContext
	if sc == nil || sc.FSGroup == nil || *sc.FSGroup != 65532 || sc.FSGroupChangePolicy == nil || *sc.FSGroupChangePolicy != corev1.FSGroupChangeOnRootMismatch {
		t.Errorf("collector: pod securityContext %+v, want fsGroup 65532 with fsGroupChangePolicy OnRootMismatch", sc)
	}
}

// deploy/nats/accounts.conf gives each role its own NATS user, allowed only what the role
// needs; a shared user would need the union of every role's permissions, stream
// administration included (the provision Job's). Each component takes its own user from
// an existing Secret (natsAuth): a .creds file, an nkey seed, or a user and password,
// and exactly one credential reaches each process ("Exactly one method",
// docs/OPERATIONS.md).
func TestEveryRoleConnectsAsItsOwnNATSUser(t *testing.T) {
	set := map[string]any{
		"natsClient": map[string]any{"url": "tls://nats:4222", "creds": map[string]any{"enabled": true, "existingSecret": "mq-shared-nats"},
			"tls": map[string]any{"enabled": true, "existingSecret": "mq-nats-tls", "clientCert": true}},
		"worker":    map[string]any{"natsAuth": map[string]any{"existingSecret": "mq-worker-nats", "type": "password"}},
		"collector": map[string]any{"natsAuth": map[string]any{"existingSecret": "mq-collector-nats", "type": "creds", "key": "collector.creds"}},
		"producer":  map[string]any{"natsAuth": map[string]any{"existingSecret": "mq-producer-nats", "type": "nkey", "key": "seed.nk"}},
		"provision": map[string]any{"enabled": true, "natsAuth": map[string]any{"existingSecret": "mq-admin-nats"}},
	}
	r := mustRender(t, set)
	checkWorkloads(t, r) // every file a flag names is mounted
	want := map[string]struct{ secret, cred string }{
		"worker":    {"mq-worker-nats", "NATS_USER"},
		"collector": {"mq-collector-nats", "--nats-creds=/etc/multiquery/nats-auth/collector.creds"},
		"producer":  {"mq-producer-nats", "--nats-nkey=/etc/multiquery/nats-auth/seed.nk"},
		"provision": {"mq-admin-nats", "--nats-creds=/etc/multiquery/nats-auth/nats.creds"},
	}
	for comp, pod := range r.podSpecs() {
		w := want[comp]
		ctr := pod.Spec.Containers[0]
		creds := credentialsOf(ctr)
		if !slices.Equal(creds, []string{w.cred}) {
			t.Errorf("%s: NATS credentials %q, want only %s", comp, creds, w.cred)
		}
		for _, v := range pod.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "mq-shared-nats" {
				t.Errorf("%s: mounts the shared NATS credentials", comp)
			}
		}
		var refs []string
		for _, e := range ctr.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.Name != "AZURE_OPENAI_API_KEY" {
				refs = append(refs, e.ValueFrom.SecretKeyRef.Name)
			}
		}
		for _, v := range pod.Spec.Volumes {
			if v.Name == "nats-auth" && v.Secret != nil {
				refs = append(refs, v.Secret.SecretName)
			}
		}
		if len(refs) == 0 || slices.ContainsFunc(refs, func(s string) bool { return s != w.secret }) {
			t.Errorf("%s: credentials from Secrets %q, want %s", comp, refs, w.secret)
		}
		if !slices.Contains(ctr.Args, "--nats-tls-cert=/etc/multiquery/nats-tls/tls.crt") {
			t.Errorf("%s: lost the shared TLS client certificate: %q", comp, ctr.Args)
		}
	}
	t.Run("and a component without its own user keeps the shared one", func(t *testing.T) {
		set["collector"] = map[string]any{}
		r := mustRender(t, set)
		ctr := r.deployments["collector"].Spec.Template.Spec.Containers[0]
		if got := credentialsOf(ctr); !slices.Equal(got, []string{"--nats-creds=/etc/multiquery/nats-creds/nats.creds"}) {
			t.Errorf("collector: NATS credentials %q, want the shared .creds", got)
		}
	})
}

// credentialsOf lists the NATS credentials a container is given: flags and variables.
func credentialsOf(ctr corev1.Container) []string {
	var got []string
	for _, a := range ctr.Args {
		for _, f := range []string{"--nats-creds", "--nats-nkey", "--nats-user", "--nats-token"} {
			if strings.HasPrefix(a, f+"=") {
				got = append(got, a)
			}
		}
	}
	for _, e := range ctr.Env {
		if slices.Contains([]string{"NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_TOKEN"}, e.Name) {
			got = append(got, e.Name)
		}
	}
	return got
}

// No secret is written where anyone who may read ConfigMaps, or the pod spec, reads it:
// each chart-made Secret's values appear in no ConfigMap, and every variable that looks
// like a credential comes from a Secret.
func TestNoSecretOutsideASecret(t *testing.T) {
	r := mustRender(t, map[string]any{
		"llmSecret":  map[string]any{"data": map[string]any{"api-key": "sk-do-not-leak-1"}},
		"natsClient": map[string]any{"creds": map[string]any{"content": "do-not-leak-2"}}}, fullValues)
	var values []string
	for _, s := range r.secrets {
		for _, v := range s.StringData {
			values = append(values, strings.TrimSpace(v))
		}
	}
	if !slices.Contains(values, "sk-do-not-leak-1") || !slices.Contains(values, "do-not-leak-2") {
		t.Fatalf("the chart's Secrets lack the test values: %q", values)
	}
	for _, cm := range r.configMaps {
		for file, body := range cm.Data {
			for _, v := range values {
				if strings.Contains(body, v) {
					t.Errorf("ConfigMap %s, %s holds a Secret's value", cm.Name, file)
				}
			}
		}
	}
	secretish := regexp.MustCompile(`(?i)(KEY|PASSWORD|TOKEN|SECRET|CREDS|SEED)$`)
	for comp, pod := range r.podSpecs() {
		for _, ctr := range pod.Spec.Containers {
			for _, e := range ctr.Env {
				if secretish.MatchString(e.Name) && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
					t.Errorf("%s: $%s is not read from a Secret", comp, e.Name)
				}
			}
		}
	}
}

// With networkPolicy.enabled, each component's pods may reach DNS and NATS (the workers
// also the model endpoints) and nothing else, and take connections on their ops port
// only (the provision Job on none).
func TestNetworkPoliciesLetEachPodReachOnlyWhatItNeeds(t *testing.T) {
	monitoring := map[string]any{"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "monitoring"}}}
	base := func(extra map[string]any) map[string]any {
		m := map[string]any{"provision": map[string]any{"enabled": true},
			"networkPolicy": map[string]any{"enabled": true, "metrics": map[string]any{"from": []any{monitoring}}}}
		maps.Copy(m, extra)
		return m
	}
	for _, tc := range []struct {
		name   string
		set    map[string]any
		natsTo map[string]string // the labels the NATS rule's pod selector must have; nil: any destination
	}{
		{"with NATS elsewhere", base(map[string]any{"natsClient": map[string]any{"url": "nats://nats.nats.svc:4222"}}), nil},
		{"with the bundled NATS", base(map[string]any{"nats": map[string]any{"enabled": true}}),
			map[string]string{"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": release, "app.kubernetes.io/component": "nats"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.set)
			checkSelectors(t, r)
			pods := r.podSpecs()
			if len(r.netpols) != len(pods) {
				t.Fatalf("%d NetworkPolicies for %d components", len(r.netpols), len(pods))
			}
			for _, np := range r.netpols {
				comp := np.Labels["app.kubernetes.io/component"]
				if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
					t.Errorf("%s: policyTypes %v, want both", comp, np.Spec.PolicyTypes)
				}
				var egress []int
				for _, rule := range np.Spec.Egress {
					for _, p := range rule.Ports {
						egress = append(egress, p.Port.IntValue())
						if p.Port.IntValue() == 4222 && tc.natsTo != nil &&
							(len(rule.To) != 1 || rule.To[0].PodSelector == nil || !maps.Equal(rule.To[0].PodSelector.MatchLabels, tc.natsTo)) {
							t.Errorf("%s: NATS egress to %+v, want the bundled NATS's pods %v", comp, rule.To, tc.natsTo)
						}
					}
				}
				slices.Sort(egress)
				egress = slices.Compact(egress)
				want := []int{53, 4222}
				if comp == "worker" {
					want = []int{53, 443, 4222}
				}
				if !slices.Equal(egress, want) {
					t.Errorf("%s: egress ports %v, want %v", comp, egress, want)
				}
				var ops int
				for _, p := range pods[comp].Spec.Containers[0].Ports {
					if p.Name == "ops" {
						ops = int(p.ContainerPort)
					}
				}
				switch {
				case ops == 0 && len(np.Spec.Ingress) != 0:
					t.Errorf("%s: ingress %+v, want none", comp, np.Spec.Ingress)
				case ops != 0 && (len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].Ports) != 1 ||
					np.Spec.Ingress[0].Ports[0].Port.IntValue() != ops || len(np.Spec.Ingress[0].From) != 1 ||
					np.Spec.Ingress[0].From[0].NamespaceSelector == nil):
					t.Errorf("%s: ingress %+v, want the ops port %d from the monitoring namespace only", comp, np.Spec.Ingress, ops)
				}
			}
		})
	}
	t.Run("it refuses a NATS URL on a port the policy does not open", func(t *testing.T) {
		_, err := renderChart(t, base(map[string]any{"natsClient": map[string]any{"url": "nats://a:4222,nats://b:4333"}}))
		if err == nil || !strings.Contains(err.Error(), "lacks port 4333") {
			t.Fatalf("render error %v, want one naming port 4333", err)
		}
	})
}

// A rollout or a node drain lets a worker finish its calls: the grace period is above
// --drain-timeout, which is at or above every call timeout of the worker config, and the
// liveness probe tolerates failures for longer than the grace period (it cannot kill a
// draining worker).
func TestWorkersDrainWithinTheirGracePeriod(t *testing.T) {
	for name, files := range map[string][]string{"default values": nil, "every feature on": {fullValues}} {
		t.Run("with "+name, func(t *testing.T) {
			r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"}}, files...)
			pod := r.deployments["worker"].Spec.Template.Spec
			ctr := pod.Containers[0]
			var drain time.Duration
			for _, a := range ctr.Args {
				if v, ok := strings.CutPrefix(a, "--drain-timeout="); ok {
					var err error
					if drain, err = time.ParseDuration(v); err != nil {
						t.Fatal(err)
					}
				}
			}
			grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
			if drain == 0 || grace <= drain {
				t.Errorf("grace period %s, --drain-timeout %s: want the grace period above the drain", grace, drain)
			}
			lp := ctr.LivenessProbe
			if budget := time.Duration(lp.InitialDelaySeconds+lp.PeriodSeconds*lp.FailureThreshold) * time.Second; budget <= grace {
				t.Errorf("the liveness probe gives up after %s, within the grace period %s", budget, grace)
			}
			dir := t.TempDir()
			file := filepath.Join(dir, "worker.yaml")
			if err := os.WriteFile(file, []byte(r.configMaps["mq-multiquery-worker"].Data["worker.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, e := range ctr.Env {
				t.Setenv(e.Name, "placeholder")
			}
			wc, err := config.LoadWorker(file)
			if err != nil {
				t.Fatal(err)
			}
			for alias, d := range wc.Deployments {
				if d.Timeout > drain {
					t.Errorf("deployment %s: call timeout %s above --drain-timeout %s: a drain cancels its calls", alias, d.Timeout, drain)
				}
			}
		})
	}
}

// Keys may reach the workers as files rather than variables (llmSecret.mountPath): every
// api_key_file of the worker config lies on the mounted Secret.
func TestWorkersMayReadTheirKeysFromFiles(t *testing.T) {
	r := mustRender(t, map[string]any{"natsClient": map[string]any{"url": "nats://nats:4222"},
		"llmSecret": map[string]any{"mountPath": "/etc/multiquery/llm-keys"},
		"worker": map[string]any{"apiKeyEnv": nil, "config": map[string]any{"deployments": map[string]any{"default": map[string]any{
			"api_key_env": nil, "api_key_file": "/etc/multiquery/llm-keys/api-key"}}}}})
	pod := r.deployments["worker"].Spec.Template.Spec
	ctr := pod.Containers[0]
	if slices.ContainsFunc(ctr.Env, func(e corev1.EnvVar) bool { return e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil }) {
		t.Errorf("the keys are still in the environment: %+v", ctr.Env)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "worker.yaml")
	if err := os.WriteFile(file, []byte(r.configMaps["mq-multiquery-worker"].Data["worker.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "api_key_file: /etc/multiquery/llm-keys/api-key") || strings.Contains(string(b), "api_key_env") {
		t.Fatalf("the worker config does not read the key from the file:\n%s", b)
	}
	var mount *corev1.VolumeMount
	for i, m := range ctr.VolumeMounts {
		if strings.HasPrefix("/etc/multiquery/llm-keys/api-key", m.MountPath+"/") {
			mount = &ctr.VolumeMounts[i]
		}
	}
	if mount == nil || !mount.ReadOnly {
		t.Fatalf("no read-only mount holds the key file: %+v", ctr.VolumeMounts)
	}
	i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name })
	if i < 0 || pod.Volumes[i].Secret == nil || pod.Volumes[i].Secret.SecretName != "multiquery-llm" {
		t.Errorf("the key files come from %+v, want the Secret multiquery-llm", pod.Volumes)
	}
}
