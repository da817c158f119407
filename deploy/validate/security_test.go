package validate

import (
	"maps"
	"os"
	"slices"
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
