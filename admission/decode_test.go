package admission

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
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
		fillUnread(filled)
		filledRaw, err := json.Marshal(filled)
		require.NoError(t, err)
		for variant, obj := range map[string][]byte{"as is": raw, "filled": filledRaw} {
			t.Run(name+"/"+variant, func(t *testing.T) {
				body := review("u", "CREATE", "Pod", string(obj))
				_, _, fast, err := decode([]byte(body))
				require.NoError(t, err)
				require.NotNil(t, fast)
				if variant == "filled" {
					// The fast path was taken and left the types out.
					assert.Nil(t, fast.Spec.Affinity, "the fast path did not leave out the unread types")
					if fast.Spec.Resources != nil { // allocated, then skipped
						assert.Empty(t, fast.Spec.Resources.Limits)
					}
					assert.Nil(t, fast.Spec.SecurityContext)
					assert.Empty(t, fast.Spec.Tolerations)
					assert.Empty(t, fast.Spec.TopologySpreadConstraints)
					assert.Empty(t, fast.ManagedFields)
					assert.Empty(t, fast.OwnerReferences)
					assert.Empty(t, fast.Status.Phase)
					for _, c := range append(fast.Spec.InitContainers, fast.Spec.Containers...) {
						assert.Empty(t, c.Resources.Limits)
						assert.Empty(t, c.Resources.Requests)
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

// fillUnread sets every field unreadPod leaves out, in the pod and each
// container.
func fillUnread(p *corev1.Pod) {
	q := resource.MustParse
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:containers":{}}}`)}}}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "u"}}
	p.Status = corev1.PodStatus{Phase: corev1.PodPending, PodIP: "10.0.0.1"}
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(1000))}
	p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "k", Operator: corev1.NodeSelectorOpExists}}}}}}}
	p.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}}
	p.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "zone", WhenUnsatisfiable: corev1.DoNotSchedule}}
	p.Spec.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: q("2")}}
	probe := func(port int) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt(port)}}}
	}
	fill := func(c *corev1.Container) {
		c.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: q("100m"), corev1.ResourceMemory: q("64Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: q("1"), corev1.ResourceMemory: q("128Mi")},
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
