package validate

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
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
