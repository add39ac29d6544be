package mutate_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/mutate"
	"github.com/podmeta/podmeta/patch"
)

// FuzzAnnotations sets two arbitrary podmeta annotations (and a user env
// var and mount path, to collide with) on a pod. Either the pod is refused
// with errors that are all *mutate.AnnotationError, or the result is
// idempotent and the add-only patch reproduces it from the raw pod.
//
// Longer run: go test ./mutate -run '^$' -fuzz FuzzAnnotations -fuzztime 10m
func FuzzAnnotations(f *testing.F) {
	f.Add("env", "true", "containers", "app", "POD_NAME", "/etc/podinfo")
	f.Add("env-prefix", "APP_", "mount-path", "/run/meta", "APP_POD_IP", "/run/meta")
	f.Add("ambassador-policy", "allow-list", "ambassador-allow", "GET /api/**; PATCH /api/v1/namespaces/*/configmaps/x", "X", "/x")
	f.Add("ambassador-port", "65534", "native-sidecar", "false", "PODMETA_AMBASSADOR_URL", "/")
	f.Add("containers", "app,side", "volume", "false", "", "")
	f.Add("status", "{}", "ambassador", "maybe", "A", "/a/b")
	f.Add("unknown", "x", "mount-path", "/etc/../etc", "POD_NAME", "/etc")
	f.Add("ambassador-shutdown-delay", "20", "native-sidecar", "false", "A", "/a")
	f.Add("ambassador-shutdown-delay", "301", "native-sidecar", "true", "A", "/a")
	cfg := mutate.DefaultConfig()
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, userEnv, userMount string) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name:        "fuzz",
				Labels:      map[string]string{mutate.LabelInject: "true"},
				Annotations: map[string]string{"podmeta.io/" + k1: v1, "podmeta.io/" + k2: v2},
			},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "app", Env: []corev1.EnvVar{{Name: userEnv, Value: "u"}}, VolumeMounts: []corev1.VolumeMount{{Name: "u", MountPath: userMount}}},
				{Name: "side"},
			}},
		}
		if report, ok := checkInvariants(t, pod, cfg); ok && !report.OptedIn {
			t.Fatal("opted-in pod reported as not opted in")
		}
	})
}

// FuzzPodShapes builds pods of many shapes from the fuzzer's bytes: init
// and regular containers with absent, empty or populated env and mount
// lists, names that collide with podmeta's (env vars, the volume, the mount
// path, the ambassador and its token volume), absent or empty annotation
// maps, host network, restart policies, and the feature annotations. For
// every shape the invariants of TestGolden must hold: input untouched,
// idempotent, add-only patch that reproduces the result from the raw JSON.
//
// Longer run: go test ./mutate -run '^$' -fuzz FuzzPodShapes -fuzztime 10m
func FuzzPodShapes(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{255, 254, 253, 252, 251, 250, 249, 248, 247, 246, 245, 244, 243, 242})
	f.Add([]byte("podmeta shapes: a longer seed for more containers"))
	cfg := mutate.DefaultConfig()
	f.Fuzz(func(t *testing.T, data []byte) {
		i := 0
		next := func() byte {
			if i >= len(data) {
				return 0
			}
			i++
			return data[i-1]
		}
		envNames := []string{"POD_NAME", "POD_IP", "CPU_LIMIT", "PODMETA_AMBASSADOR_URL", "APP_POD_NAME", "OTHER", "OTHER"}
		container := func(name string) corev1.Container {
			c := corev1.Container{Name: name, Image: "example.com/" + name}
			switch b := next(); b % 3 {
			case 1:
				c.Env = []corev1.EnvVar{}
			case 2:
				for range int(b/3)%4 + 1 {
					c.Env = append(c.Env, corev1.EnvVar{Name: envNames[int(next())%len(envNames)], Value: "user"})
				}
			}
			switch b := next(); b % 4 {
			case 1:
				c.VolumeMounts = []corev1.VolumeMount{}
			case 2:
				c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
			case 3:
				c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/etc/podinfo"}}
			}
			if next()%5 == 0 {
				c.Ports = []corev1.ContainerPort{{ContainerPort: int32(8000 + int(next())%4)}}
			}
			return c
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "shape", Labels: map[string]string{mutate.LabelInject: "true"}}}
		annotationValues := map[string][]string{
			mutate.AnnotationEnv:           {"true", "false"},
			mutate.AnnotationVolume:        {"true", "false"},
			mutate.AnnotationAmbassador:    {"true", "false"},
			mutate.AnnotationNativeSidecar: {"true", "false"},
			mutate.AnnotationEnvPrefix:     {"", "APP_"},
			mutate.AnnotationContainers:    {"c0", "c0,i0"},
		}
		switch next() % 3 {
		case 1:
			pod.Annotations = map[string]string{}
		case 2:
			pod.Annotations = map[string]string{"example.com/a~b": "x"}
		}
		for _, k := range []string{mutate.AnnotationEnv, mutate.AnnotationVolume, mutate.AnnotationAmbassador,
			mutate.AnnotationNativeSidecar, mutate.AnnotationEnvPrefix, mutate.AnnotationContainers} {
			if b := next(); b%3 == 0 {
				if pod.Annotations == nil {
					pod.Annotations = map[string]string{}
				}
				vs := annotationValues[k]
				pod.Annotations[k] = vs[int(b/3)%len(vs)]
			}
		}
		for n := range int(next()) % 3 {
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, container(fmt.Sprintf("i%d", n)))
		}
		if next()%2 == 1 && pod.Spec.InitContainers == nil {
			pod.Spec.InitContainers = []corev1.Container{}
		}
		for n := range int(next())%3 + 1 {
			pod.Spec.Containers = append(pod.Spec.Containers, container(fmt.Sprintf("c%d", n)))
		}
		if next()%6 == 0 {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: mutate.AmbassadorName, Image: "user/proxy"})
		}
		switch b := next(); b % 5 {
		case 1:
			pod.Spec.Volumes = []corev1.Volume{}
		case 2:
			pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
		case 3:
			pod.Spec.Volumes = []corev1.Volume{{Name: "podmeta"}}
		case 4:
			pod.Spec.Volumes = []corev1.Volume{{Name: mutate.APIAccessVolumeName}}
		}
		pod.Spec.HostNetwork = next()%7 == 0
		pod.Spec.RestartPolicy = []corev1.RestartPolicy{"", corev1.RestartPolicyAlways, corev1.RestartPolicyNever, corev1.RestartPolicyOnFailure}[next()%4]

		checkInvariants(t, pod, cfg)
	})
}

// checkInvariants runs mutate.Pod on pod as the webhook sees it (encoded
// and decoded again, so invalid UTF-8 has become U+FFFD) and checks what
// TestGolden checks: only AnnotationErrors, input untouched, idempotent,
// add-only patch that reproduces the result from the raw JSON. ok is false
// when the pod was refused (an AnnotationError).
func checkInvariants(t *testing.T, pod *corev1.Pod, cfg mutate.Config) (report mutate.Report, ok bool) {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	pod = new(corev1.Pod)
	if err := json.Unmarshal(raw, pod); err != nil {
		t.Fatal(err)
	}
	before, _ := json.Marshal(pod)
	mutated, report, err := mutate.Pod(pod, cfg)
	if err != nil {
		var ae *mutate.AnnotationError
		if !errors.As(err, &ae) {
			t.Fatalf("error is not an AnnotationError: %v", err)
		}
		return report, false
	}
	if after, _ := json.Marshal(pod); string(after) != string(before) {
		t.Fatalf("input modified:\nbefore: %s\nafter:  %s", before, after)
	}
	again, _, err := mutate.Pod(mutated, cfg)
	if err != nil || again != mutated {
		a, _ := json.Marshal(again)
		m, _ := json.Marshal(mutated)
		t.Fatalf("not idempotent (%v):\nfirst:  %s\nsecond: %s", err, m, a)
	}
	ops, err := patch.Pod(pod, mutated)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op.Op != "add" {
			t.Fatalf("op %s at %s", op.Op, op.Path)
		}
	}
	p := marshalPatch(t, ops)
	jp, err := jsonpatch.DecodePatch(p)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := jp.Apply(raw)
	if err != nil {
		t.Fatalf("apply: %v\npatch: %s\nraw: %s", err, p, raw)
	}
	var got corev1.Pod
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	g, _ := json.Marshal(&got)
	m, _ := json.Marshal(mutated)
	if string(g) != string(m) {
		t.Fatalf("patched pod differs:\ngot:  %s\nwant: %s", g, m)
	}
	return report, true
}
