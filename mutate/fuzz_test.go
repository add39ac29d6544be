package mutate_test

import (
	"encoding/json"
	"errors"
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
		raw, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		// Work on the pod as the webhook sees it: decoded from JSON, where
		// invalid UTF-8 has become U+FFFD.
		pod = new(corev1.Pod)
		if err := json.Unmarshal(raw, pod); err != nil {
			t.Fatal(err)
		}
		mutated, report, err := mutate.Pod(pod, cfg)
		if err != nil {
			var ae *mutate.AnnotationError
			if !errors.As(err, &ae) {
				t.Fatalf("error is not an AnnotationError: %v", err)
			}
			return
		}
		if !report.OptedIn {
			t.Fatal("opted-in pod reported as not opted in")
		}
		again, _, err := mutate.Pod(mutated, cfg)
		if err != nil {
			t.Fatalf("second pass: %v", err)
		}
		if again != mutated {
			a, _ := json.Marshal(again)
			m, _ := json.Marshal(mutated)
			t.Fatalf("not idempotent:\nfirst:  %s\nsecond: %s", m, a)
		}
		ops, err := patch.Pod(pod, mutated)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := json.Marshal(ops)
		jp, err := jsonpatch.DecodePatch(p)
		if err != nil {
			t.Fatal(err)
		}
		patched, err := jp.Apply(raw)
		if err != nil {
			t.Fatalf("apply: %v\n%s", err, p)
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
	})
}
