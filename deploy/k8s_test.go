package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kinds are the API types the manifests may use, by apiVersion and kind.
// A manifest of another kind fails the test: add its Go type here.
var kinds = map[string]func() any{
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                              func() any { return &corev1.Secret{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"v1/Namespace":                           func() any { return &corev1.Namespace{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"apps/v1/DaemonSet":                      func() any { return &appsv1.DaemonSet{} },
	"apps/v1/StatefulSet":                    func() any { return &appsv1.StatefulSet{} },
	"batch/v1/Job":                           func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
}

// rendered is one overlay's output, decoded.
type rendered struct {
	objects []any
	byKind  map[string][]any // by kind
}

// render runs kustomize on dir and decodes every resource strictly: a
// field the Kubernetes type does not have (a typo, a field at the wrong
// level) is an error, as the API server's strict field validation makes it.
func render(t *testing.T, dir string) rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out := rendered{byKind: map[string][]any{}}
	for _, r := range resMap.Resources() {
		raw, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		gvk := r.GetGvk()
		key := gvk.Kind
		if gvk.Group != "" {
			key = gvk.Group + "/" + gvk.Version + "/" + gvk.Kind
		} else {
			key = gvk.Version + "/" + gvk.Kind
		}
		newObj, ok := kinds[key]
		if !ok {
			t.Fatalf("%s: %s is not a kind this test knows; add its k8s.io/api type", r.CurId(), key)
		}
		obj := newObj()
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			t.Fatalf("%s %s does not decode strictly into %T: %v", key, r.GetName(), obj, err)
		}
		out.objects = append(out.objects, obj)
		out.byKind[gvk.Kind] = append(out.byKind[gvk.Kind], obj)
	}
	return out
}

func (r rendered) names(kind string) []string {
	var out []string
	for _, o := range r.byKind[kind] {
		out = append(out, o.(metav1.Object).GetName())
	}
	return out
}

// TestKubernetesManifests renders the base and every overlay and checks
// what a kubectl apply would only find out later: every object decodes
// into its API type, selectors select their own pods, Services, budgets
// and autoscalers point at what exists, every container is unprivileged
// with resources, the control plane has probes, and the Secrets and
// ConfigMaps referred to exist (or are the ones an overlay documents as
// created outside it).
func TestKubernetesManifests(t *testing.T) {
	for _, tc := range []struct {
		dir       string
		namespace string
		external  []string // Secrets created outside kustomize (documented in the overlay)
		replicas  int32    // the autoscaler's minimum
	}{
		{"k8s/base", "", []string{"opsconductor-secrets", "opsconductor-agent-join"}, 2},
		{"k8s/overlays/dev", "opsconductor-dev", nil, 1},
		{"k8s/overlays/prod", "opsconductor", []string{"opsconductor-secrets", "opsconductor-agent-join"}, 3},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			r := render(t, tc.dir)
			for _, o := range r.objects {
				m := o.(metav1.Object)
				if _, isNS := o.(*corev1.Namespace); !isNS && m.GetNamespace() != tc.namespace {
					t.Errorf("%T %s in namespace %q, want %q", o, m.GetName(), m.GetNamespace(), tc.namespace)
				}
			}
			deployments := r.byKind["Deployment"]
			if len(deployments) != 1 {
				t.Fatalf("want the control plane's Deployment, got %v", r.names("Deployment"))
			}
			cp := deployments[0].(*appsv1.Deployment)
			if cp.Spec.Replicas != nil {
				t.Errorf("the control plane's Deployment sets replicas (%d): the autoscaler owns the count", *cp.Spec.Replicas)
			}
			if len(r.byKind["DaemonSet"]) != 1 || len(r.byKind["Job"]) != 1 {
				t.Errorf("want the agent DaemonSet and the migrations Job, got %v and %v", r.names("DaemonSet"), r.names("Job"))
			}

			configMaps := map[string]bool{}
			for _, n := range r.names("ConfigMap") {
				configMaps[n] = true
			}
			secrets := map[string]bool{}
			for _, n := range append(r.names("Secret"), tc.external...) {
				secrets[n] = true
			}
			checkPod := func(what string, selector *metav1.LabelSelector, tmpl corev1.PodTemplateSpec) {
				t.Helper()
				if selector != nil {
					sel, err := metav1.LabelSelectorAsSelector(selector)
					if err != nil || !sel.Matches(labels.Set(tmpl.Labels)) {
						t.Errorf("%s: its selector %v does not select its own pods %v (%v)", what, selector.MatchLabels, tmpl.Labels, err)
					}
				}
				pod := tmpl.Spec
				if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
					t.Errorf("%s: the pod does not require a non-root user", what)
				}
				for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
					where := what + " container " + c.Name
					if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
						t.Errorf("%s: no memory request and limit", where)
					}
					sc := c.SecurityContext
					if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
						!slices.Contains(sc.Capabilities.Drop, "ALL") {
						t.Errorf("%s: must drop all capabilities and forbid privilege escalation", where)
					}
					for _, from := range c.EnvFrom {
						if from.ConfigMapRef != nil && !configMaps[from.ConfigMapRef.Name] {
							t.Errorf("%s: ConfigMap %s does not exist", where, from.ConfigMapRef.Name)
						}
						if from.SecretRef != nil && !secrets[from.SecretRef.Name] {
							t.Errorf("%s: Secret %s does not exist", where, from.SecretRef.Name)
						}
					}
				}
				for _, v := range pod.Volumes {
					if v.Secret != nil && !secrets[v.Secret.SecretName] {
						t.Errorf("%s: volume %s: Secret %s does not exist", what, v.Name, v.Secret.SecretName)
					}
				}
			}
			checkPod("Deployment "+cp.Name, cp.Spec.Selector, cp.Spec.Template)
			c := cp.Spec.Template.Spec.Containers[0]
			if c.ReadinessProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/health" {
				t.Errorf("control plane: want a readiness probe on /health and a liveness probe, got %+v %+v", c.ReadinessProbe, c.LivenessProbe)
			}
			if sc := c.SecurityContext; sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Error("control plane: the root filesystem must be read-only")
			}
			for _, o := range r.byKind["DaemonSet"] {
				ds := o.(*appsv1.DaemonSet)
				checkPod("DaemonSet "+ds.Name, ds.Spec.Selector, ds.Spec.Template)
			}
			for _, o := range r.byKind["StatefulSet"] {
				ss := o.(*appsv1.StatefulSet)
				checkPod("StatefulSet "+ss.Name, ss.Spec.Selector, ss.Spec.Template)
			}
			for _, o := range r.byKind["Job"] {
				j := o.(*batchv1.Job)
				checkPod("Job "+j.Name, nil, j.Spec.Template)
				if !slices.Equal(j.Spec.Template.Spec.Containers[0].Args, []string{"migrate"}) {
					t.Errorf("Job %s runs %v, want migrate", j.Name, j.Spec.Template.Spec.Containers[0].Args)
				}
			}

			podsOf := func(sel map[string]string) []string {
				var hit []string
				for _, o := range r.objects {
					var tmpl *corev1.PodTemplateSpec
					switch w := o.(type) {
					case *appsv1.Deployment:
						tmpl = &w.Spec.Template
					case *appsv1.DaemonSet:
						tmpl = &w.Spec.Template
					case *appsv1.StatefulSet:
						tmpl = &w.Spec.Template
					}
					if tmpl != nil && len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(tmpl.Labels)) {
						hit = append(hit, fmt.Sprintf("%T %s", o, o.(metav1.Object).GetName()))
					}
				}
				return hit
			}
			for _, o := range r.byKind["Service"] {
				svc := o.(*corev1.Service)
				if got := podsOf(svc.Spec.Selector); len(got) != 1 {
					t.Errorf("Service %s selects %v, want one workload", svc.Name, got)
				}
			}
			for _, o := range r.byKind["PodDisruptionBudget"] {
				pdb := o.(*policyv1.PodDisruptionBudget)
				if got := podsOf(pdb.Spec.Selector.MatchLabels); len(got) != 1 || !strings.Contains(got[0], "Deployment") {
					t.Errorf("PodDisruptionBudget %s selects %v, want the control plane", pdb.Name, got)
				}
			}
			for _, o := range r.byKind["HorizontalPodAutoscaler"] {
				hpa := o.(*autoscalingv2.HorizontalPodAutoscaler)
				if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != cp.Name {
					t.Errorf("HorizontalPodAutoscaler %s scales %+v, want Deployment %s", hpa.Name, hpa.Spec.ScaleTargetRef, cp.Name)
				}
				if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != tc.replicas || hpa.Spec.MaxReplicas < tc.replicas {
					t.Errorf("HorizontalPodAutoscaler %s: replicas %v..%d, want from %d", hpa.Name, hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas, tc.replicas)
				}
			}
			// The control plane's settings are ones it knows.
			for _, o := range r.byKind["ConfigMap"] {
				for k := range o.(*corev1.ConfigMap).Data {
					if !strings.HasPrefix(k, "OPSCONDUCTOR_") {
						t.Errorf("ConfigMap key %s is not an OPSCONDUCTOR_ setting", k)
					}
				}
			}
		})
	}
}

// TestStrictDecodingCatchesTypos: the check above would catch a
// misplaced field, not only a wrong kind.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	dec := json.NewDecoder(strings.NewReader(`{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replica":2}}`))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&appsv1.Deployment{}); err == nil {
		t.Fatal("a Deployment with spec.replica (a typo) decoded")
	}
}
