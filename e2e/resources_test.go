//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podmeta/podmeta/e2e/framework"
	"github.com/podmeta/podmeta/mutate"
)

// TestAdmittedAsAsked: pods whose own settings constrain the sidecar are
// admitted by the real API server with what they asked for. Server-side
// dry run: admission, defaulting and validation run, nothing is stored or
// started.
func TestAdmittedAsAsked(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-admitted")
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	q := resource.MustParse

	t.Run("Guaranteed stays Guaranteed", func(t *testing.T) {
		p := injectedPod("guaranteed", nil)
		rl := corev1.ResourceList{corev1.ResourceCPU: q("100m"), corev1.ResourceMemory: q("64Mi")}
		p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: rl, Limits: rl}
		got, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, dryRun)
		require.NoError(t, err)
		requireInjected(t, got)
		assert.Equal(t, corev1.PodQOSGuaranteed, got.Status.QOSClass, "QoS class computed by the API server")
		a := ambassador(got)
		assert.Equal(t, a.Resources.Limits, a.Resources.Requests, "the ambassador's requests")
	})

	t.Run("pod-level resources", func(t *testing.T) {
		// The app already requests all of the pod's budget: an ambassador
		// with requests of its own would get the pod rejected.
		p := injectedPod("pod-level", nil)
		p.Spec.Resources = p.Spec.Containers[0].Resources.DeepCopy()
		got, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, dryRun)
		require.NoError(t, err)
		requireInjected(t, got)
		assert.Empty(t, ambassador(got).Resources, "the ambassador shares the pod's budget")
		assert.Equal(t, corev1.PodQOSBurstable, got.Status.QOSClass)
	})

	t.Run("Windows by node selector", func(t *testing.T) {
		p := injectedPod("windows", nil)
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "windows"}
		got, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, dryRun)
		require.NoError(t, err)
		assert.Nil(t, ambassador(got), "no Linux sidecar on a Windows pod")
		r := status(t, got)
		assert.ElementsMatch(t, []string{mutate.PartEnv, mutate.PartVolume}, r.Injected)
		assert.True(t, slices.ContainsFunc(r.Skips, func(s mutate.Skip) bool {
			return s.What == mutate.PartAmbassador && s.Reason == mutate.ReasonWindows
		}), "skips: %+v", r.Skips)
	})
}

// TestInitContainerResourceEnv: an init container without limits reads the
// node's allocatable in CPU_LIMIT and MEMORY_LIMIT, like a regular
// container and like its own files in the volume. (With the container named
// in the env var's resourceFieldRef, the kubelet read 0.)
func TestInitContainerResourceEnv(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-initenv")
	p := injectedPod("initenv", nil)
	// A native sidecar keeps running, so its env can be read over HTTP.
	side := *p.Spec.Containers[0].DeepCopy()
	side.Name = "side"
	side.Resources = corev1.ResourceRequirements{}
	side.Env = []corev1.EnvVar{{Name: "PORT", Value: "8090"}}
	side.Ports = []corev1.ContainerPort{{Name: "side-http", ContainerPort: 8090}}
	side.ReadinessProbe.HTTPGet.Port = intstr.FromInt32(8090)
	always := corev1.ContainerRestartPolicyAlways
	side.RestartPolicy = &always
	p.Spec.InitContainers = []corev1.Container{side}
	c.StartPod(t, ns, p, podTimeout)

	body, err := c.PodGet(ctx, ns, "initenv", 8090, "/env", nil)
	require.NoError(t, err, "GET /env on the init container\n%s", c.Describe(ns, "initenv"))
	var env map[string]string
	require.NoError(t, json.Unmarshal(body, &env), "%s", body)
	var files map[string]string
	podJSON(ctx, t, c, ns, "initenv", "/podinfo", &files)

	for envName, file := range map[string]string{"CPU_LIMIT": "side/cpu_limit", "MEMORY_LIMIT": "side/memory_limit"} {
		assert.NotEqual(t, "0", env[envName], "%s in the init container", envName)
		assert.Equal(t, files[file], env[envName], "%s in the init container against the volume's %s", envName, file)
	}
	assert.Equal(t, "0", env["CPU_REQUEST"], "no request: 0")
}
