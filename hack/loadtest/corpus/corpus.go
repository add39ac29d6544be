// Package corpus builds the pods the load tool sends and encodes them as
// AdmissionReview v1 requests. The pods are generated rather than shipped so
// their shape is stated in one place (and tested), and every pod is labeled
// for injection: a pod the webhook skips would measure the wrong code path.
package corpus

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Sizes lists the corpus pods in increasing size.
var Sizes = []string{"small", "medium", "large"}

// InjectLabel is the opt-in label every corpus pod carries.
const InjectLabel = "podmeta.io/inject"

// Pod returns the named corpus pod.
func Pod(size string) (*corev1.Pod, error) {
	switch size {
	case "small":
		return small(), nil
	case "medium":
		return medium(), nil
	case "large":
		return large(), nil
	}
	return nil, fmt.Errorf("unknown pod size %q (want one of %s)", size, strings.Join(Sizes, ", "))
}

func meta(name string) metav1.ObjectMeta {
	ctrl := true
	return metav1.ObjectMeta{
		GenerateName: name + "-7d9c5b6f4-",
		Namespace:    "loadtest",
		Labels: map[string]string{
			"app.kubernetes.io/name": name,
			"pod-template-hash":      "7d9c5b6f4",
			InjectLabel:              "true",
		},
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name + "-7d9c5b6f4",
			UID: "5f0c2b1e-9a7d-4c1e-8b3a-2d6e4f8a1c09", Controller: &ctrl, BlockOwnerDeletion: &ctrl,
		}},
	}
}

func resources(cpu, mem string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
	}
}

func envVars(n int, prefix string) []corev1.EnvVar {
	env := make([]corev1.EnvVar, 0, n)
	for i := range n {
		name := fmt.Sprintf("%s_SETTING_%02d", prefix, i)
		switch i % 4 {
		case 3: // a realistic mix: most literal, some from ConfigMaps and Secrets
			env = append(env, corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
				ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "app-config"}, Key: strings.ToLower(name)},
			}})
		default:
			env = append(env, corev1.EnvVar{Name: name, Value: fmt.Sprintf("value-%d-of-a-typical-length", i)})
		}
	}
	return env
}

func container(name string, env int, cpu, mem string) corev1.Container {
	return corev1.Container{
		Name:      name,
		Image:     "registry.example/team/" + name + ":v1.42.0",
		Args:      []string{"--config=/etc/app/config.yaml", "--log-level=info"},
		Ports:     []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		Env:       envVars(env, strings.ToUpper(strings.ReplaceAll(name, "-", "_"))),
		Resources: resources(cpu, mem),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: "/etc/app", ReadOnly: true},
		},
		ImagePullPolicy:          corev1.PullIfNotPresent,
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
	}
}

func spec(containers, inits []corev1.Container) corev1.PodSpec {
	grace := int64(30)
	return corev1.PodSpec{
		InitContainers:                inits,
		Containers:                    containers,
		ServiceAccountName:            "app",
		RestartPolicy:                 corev1.RestartPolicyAlways,
		DNSPolicy:                     corev1.DNSClusterFirst,
		SchedulerName:                 corev1.DefaultSchedulerName,
		TerminationGracePeriodSeconds: &grace,
		Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app-config"}},
		}}},
		Tolerations: []corev1.Toleration{
			{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
			{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		},
	}
}

func pod(m metav1.ObjectMeta, s corev1.PodSpec) *corev1.Pod {
	return &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: m, Spec: s}
}

// small: one container, a few env vars: the floor of the webhook's work.
func small() *corev1.Pod {
	return pod(meta("small"), spec([]corev1.Container{container("app", 2, "100m", "128Mi")}, nil))
}

// medium: a typical application pod: two init containers and two containers
// with ~10 env vars each.
func medium() *corev1.Pod {
	return pod(meta("medium"), spec(
		[]corev1.Container{container("app", 10, "500m", "512Mi"), container("log-shipper", 10, "50m", "64Mi")},
		[]corev1.Container{container("migrate", 10, "200m", "256Mi"), container("fetch-config", 10, "50m", "32Mi")},
	))
}

// LargeAnnotationBytes is the approximate annotation payload of the large pod.
const LargeAnnotationBytes = 8 << 10

// large: 10 containers × 40 env vars and ~8 KiB of annotations, the shape
// that made naive JSON diffs quadratic elsewhere (istio#34799).
func large() *corev1.Pod {
	m := meta("large")
	m.Annotations = map[string]string{}
	for i := 0; i < 16; i++ {
		// 16 × 512 bytes of value plus keys ≈ 8 KiB.
		m.Annotations[fmt.Sprintf("example.com/config-%02d", i)] = strings.Repeat(string(rune('a'+i)), LargeAnnotationBytes/16)
	}
	cs := make([]corev1.Container, 10)
	for i := range cs {
		cs[i] = container(fmt.Sprintf("worker-%d", i), 40, "100m", "128Mi")
	}
	return pod(m, spec(cs, nil))
}
