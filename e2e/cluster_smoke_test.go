//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podmeta/podmeta/e2e/framework"
	"github.com/podmeta/podmeta/e2e/images/testapp/app"
)

// TestClusterSmoke proves the cluster under test is a working Kubernetes
// cluster before any podmeta test depends on it: the node is Ready, namespaces
// get their default ServiceAccount and kube-root-ca.crt, an unlabeled pod of
// the test app runs, a ClusterIP Service reaches it from another pod
// (kube-proxy), and a pod reaches the API server at the in-cluster address
// with its own token, verifying the serving certificate with its ca.crt.
func TestClusterSmoke(t *testing.T) {
	c := framework.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, nodes.Items, "the cluster has no nodes")
	for _, n := range nodes.Items {
		assert.True(t, nodeReady(n), "node %s is not Ready", n.Name)
	}

	ns := c.Namespace(t, "smoke")
	cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	require.NoError(t, err, "kube-controller-manager publishes kube-root-ca.crt in every namespace")
	assert.Contains(t, cm.Data["ca.crt"], "BEGIN CERTIFICATE")

	server := framework.TestAppPod("server", map[string]string{"app": "server"})
	client := framework.TestAppPod("client", map[string]string{"app": "client"})
	for _, p := range []*corev1.Pod{server, client} {
		_, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "server"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, svc.Spec.ClusterIP)

	start := time.Now()
	srv := c.WaitPodReady(t, ns, "server", 2*time.Minute)
	c.WaitPodReady(t, ns, "client", 2*time.Minute)
	t.Logf("two pods Ready %v after create", time.Since(start).Round(time.Millisecond))
	assert.Len(t, srv.Spec.Containers, 1, "an unlabeled pod keeps exactly its own containers")

	// The pod sees what the kubelet gave it.
	var env map[string]string
	getJSON(ctx, t, c, ns, "client", "/env", nil, &env)
	assert.Equal(t, "client", env["HOSTNAME"])
	apiHost, apiPort := env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]
	require.NotEmpty(t, apiHost, "KUBERNETES_SERVICE_HOST in the pod")
	kubeSvc, err := c.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, kubeSvc.Spec.ClusterIP, apiHost, "pods reach the API server at the kubernetes Service's ClusterIP")

	// Pod -> ClusterIP Service -> pod, through kube-proxy's rules. kube-proxy
	// syncs asynchronously, so retry briefly.
	var res app.Result
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		res = app.Result{}
		getJSON(ctx, t, c, ns, "client", "/fetch", map[string]string{"url": fmt.Sprintf("http://%s/env", svc.Spec.ClusterIP)}, &res)
		return res.Status == 200, nil
	})
	require.NoError(t, err, "client pod could not reach the server pod through Service %s: %+v", svc.Spec.ClusterIP, res)
	var serverEnv map[string]string
	require.NoError(t, json.Unmarshal([]byte(res.Body), &serverEnv))
	assert.Equal(t, "server", serverEnv["HOSTNAME"], "the Service answered from the server pod")

	// Pod -> https://$KUBERNETES_SERVICE_HOST with its token; TLS verified
	// with the pod's ca.crt (so the serving cert's SANs include the ClusterIP).
	apiURL := "https://" + net.JoinHostPort(apiHost, apiPort) + "/api"
	res = app.Result{}
	getJSON(ctx, t, c, ns, "client", "/fetch", map[string]string{"url": apiURL, "sa": "true"}, &res)
	require.Empty(t, res.Error, "GET %s from the pod", apiURL)
	require.Equal(t, 200, res.Status, "GET %s from the pod with its token: %s", apiURL, res.Body)
	var versions struct{ Kind string }
	require.NoError(t, json.Unmarshal([]byte(res.Body), &versions), res.Body)
	assert.Equal(t, "APIVersions", versions.Kind)
	// The same request without the token is refused: the 200 above is the
	// token's doing, not anonymous access.
	res = app.Result{}
	getJSON(ctx, t, c, ns, "client", "/fetch", map[string]string{"url": apiURL}, &res)
	assert.True(t, res.Error != "" || res.Status == 401 || res.Status == 403,
		"without the pod's CA and token the request must fail; got %d %s %s", res.Status, res.Error, strings.TrimSpace(res.Body))
}

func getJSON(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, path string, params map[string]string, into any) {
	t.Helper()
	body, err := c.PodGet(ctx, ns, pod, 8080, path, params)
	require.NoError(t, err, "GET %s on pod %s/%s", path, ns, pod)
	require.NoError(t, json.Unmarshal(body, into), "GET %s on pod %s/%s: %s", path, ns, pod, body)
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
