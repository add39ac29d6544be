package admission

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/mutate"
	"github.com/podmeta/podmeta/patch"
)

// TestDecodeLeavesOutOnlyUnread guards the fast path's unread list: for
// every mutate golden pod and the realistic review's pod, as they are and
// with every unread type filled in, the handler's patch (pod decoded
// without those types) must be byte for byte the patch of mutate.Pod on
// the fully decoded pod. If mutate starts reading one of them, this fails.
func TestDecodeLeavesOutOnlyUnread(t *testing.T) {
	pods := map[string][]byte{}
	inputs, err := filepath.Glob("../mutate/testdata/*.pod.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, inputs)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".pod.yaml")
		if _, err := os.Stat(strings.TrimSuffix(in, ".pod.yaml") + ".config.yaml"); err == nil {
			continue // another config; its pod shapes are in the other cases
		}
		y, err := os.ReadFile(in)
		require.NoError(t, err)
		raw, err := yaml.YAMLToJSON(y)
		require.NoError(t, err)
		pods[name] = raw
	}
	var realistic admissionv1.AdmissionReview
	b, err := os.ReadFile("testdata/review-deployment-pod.json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &realistic))
	pods["realistic-review"] = realistic.Request.Object.Raw

	cfg := mutate.DefaultConfig()
	hh, err := NewHandler(cfg, slog.New(slog.DiscardHandler), nil)
	require.NoError(t, err)
	h := hh.(*handler)
	for name, raw := range pods {
		var full corev1.Pod
		require.NoError(t, unmarshal(raw, &full), name)
		filled := full.DeepCopy()
		fillUnread(filled, false)
		filledRaw, err := json.Marshal(filled)
		require.NoError(t, err)
		guaranteed := full.DeepCopy()
		fillUnread(guaranteed, true)
		guaranteedRaw, err := json.Marshal(guaranteed)
		require.NoError(t, err)
		for variant, obj := range map[string][]byte{"as is": raw, "filled": filledRaw, "filled-guaranteed": guaranteedRaw} {
			t.Run(name+"/"+variant, func(t *testing.T) {
				body := review("u", "CREATE", "Pod", string(obj))
				_, _, fast, err := decode([]byte(body))
				require.NoError(t, err)
				require.NotNil(t, fast)
				if variant != "as is" {
					// The fast path was taken and left the types out.
					require.NotNil(t, fast.Spec.Affinity)
					assert.Nil(t, fast.Spec.Affinity.PodAffinity, "the fast path did not leave out the unread types")
					assert.Nil(t, fast.Spec.Affinity.PodAntiAffinity)
					assert.Empty(t, fast.Spec.Affinity.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution)
					require.NotNil(t, fast.Spec.Resources)
					assert.NotContains(t, fast.Spec.Resources.Limits, hugePages, "only CPU and memory are decoded")
					assert.Nil(t, fast.Spec.SecurityContext)
					assert.Empty(t, fast.Spec.Tolerations)
					assert.Empty(t, fast.Spec.TopologySpreadConstraints)
					assert.Empty(t, fast.ManagedFields)
					assert.Empty(t, fast.OwnerReferences)
					assert.Empty(t, fast.Status.Phase)
					for _, c := range append(fast.Spec.InitContainers, fast.Spec.Containers...) {
						for _, l := range []corev1.ResourceList{c.Resources.Limits, c.Resources.Requests} {
							assert.ElementsMatch(t, []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}, slices.Collect(maps.Keys(l)),
								"only CPU and memory are decoded")
						}
						assert.Empty(t, c.Resources.Claims)
						assert.Nil(t, c.LivenessProbe)
						assert.Nil(t, c.ReadinessProbe)
						assert.Nil(t, c.StartupProbe)
						assert.Nil(t, c.Lifecycle)
						assert.Nil(t, c.SecurityContext)
					}
					assert.Equal(t, len(full.Spec.Containers), len(fast.Spec.Containers), "containers decoded")
					assert.Equal(t, len(full.Spec.InitContainers), len(fast.Spec.InitContainers), "init containers decoded")
				}

				var want []byte
				var pod corev1.Pod
				require.NoError(t, unmarshal(obj, &pod))
				mutated, _, mutErr := mutate.Pod(&pod, cfg)
				if mutErr == nil {
					ops, err := patch.Pod(&pod, mutated)
					require.NoError(t, err)
					if len(ops) > 0 {
						want, err = patch.Marshal(ops)
						require.NoError(t, err)
					}
				}

				rec := post(h, "application/json", body)
				out := decodeResponse(t, rec)
				if mutErr != nil {
					require.False(t, out.Response.Allowed)
					assert.Equal(t, "podmeta: "+mutErr.Error(), out.Response.Result.Message)
					return
				}
				assert.Equal(t, string(want), string(out.Response.Patch))
			})
		}
	}
}

const hugePages = corev1.ResourceHugePagesPrefix + "2Mi"

// fillUnread sets every field the fast path leaves out, in the pod and each
// container, next to the CPU and memory it keeps (guaranteed: requests equal
// to limits in every container).
func fillUnread(p *corev1.Pod, guaranteed bool) {
	q := resource.MustParse
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:containers":{}}}`)}}}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "u"}}
	p.Status = corev1.PodStatus{Phase: corev1.PodPending, PodIP: "10.0.0.1"}
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(1000))}
	term := corev1.PodAffinityTerm{TopologyKey: "zone", LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}}
	if p.Spec.Affinity == nil {
		p.Spec.Affinity = &corev1.Affinity{}
	}
	if p.Spec.Affinity.NodeAffinity == nil {
		p.Spec.Affinity.NodeAffinity = &corev1.NodeAffinity{}
	}
	// Preferred terms do not pin the pod to Windows: left out.
	p.Spec.Affinity.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution = []corev1.PreferredSchedulingTerm{{Weight: 1,
		Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"windows"}}}}}}
	p.Spec.Affinity.PodAffinity = &corev1.PodAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{term}}
	p.Spec.Affinity.PodAntiAffinity = &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{term}}
	p.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}}
	p.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "zone", WhenUnsatisfiable: corev1.DoNotSchedule}}
	// Pod-level, but not CPU or memory: left out (and without CPU or
	// memory pod-level values do not apply).
	if p.Spec.Resources == nil {
		p.Spec.Resources = &corev1.ResourceRequirements{}
	}
	if p.Spec.Resources.Limits == nil {
		p.Spec.Resources.Limits = corev1.ResourceList{}
	}
	p.Spec.Resources.Limits[hugePages] = q("2Mi")
	probe := func(port int) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt(port)}}}
	}
	fill := func(c *corev1.Container) {
		c.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: q("100m"), corev1.ResourceMemory: q("64Mi"), corev1.ResourceEphemeralStorage: q("1Gi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: q("1"), corev1.ResourceMemory: q("128Mi"), "example.com/gpu": q("1")},
			Claims:   []corev1.ResourceClaim{{Name: "gpu"}},
		}
		if guaranteed {
			c.Resources.Limits[corev1.ResourceCPU] = q("100m")
			c.Resources.Limits[corev1.ResourceMemory] = q("64Mi")
		}
		c.LivenessProbe, c.ReadinessProbe, c.StartupProbe = probe(8001), probe(8002), probe(9000)
		c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}}
		c.SecurityContext = &corev1.SecurityContext{ReadOnlyRootFilesystem: ptr.To(true)}
	}
	for i := range p.Spec.InitContainers {
		fill(&p.Spec.InitContainers[i])
	}
	for i := range p.Spec.Containers {
		fill(&p.Spec.Containers[i])
	}
}

// TestDecodeSlicesExact: env and container lists are decoded at their
// exact length (no doubling slack), and null and [] keep their meaning,
// the general path's.
func TestDecodeSlicesExact(t *testing.T) {
	env := func(n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"name":"V%d","value":"x"}`, i)
		}
		return "[" + b.String() + "]"
	}
	for _, tc := range []struct {
		name, containers string
		wantEnv          []int // per container, -1 for a nil list
	}{
		{"lists", `[{"name":"a","env":` + env(40) + `},{"name":"b","env":` + env(3) + `},{"name":"c","env":` + env(1) + `}]`, []int{40, 3, 1}},
		{"null and empty", `[{"name":"a","env":null},{"name":"b","env":[]},{"name":"c"}]`, []int{-1, 0, -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj := `{"metadata":{"labels":{"podmeta.io/inject":"true"}},"spec":{"containers":` + tc.containers + `}}`
			_, _, fast, err := decode([]byte(review("u", "CREATE", "Pod", obj)))
			require.NoError(t, err)
			var full corev1.Pod
			require.NoError(t, unmarshal([]byte(obj), &full))
			assert.Equal(t, full.Spec, fast.Spec, "same pod as the general path")
			require.Len(t, fast.Spec.Containers, len(tc.wantEnv))
			assert.Equal(t, len(tc.wantEnv), cap(fast.Spec.Containers), "containers")
			for i, n := range tc.wantEnv {
				e := fast.Spec.Containers[i].Env
				if n < 0 {
					assert.Nil(t, e)
					continue
				}
				assert.NotNil(t, e)
				assert.Len(t, e, n)
				assert.Equal(t, n, cap(e), "env of container %d", i)
			}
		})
	}
	// Not an array: the fast path refuses it, the general path explains.
	h, _ := newTestHandler(t)
	rec := post(h, "application/json", review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","env":{}}]}}`))
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, rec.Body.String(), "decode request object as a Pod")
}
