package corpus

import (
	"encoding/json"
	"math/rand/v2"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

func TestPods(t *testing.T) {
	for _, size := range Sizes {
		t.Run(size, func(t *testing.T) {
			p, err := Pod(size)
			require.NoError(t, err)
			assert.Equal(t, "true", p.Labels[InjectLabel], "every corpus pod opts in")
			for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
				assert.NotEmpty(t, c.Resources.Requests, c.Name)
			}
		})
	}
	m, _ := Pod("medium")
	assert.NotEmpty(t, m.Spec.InitContainers)
	for _, c := range append(m.Spec.InitContainers, m.Spec.Containers...) {
		assert.Len(t, c.Env, 10, c.Name)
	}
	l, _ := Pod("large")
	assert.Len(t, l.Spec.Containers, 10)
	for _, c := range l.Spec.Containers {
		assert.Len(t, c.Env, 40, c.Name)
	}
	n := 0
	for k, v := range l.Annotations {
		n += len(k) + len(v)
	}
	assert.InDelta(t, LargeAnnotationBytes, n, 1024, "annotation bytes")

	_, err := Pod("huge")
	assert.ErrorContains(t, err, "small, medium, large")
}

func TestReview(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, size := range Sizes {
		r, err := NewReview(size)
		require.NoError(t, err)
		uid := NewUID(rng)
		body := r.AppendBody(nil, uid)
		assert.Len(t, body, r.Len())

		var ar admissionv1.AdmissionReview
		require.NoError(t, json.Unmarshal(body, &ar))
		assert.Equal(t, "admission.k8s.io/v1", ar.APIVersion)
		assert.Equal(t, "AdmissionReview", ar.Kind)
		require.NotNil(t, ar.Request)
		assert.Equal(t, uid, string(ar.Request.UID))
		assert.Equal(t, admissionv1.Create, ar.Request.Operation)
		assert.Equal(t, "pods", ar.Request.Resource.Resource)
		assert.Equal(t, "loadtest", ar.Request.Namespace)
		assert.JSONEq(t, string(r.Pod), string(ar.Request.Object.Raw))

		var p corev1.Pod
		require.NoError(t, json.Unmarshal(ar.Request.Object.Raw, &p))
		want, _ := Pod(size)
		assert.Equal(t, want, &p)
	}
}

func TestNewUID(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	v4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 10000 {
		u := NewUID(rng)
		require.Regexp(t, v4, u)
		require.False(t, seen[u], "duplicate %s", u)
		seen[u] = true
	}
}
