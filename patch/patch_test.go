package patch

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEscapeKey(t *testing.T) {
	for in, want := range map[string]string{
		"plain":              "plain",
		"podmeta.io/status":  "podmeta.io~1status",
		"a~b":                "a~0b",
		"~/":                 "~0~1",
		"example.com/x~1":    "example.com~1x~01",
		"":                   "",
		"kubernetes.io/~~//": "kubernetes.io~1~0~0~1~1",
	} {
		assert.Equal(t, want, EscapeKey(in), in)
	}
}

func pod(ann map[string]string, env []corev1.EnvVar) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Env: env}}},
	}
}

func TestOps(t *testing.T) {
	a := corev1.EnvVar{Name: "A", Value: "a"}
	u := corev1.EnvVar{Name: "U", Value: "u"}
	v := corev1.EnvVar{Name: "V", Value: "v"}
	tests := []struct {
		name      string
		orig, mut *corev1.Pod
		want      string
	}{
		{"absent map and list are added whole",
			pod(nil, nil), pod(map[string]string{"k/x": "1"}, []corev1.EnvVar{a}),
			`[{"op":"add","path":"/metadata/annotations","value":{"k/x":"1"}},{"op":"add","path":"/spec/containers/0/env","value":[{"name":"A","value":"a"}]}]`},
		{"existing map and list get members inserted",
			pod(map[string]string{}, []corev1.EnvVar{}), pod(map[string]string{"k/x": "1"}, []corev1.EnvVar{a}),
			`[{"op":"add","path":"/metadata/annotations/k~1x","value":"1"},{"op":"add","path":"/spec/containers/0/env/0","value":{"name":"A","value":"a"}}]`},
		{"insertions at front and between keep the user's elements",
			pod(nil, []corev1.EnvVar{u, v}), pod(nil, []corev1.EnvVar{a, u, {Name: "B"}, v, {Name: "C"}}),
			`[{"op":"add","path":"/spec/containers/0/env/0","value":{"name":"A","value":"a"}},{"op":"add","path":"/spec/containers/0/env/2","value":{"name":"B"}},{"op":"add","path":"/spec/containers/0/env/4","value":{"name":"C"}}]`},
		{"changed annotation value is re-added",
			pod(map[string]string{"s": "old"}, nil), pod(map[string]string{"s": "new"}, nil),
			`[{"op":"add","path":"/metadata/annotations/s","value":"new"}]`},
		{"no change, no ops", pod(map[string]string{"s": "x"}, []corev1.EnvVar{u}), pod(map[string]string{"s": "x"}, []corev1.EnvVar{u}), `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := Pod(tt.orig, tt.mut)
			require.NoError(t, err)
			b, err := json.Marshal(ops)
			require.NoError(t, err)
			assert.JSONEq(t, tt.want, string(b))
		})
	}
}

// TestRefusesNonAdditive: a mutation that removed or reordered something is
// a bug in mutate; the patch says so instead of papering over it.
func TestRefusesNonAdditive(t *testing.T) {
	u := corev1.EnvVar{Name: "U"}
	v := corev1.EnvVar{Name: "V"}
	_, err := Pod(pod(nil, []corev1.EnvVar{u, v}), pod(nil, []corev1.EnvVar{v, u}))
	assert.EqualError(t, err, `/spec/containers/0/env: element "V" of the original is missing or moved in the mutated pod`)
	_, err = Pod(pod(nil, []corev1.EnvVar{u}), pod(nil, []corev1.EnvVar{}))
	assert.EqualError(t, err, `/spec/containers/0/env: element "U" of the original is missing or moved in the mutated pod`)
	_, err = Pod(pod(map[string]string{"a": "1"}, nil), pod(map[string]string{"b": "1"}, nil))
	assert.EqualError(t, err, `/metadata/annotations: key "a" of the original is missing in the mutated pod`)

	withVolume := func(src corev1.VolumeSource) *corev1.Pod {
		p := pod(nil, nil)
		p.Spec.Volumes = []corev1.Volume{{Name: "v", VolumeSource: src}}
		return p
	}
	downward := corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{}}
	_, err = Pod(withVolume(corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}), withVolume(downward))
	assert.EqualError(t, err, `/spec/volumes/0: the volume source changed in the mutated pod`)
	_, err = Pod(withVolume(corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{{Path: "a"}}}}), withVolume(downward))
	assert.EqualError(t, err, `/spec/volumes/0/downwardAPI/items: element "a" of the original is missing or moved in the mutated pod`)
}

// TestVolumeItemsAdded: items a downwardAPI volume gained are inserted one
// by one, the volume itself is not replaced.
func TestVolumeItemsAdded(t *testing.T) {
	items := func(paths ...string) *corev1.Pod {
		p := pod(nil, nil)
		d := &corev1.DownwardAPIVolumeSource{}
		for _, path := range paths {
			d.Items = append(d.Items, corev1.DownwardAPIVolumeFile{Path: path})
		}
		p.Spec.Volumes = []corev1.Volume{{Name: "other", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}, {Name: "podmeta", VolumeSource: corev1.VolumeSource{DownwardAPI: d}}}
		return p
	}
	ops, err := Pod(items("labels", "app/cpu_limit"), items("labels", "app/cpu_limit", "late/cpu_limit"))
	require.NoError(t, err)
	b, err := json.Marshal(ops)
	require.NoError(t, err)
	assert.JSONEq(t, `[{"op":"add","path":"/spec/volumes/1/downwardAPI/items/2","value":{"path":"late/cpu_limit"}}]`, string(b))
}

func TestSamePodNoOps(t *testing.T) {
	p := pod(nil, nil)
	ops, err := Pod(p, p)
	require.NoError(t, err)
	assert.Nil(t, ops)
}
