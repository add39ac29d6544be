package mutate_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podmeta/podmeta/mutate"
)

// TestAmbassadorShutdownDelay: a regular-container ambassador is told to
// keep serving after SIGTERM for the configured delay, cut so that delay
// and its 5 s drain end before the kubelet's SIGKILL; a native sidecar
// (stopped after the app) gets no delay.
func TestAmbassadorShutdownDelay(t *testing.T) {
	tests := []struct {
		name       string
		native     string // podmeta.io/native-sidecar
		grace      *int64
		delay      int64  // ambassador.shutdownDelaySeconds
		annotation string // podmeta.io/ambassador-shutdown-delay
		want       string
	}{
		{name: "default grace", native: "false", delay: 5, want: "--shutdown-delay=5s"},
		{name: "long grace", native: "false", grace: ptr.To[int64](120), delay: 60, want: "--shutdown-delay=60s"},
		{name: "short grace cuts the delay", native: "false", grace: ptr.To[int64](8), delay: 5, want: "--shutdown-delay=2s"},
		{name: "grace too short for any delay", native: "false", grace: ptr.To[int64](4), delay: 5},
		{name: "zero grace", native: "false", grace: ptr.To[int64](0), delay: 5},
		{name: "delay off", native: "false", delay: 0},
		{name: "native sidecar", native: "true", delay: 5},
		{name: "annotation overrides", native: "false", delay: 5, annotation: "20", want: "--shutdown-delay=20s"},
		{name: "annotation cut too", native: "false", grace: ptr.To[int64](10), delay: 5, annotation: "20", want: "--shutdown-delay=4s"},
		{name: "annotation turns it off", native: "false", delay: 5, annotation: "0"},
		{name: "annotation on a native sidecar", native: "true", delay: 5, annotation: "20"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mutate.DefaultConfig()
			cfg.Ambassador.ShutdownDelaySeconds = tt.delay
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{mutate.LabelInject: "true"}, Annotations: map[string]string{mutate.AnnotationNativeSidecar: tt.native}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: tt.grace,
					Containers:                    []corev1.Container{{Name: "app", Image: "app"}},
				},
			}
			if tt.annotation != "" {
				pod.Annotations[mutate.AnnotationAmbassadorShutdownDelay] = tt.annotation
			}
			out, _, err := mutate.Pod(pod, cfg)
			require.NoError(t, err)
			amb := findContainer(out, mutate.AmbassadorName)
			require.NotNil(t, amb, "ambassador injected")
			var got string
			for _, a := range amb.Args {
				if strings.HasPrefix(a, "--shutdown-delay=") {
					got = a
				}
			}
			assert.Equal(t, tt.want, got)

			// Reinvocation recognizes its own sidecar: nothing more to add.
			again, _, err := mutate.Pod(out, cfg)
			require.NoError(t, err)
			assert.Equal(t, out, again)
		})
	}
}

func findContainer(p *corev1.Pod, name string) *corev1.Container {
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

// TestAmbassadorShutdownDelayReinvoked: a webhook after podmeta shortens the
// grace period, then podmeta runs again (reinvocation). Its sidecar of the
// first pass is still recognised as its own, although the delay it would
// compute now differs: nothing is added, the sidecar gets no env vars of
// its own, and nothing is reported as a user's container.
func TestAmbassadorShutdownDelayReinvoked(t *testing.T) {
	cfg := mutate.DefaultConfig()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{mutate.LabelInject: "true"},
			Annotations: map[string]string{mutate.AnnotationNativeSidecar: "false"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	first, report, err := mutate.Pod(pod, cfg)
	require.NoError(t, err)
	require.Contains(t, findContainer(first, mutate.AmbassadorName).Args, "--shutdown-delay=5s")

	changed := first.DeepCopy()
	changed.Spec.TerminationGracePeriodSeconds = ptr.To[int64](8)
	second, again, err := mutate.Pod(changed, cfg)
	require.NoError(t, err)
	assert.Equal(t, changed, second, "nothing added on the second pass")
	assert.False(t, again.Changed)
	assert.Equal(t, report.Injected, again.Injected)
	assert.Equal(t, report.Containers, again.Containers)
	assert.Empty(t, again.Skips, "no skip for a user's ambassador")
	assert.Empty(t, findContainer(second, mutate.AmbassadorName).Env, "the sidecar is not treated as an app container")
}

func TestAmbassadorShutdownDelayAnnotationErrors(t *testing.T) {
	for _, v := range []string{"-1", "301", "5s", "", "1.5"} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{mutate.LabelInject: "true"},
				Annotations: map[string]string{mutate.AnnotationAmbassadorShutdownDelay: v}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		_, _, err := mutate.Pod(pod, mutate.DefaultConfig())
		assert.ErrorContains(t, err, `annotation podmeta.io/ambassador-shutdown-delay: invalid value "`+v+`": want whole seconds 0-300`, v)
	}
}
