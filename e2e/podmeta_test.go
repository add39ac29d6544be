//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podmeta/podmeta/e2e/framework"
	"github.com/podmeta/podmeta/e2e/images/testapp/app"
	"github.com/podmeta/podmeta/mutate"
)

const podTimeout = 2 * time.Minute

// injectedPod is the test app with the opt-in label and known resources, so
// the resource env vars have values to compare.
func injectedPod(name string, annotations map[string]string) *corev1.Pod {
	p := framework.TestAppPod(name, map[string]string{mutate.LabelInject: "true", "app": name})
	p.Annotations = annotations
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("200m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
	}
	return p
}

func podJSON(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, path string, into any) {
	t.Helper()
	body, err := c.PodGet(ctx, ns, pod, 8080, path, nil)
	require.NoError(t, err, "GET %s on pod %s/%s through the pod proxy\n%s", path, ns, pod, c.Describe(ns, pod))
	require.NoError(t, json.Unmarshal(body, into), "GET %s on pod %s/%s: %s", path, ns, pod, body)
}

// relay makes the pod's app send METHOD PATH to its ambassador at
// http://127.0.0.1:8001 and returns the ambassador's answer.
func relay(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, method, path string, body any) app.Result {
	t.Helper()
	var raw []byte
	if body != nil {
		var err error
		raw, err = json.Marshal(body)
		require.NoError(t, err)
	}
	out, err := c.PodDo(ctx, method, ns, pod, 8080, "relay"+path, raw)
	require.NoError(t, err, "%s %s relayed by pod %s/%s\n%s", method, path, ns, pod, c.Describe(ns, pod))
	var res app.Result
	require.NoError(t, json.Unmarshal(out, &res), "relay answer: %s", out)
	require.Empty(t, res.Error, "the app could not reach the ambassador at 127.0.0.1:8001\n%s", c.Describe(ns, pod))
	return res
}

func status(t *testing.T, p *corev1.Pod) mutate.Report {
	t.Helper()
	raw, ok := p.Annotations[mutate.AnnotationStatus]
	require.True(t, ok, "pod %s/%s has no %s annotation: podmeta did not inject it; annotations: %v", p.Namespace, p.Name, mutate.AnnotationStatus, p.Annotations)
	var r mutate.Report
	require.NoError(t, json.Unmarshal([]byte(raw), &r), "%s: %s", mutate.AnnotationStatus, raw)
	return r
}

func ambassador(p *corev1.Pod) *corev1.Container {
	for i, c := range p.Spec.InitContainers {
		if c.Name == mutate.AmbassadorName {
			return &p.Spec.InitContainers[i]
		}
	}
	for i, c := range p.Spec.Containers {
		if c.Name == mutate.AmbassadorName {
			return &p.Spec.Containers[i]
		}
	}
	return nil
}

func requireInjected(t *testing.T, p *corev1.Pod) {
	t.Helper()
	r := status(t, p)
	assert.ElementsMatch(t, []string{mutate.PartEnv, mutate.PartVolume, mutate.PartAmbassador}, r.Injected, "injected parts of %s", p.Name)
	a := ambassador(p)
	require.NotNil(t, a, "pod %s has no %s container", p.Name, mutate.AmbassadorName)
	require.NotNil(t, a.RestartPolicy, "the ambassador is a native sidecar by default")
	assert.Equal(t, corev1.ContainerRestartPolicyAlways, *a.RestartPolicy)
}

// grantPodReader lets the namespace's default ServiceAccount read pods and
// read and create ConfigMaps (and nothing else) in its namespace.
func grantPodReader(ctx context.Context, t *testing.T, c *framework.Cluster, ns string) {
	t.Helper()
	_, err := c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-app"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "create"}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-app"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "e2e-app"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// TestEnvMatchesAPIServer: the injected Downward API env vars, read from
// inside the pod, equal what the API server reports for it.
func TestEnvMatchesAPIServer(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-env")
	pod := c.StartPod(t, ns, injectedPod("env", nil), podTimeout)
	requireInjected(t, pod)

	var env map[string]string
	podJSON(ctx, t, c, ns, "env", "/env", &env)
	ips := make([]string, 0, len(pod.Status.PodIPs))
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	res := pod.Spec.Containers[0].Resources
	want := map[string]string{
		"POD_NAME":               pod.Name,
		"POD_NAMESPACE":          ns,
		"POD_UID":                string(pod.UID),
		"POD_IP":                 pod.Status.PodIP,
		"POD_IPS":                strings.Join(ips, ","),
		"HOST_IP":                pod.Status.HostIP,
		"NODE_NAME":              pod.Spec.NodeName,
		"POD_SERVICE_ACCOUNT":    pod.Spec.ServiceAccountName,
		"CPU_REQUEST":            fmt.Sprint(res.Requests.Cpu().MilliValue()),
		"CPU_LIMIT":              fmt.Sprint(res.Limits.Cpu().MilliValue()),
		"MEMORY_REQUEST":         fmt.Sprint(res.Requests.Memory().Value()),
		"MEMORY_LIMIT":           fmt.Sprint(res.Limits.Memory().Value()),
		"PODMETA_AMBASSADOR_URL": "http://127.0.0.1:8001",
	}
	for k, v := range want {
		require.NotEmpty(t, v, "the API server reports no value for %s; pod: %+v", k, pod.Status)
		assert.Equal(t, v, env[k], "env var %s inside the pod", k)
	}
	assert.Equal(t, "default", env["POD_SERVICE_ACCOUNT"])
	assert.Equal(t, "100", env["CPU_REQUEST"], "millicores")
	assert.Equal(t, "67108864", env["MEMORY_LIMIT"], "bytes")
}

// TestPodinfoFiles: /etc/podinfo holds the pod's labels and annotations, and
// follows a label added later.
func TestPodinfoFiles(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-podinfo")
	pod := c.StartPod(t, ns, injectedPod("info", map[string]string{"e2e.podmeta.io/note": "line one\nline \"two\""}), podTimeout)

	var files map[string]string
	podJSON(ctx, t, c, ns, "info", "/podinfo", &files)
	labels, err := framework.ParseKubeletMap(files["labels"])
	require.NoError(t, err, "labels file: %q", files["labels"])
	assert.Equal(t, pod.Labels, labels, "/etc/podinfo/labels")
	annotations, err := framework.ParseKubeletMap(files["annotations"])
	require.NoError(t, err, "annotations file: %q", files["annotations"])
	// The kubelet adds its own bookkeeping to the annotations it shows.
	for k := range annotations {
		if strings.HasPrefix(k, "kubernetes.io/config.") {
			delete(annotations, k)
		}
	}
	assert.Equal(t, pod.Annotations, annotations, "/etc/podinfo/annotations (without the kubelet's kubernetes.io/config.*)")
	assert.Contains(t, annotations, mutate.AnnotationStatus)
	assert.Equal(t, pod.Name, files["name"])
	assert.Equal(t, ns, files["namespace"])
	assert.Equal(t, string(pod.UID), files["uid"])
	assert.Equal(t, "100", files["app/cpu_request"], "per-container file, millicores")
	assert.Equal(t, "200", files["app/cpu_limit"])
	assert.Equal(t, "33554432", files["app/memory_request"], "bytes")
	assert.Equal(t, "67108864", files["app/memory_limit"])

	patch := []byte(`{"metadata":{"labels":{"e2e.podmeta.io/patched":"yes"}}}`)
	_, err = c.Client.CoreV1().Pods(ns).Patch(ctx, "info", types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(t, err)
	start := time.Now()
	var last string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		var files map[string]string
		body, err := c.PodGet(ctx, ns, "info", 8080, "/podinfo", nil)
		if err != nil || json.Unmarshal(body, &files) != nil {
			return false, nil
		}
		last = files["labels"]
		m, err := framework.ParseKubeletMap(last)
		return err == nil && m["e2e.podmeta.io/patched"] == "yes", nil
	})
	require.NoError(t, err, "the PATCHed label never appeared in /etc/podinfo/labels; last content: %q", last)
	t.Logf("PATCHed label visible in /etc/podinfo/labels after %v", time.Since(start).Round(100*time.Millisecond))
}

// TestAmbassador: through http://127.0.0.1:8001 the app reads its own pod
// with its own ServiceAccount's rights; writes are refused by the read-only
// policy and pass with the full policy, where RBAC allows them.
func TestAmbassador(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-ambassador")
	grantPodReader(ctx, t, c, ns)
	_, err := c.Client.CoreV1().Pods(ns).Create(ctx, injectedPod("ro", nil), metav1.CreateOptions{})
	require.NoError(t, err)
	rw := c.StartPod(t, ns, injectedPod("rw", map[string]string{mutate.AnnotationAmbassadorPolicy: "full"}), podTimeout)
	ro := c.WaitReady(t, ns, "ro", podTimeout)
	requireInjected(t, ro)
	requireInjected(t, rw)
	assert.Contains(t, ambassador(ro).Args, "--policy=read-only")
	assert.Contains(t, ambassador(rw).Args, "--policy=full")

	// Read: its own pod, as the API server has it.
	res := relay(ctx, t, c, ns, "ro", "GET", "/api/v1/namespaces/"+ns+"/pods/ro", nil)
	require.Equal(t, 200, res.Status, "GET own pod through the ambassador: %s", res.Body)
	var self corev1.Pod
	require.NoError(t, json.Unmarshal([]byte(res.Body), &self))
	assert.Equal(t, ro.UID, self.UID, "the ambassador returned the pod itself")

	cm := func(name string) corev1.ConfigMap {
		return corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"k": "v"}}
	}
	// Write in read-only: refused by the ambassador although RBAC allows it.
	res = relay(ctx, t, c, ns, "ro", "POST", "/api/v1/namespaces/"+ns+"/configmaps", cm("from-ro"))
	assert.Equal(t, 403, res.Status, "POST through a read-only ambassador: %s", res.Body)
	assert.Contains(t, res.Body, "PodmetaAmbassadorPolicy", "refused by the ambassador's policy, not by RBAC")
	_, err = c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "from-ro", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "the refused write must not reach the API server: %v", err)

	// Write with full policy: passes, the object exists.
	res = relay(ctx, t, c, ns, "rw", "POST", "/api/v1/namespaces/"+ns+"/configmaps", cm("from-rw"))
	assert.Equal(t, 201, res.Status, "POST through a full-policy ambassador: %s", res.Body)
	got, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "from-rw", metav1.GetOptions{})
	require.NoError(t, err, "the ConfigMap written through the ambassador")
	assert.Equal(t, "v", got.Data["k"])

	// ... but only where RBAC allows: the ambassador carries the pod's own
	// identity, not more.
	secret := corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: metav1.ObjectMeta{Name: "nope"}}
	res = relay(ctx, t, c, ns, "rw", "POST", "/api/v1/namespaces/"+ns+"/secrets", secret)
	assert.Equal(t, 403, res.Status, "RBAC does not allow creating Secrets: %s", res.Body)
	assert.Contains(t, res.Body, "system:serviceaccount:"+ns+":default", "the API server (not the ambassador) refused the pod's ServiceAccount")
	assert.NotContains(t, res.Body, "PodmetaAmbassadorPolicy")
}

// TestRegularAmbassadorOutlivesAppShutdown: an ambassador placed as a regular
// container (podmeta.io/native-sidecar: "false") gets SIGTERM together with
// the app; podmeta's --shutdown-delay keeps it serving, so the app's own
// shutdown can still call the API server. The app here creates a ConfigMap
// through the ambassador 1 s after SIGTERM. The control pod's 5 s grace
// period leaves no room for a delay: there the ambassador is gone when the
// app calls, and no ConfigMap appears.
func TestRegularAmbassadorOutlivesAppShutdown(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-shutdown")
	grantPodReader(ctx, t, c, ns)
	// wait: how long after its SIGTERM the app calls. The delayed pod calls
	// well inside the ambassador's 5 s; the control calls late enough
	// that its ambassador, signalled at about the same moment, has surely
	// stopped.
	pod := func(name string, grace int64, wait string) *corev1.Pod {
		p := injectedPod(name, map[string]string{mutate.AnnotationNativeSidecar: "false", mutate.AnnotationAmbassadorPolicy: "full"})
		p.Spec.TerminationGracePeriodSeconds = &grace
		p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env,
			corev1.EnvVar{Name: "ON_TERM_CONFIGMAP", Value: "bye-" + name}, corev1.EnvVar{Name: "ON_TERM_WAIT", Value: wait})
		return p
	}
	delayed := c.StartPod(t, ns, pod("delayed", 30, "1s"), podTimeout)
	cut := c.StartPod(t, ns, pod("cut", 5, "3s"), podTimeout)
	require.Nil(t, ambassador(delayed).RestartPolicy, "a regular container")
	assert.Contains(t, ambassador(delayed).Args, "--shutdown-delay=5s")
	for _, a := range ambassador(cut).Args {
		assert.NotContains(t, a, "--shutdown-delay", "a 5 s grace period leaves no room for a delay")
	}

	for _, name := range []string{"delayed", "cut"} {
		require.NoError(t, c.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}))
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, nil
	})
	require.NoError(t, err, "pods not gone after deletion")

	got, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "bye-delayed", metav1.GetOptions{})
	require.NoError(t, err, "the app's call during its shutdown did not get through the delayed ambassador")
	assert.Equal(t, "goodbye", got.Data["said"])
	_, err = c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "bye-cut", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "control: without a delay the ambassador stops with the app and the call fails (%v)", err)
}

// TestUnlabeledPodUntouched: pods without the label, or with "false", are
// stored exactly as submitted (plus what Kubernetes itself adds).
func TestUnlabeledPodUntouched(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-unlabeled")
	for _, p := range []*corev1.Pod{
		framework.TestAppPod("plain", map[string]string{"app": "plain"}),
		framework.TestAppPod("opted-out", map[string]string{mutate.LabelInject: "false"}),
	} {
		pod := c.StartPod(t, ns, p, podTimeout)
		assert.NotContains(t, pod.Annotations, mutate.AnnotationStatus, pod.Name)
		assert.Empty(t, pod.Spec.InitContainers, "%s: no sidecar", pod.Name)
		require.Len(t, pod.Spec.Containers, 1, pod.Name)
		assert.Empty(t, pod.Spec.Containers[0].Env, "%s: no env vars", pod.Name)
		for _, v := range pod.Spec.Volumes {
			assert.True(t, strings.HasPrefix(v.Name, "kube-api-access-"), "%s: unexpected volume %s", pod.Name, v.Name)
		}
		var env map[string]string
		podJSON(ctx, t, c, ns, pod.Name, "/env", &env)
		assert.NotContains(t, env, "POD_NAME", pod.Name)
		_, err := c.PodGet(ctx, ns, pod.Name, 8080, "/podinfo", nil)
		assert.Error(t, err, "%s: no /etc/podinfo", pod.Name)
	}
}

// TestDeploymentPodsInjected: pods a controller creates (no name yet at
// admission) are injected and see their final names.
func TestDeploymentPodsInjected(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-deploy")
	tmpl := injectedPod("web", nil)
	replicas := int32(2)
	_, err := c.Client.AppsV1().Deployments(ns).Create(ctx, deployment("web", replicas, tmpl), metav1.CreateOptions{})
	require.NoError(t, err)

	var pods []corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, podTimeout, true, func(ctx context.Context) (bool, error) {
		l, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, nil
		}
		pods = l.Items
		ready := 0
		for i := range pods {
			if framework.PodReady(&pods[i]) {
				ready++
			}
		}
		return ready == int(replicas), nil
	})
	if err != nil {
		var d strings.Builder
		for _, p := range pods {
			d.WriteString(c.Describe(ns, p.Name))
		}
		t.Fatalf("Deployment web: %d ready pods wanted: %v\n%s", replicas, err, d.String())
	}
	for i := range pods {
		p := &pods[i]
		requireInjected(t, p)
		var env map[string]string
		podJSON(ctx, t, c, ns, p.Name, "/env", &env)
		assert.Equal(t, p.Name, env["POD_NAME"], "a controller-made pod sees its generated name")
	}
}

// TestJobWithAmbassadorCompletes: the native sidecar does not keep a Job's
// pod running; the Job's container uses the ambassador and exits.
func TestJobWithAmbassadorCompletes(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-job")
	grantPodReader(ctx, t, c, ns)
	tmpl := injectedPod("job", nil)
	tmpl.Spec.RestartPolicy = corev1.RestartPolicyNever
	ctr := &tmpl.Spec.Containers[0]
	ctr.ReadinessProbe, ctr.Ports = nil, nil
	// $(POD_NAMESPACE) and $(POD_NAME) are podmeta's env vars, expanded by the kubelet.
	ctr.Args = []string{"get", "$(PODMETA_AMBASSADOR_URL)/api/v1/namespaces/$(POD_NAMESPACE)/pods/$(POD_NAME)"}
	_, err := c.Client.BatchV1().Jobs(ns).Create(ctx, job("job", tmpl), metav1.CreateOptions{})
	require.NoError(t, err)

	var done string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		j, err := c.Client.BatchV1().Jobs(ns).Get(ctx, "job", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range j.Status.Conditions {
			if cond.Status == corev1.ConditionTrue && (cond.Type == "Complete" || cond.Type == "Failed") {
				done = string(cond.Type) + ": " + cond.Message
				return true, nil
			}
		}
		return false, nil
	})
	l, lerr := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=job"})
	require.NoError(t, lerr)
	require.NotEmpty(t, l.Items, "the Job made no pod")
	pod := &l.Items[0]
	require.NoError(t, err, "the Job did not finish (a sidecar that blocks completion?)\n%s", c.Describe(ns, pod.Name))
	require.True(t, strings.HasPrefix(done, "Complete"), "Job %s\n%s", done, c.Describe(ns, pod.Name))
	requireInjected(t, pod)
	logs := c.Logs(ctx, ns, pod.Name, "app", 50)
	assert.Contains(t, logs, ": 200", "the Job read its pod through the ambassador")
	assert.Contains(t, logs, pod.Name, "the answer was its own pod")
}

// TestRestrictedPodSecurity: an injected pod passes Pod Security "restricted".
func TestRestrictedPodSecurity(t *testing.T) {
	c := framework.Connect(t)
	c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-restricted")
	patch := []byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"restricted","pod-security.kubernetes.io/enforce-version":"latest"}}}`)
	_, err := c.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{})
	require.NoError(t, err)

	// The namespace really enforces: a pod without the restricted settings is refused.
	loose := injectedPod("loose", nil)
	loose.Spec.SecurityContext, loose.Spec.Containers[0].SecurityContext = nil, nil
	_, err = c.Client.CoreV1().Pods(ns).Create(ctx, loose, metav1.CreateOptions{})
	require.Error(t, err, "namespace %s must enforce Pod Security restricted", ns)
	assert.Contains(t, err.Error(), "restricted")

	pod := c.StartPod(t, ns, injectedPod("strict", nil), podTimeout)
	requireInjected(t, pod)
}

// TestReinvocationNoDuplicates: a second mutating webhook, called after
// podmeta, changes the pod, so the API server calls podmeta again
// (reinvocationPolicy IfNeeded). The stored pod has everything once.
func TestReinvocationNoDuplicates(t *testing.T) {
	c := framework.Connect(t)
	pm := c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-reinvoke")
	deployLabeler(ctx, t, c, ns)

	before := admissionCount(ctx, t, c, pm)
	_, err := c.Client.CoreV1().Pods(ns).Create(ctx, injectedPod("twice", nil), metav1.CreateOptions{})
	require.NoError(t, err)
	after := admissionCount(ctx, t, c, pm)
	pod := c.WaitReady(t, ns, "twice", podTimeout)

	assert.Equal(t, "true", pod.Labels[app.LabelerLabel], "the second webhook ran")
	assert.GreaterOrEqual(t, after-before, 2.0, "podmeta was called again after the second webhook changed the pod (admission requests %v -> %v)", before, after)
	requireInjected(t, pod)
	assertNoDuplicates(t, pod)
}

func assertNoDuplicates(t *testing.T, p *corev1.Pod) {
	t.Helper()
	unique := func(what string, names []string) {
		seen := map[string]bool{}
		for _, n := range names {
			assert.False(t, seen[n], "%s %q appears twice in pod %s", what, n, p.Name)
			seen[n] = true
		}
	}
	var ctrs, vols []string
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		ctrs = append(ctrs, c.Name)
		var env, mounts []string
		for _, e := range c.Env {
			env = append(env, e.Name)
		}
		for _, m := range c.VolumeMounts {
			mounts = append(mounts, m.MountPath)
		}
		unique("env var of container "+c.Name, env)
		unique("mount path of container "+c.Name, mounts)
	}
	for _, v := range p.Spec.Volumes {
		vols = append(vols, v.Name)
	}
	unique("container", ctrs)
	unique("volume", vols)
}

// TestOfflineInjectMatchesWebhook: `podmeta-webhook inject` on the pod as
// submitted gives what the webhook stored. Both go through the API server's
// defaulting: the offline result is created with a server-side dry run in
// podmeta's own namespace, which the webhook never sees.
func TestOfflineInjectMatchesWebhook(t *testing.T) {
	c := framework.Connect(t)
	pm := c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-offline")
	submitted := injectedPod("same", map[string]string{mutate.AnnotationAmbassadorPolicy: "full", mutate.AnnotationEnvPrefix: "APP_"})
	submitted.Namespace = ns
	stored, err := c.Client.CoreV1().Pods(ns).Create(ctx, submitted.DeepCopy(), metav1.CreateOptions{})
	require.NoError(t, err)

	cm, err := c.Client.CoreV1().ConfigMaps(pm.Namespace).Get(ctx, pm.Name, metav1.GetOptions{})
	require.NoError(t, err, "podmeta's config ConfigMap")
	offline := offlineInject(t, submitted, cm.Data["config.yaml"])

	offline.Namespace = pm.Namespace
	offline.Name = "e2e-offline-" + ns
	offline.ResourceVersion = ""
	dry, err := c.Client.CoreV1().Pods(pm.Namespace).Create(ctx, offline, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	require.NoError(t, err, "dry-run create of the offline result in %s", pm.Namespace)

	want, got := injectedParts(dry), injectedParts(stored)
	assert.Equal(t, want.InitContainers, got.InitContainers, "ambassador (init containers)")
	assert.Equal(t, want.Containers, got.Containers, "containers: env and mounts")
	assert.Equal(t, want.Volumes, got.Volumes, "volumes")
	assert.Equal(t, dry.Annotations[mutate.AnnotationStatus], stored.Annotations[mutate.AnnotationStatus], "status annotation")
	assert.Contains(t, stored.Spec.Containers[0].Env[0].Name, "APP_", "the annotations applied")
}

// injectedParts is the pod spec without what the ServiceAccount admission
// plugin adds under a random name (kube-api-access-xxxxx).
func injectedParts(p *corev1.Pod) corev1.PodSpec {
	s := *p.Spec.DeepCopy()
	strip := func(cs []corev1.Container) {
		for i := range cs {
			cs[i].VolumeMounts = slices.DeleteFunc(cs[i].VolumeMounts, func(m corev1.VolumeMount) bool {
				return strings.HasPrefix(m.Name, "kube-api-access-")
			})
		}
	}
	strip(s.Containers)
	strip(s.InitContainers)
	s.Volumes = slices.DeleteFunc(s.Volumes, func(v corev1.Volume) bool { return strings.HasPrefix(v.Name, "kube-api-access-") })
	return s
}

// TestWebhookUnavailable: with no webhook replica, opted-in pods get the
// configured failurePolicy (Fail: a clear error; Ignore: created without
// injection) and other pods are not affected at all.
func TestWebhookUnavailable(t *testing.T) {
	c := framework.Connect(t)
	pm := c.Installed(t)
	ctx := context.Background()
	ns := c.Namespace(t, "e2e-unavailable")
	mwc, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, pm.Name, metav1.GetOptions{})
	require.NoError(t, err)
	require.Len(t, mwc.Webhooks, 1)
	policy := *mwc.Webhooks[0].FailurePolicy

	scaleWebhook(ctx, t, c, pm, 0)

	_, err = c.Client.CoreV1().Pods(ns).Create(ctx, injectedPod("labeled", nil), metav1.CreateOptions{})
	switch policy {
	case "Fail":
		require.Error(t, err, "failurePolicy Fail: an opted-in pod must be refused while the webhook is down")
		assert.Contains(t, err.Error(), `failed calling webhook "`+mwc.Webhooks[0].Name+`"`, "the error names the webhook")
	case "Ignore":
		require.NoError(t, err, "failurePolicy Ignore: the pod is created")
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "labeled", metav1.GetOptions{})
		require.NoError(t, err)
		assert.NotContains(t, p.Annotations, mutate.AnnotationStatus, "created uninjected")
	default:
		t.Fatalf("unknown failurePolicy %q", policy)
	}
	t.Logf("failurePolicy %s with the webhook down: %v", policy, err)

	pod := c.StartPod(t, ns, framework.TestAppPod("unlabeled", map[string]string{"app": "x"}), podTimeout)
	assert.NotContains(t, pod.Annotations, mutate.AnnotationStatus)
}

// scaleWebhook scales podmeta's Deployment to n and, when the test ends,
// back to what it was, waiting until the webhook injects again so later
// tests find it working.
func scaleWebhook(ctx context.Context, t *testing.T, c *framework.Cluster, pm framework.Podmeta, n int32) {
	t.Helper()
	deploys := c.Client.AppsV1().Deployments(pm.Namespace)
	scale, err := deploys.GetScale(ctx, pm.Name, metav1.GetOptions{})
	require.NoError(t, err)
	was := scale.Spec.Replicas
	t.Cleanup(func() {
		s, err := deploys.GetScale(ctx, pm.Name, metav1.GetOptions{})
		if err == nil {
			s.Spec.Replicas = was
			_, err = deploys.UpdateScale(ctx, pm.Name, s, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Errorf("restoring %d webhook replicas: %v", was, err)
			return
		}
		if err := waitInjecting(ctx, c, 3*time.Minute); err != nil {
			t.Errorf("podmeta did not come back after scaling to %d replicas: %v", was, err)
		}
	})
	scale.Spec.Replicas = n
	_, err = deploys.UpdateScale(ctx, pm.Name, scale, metav1.UpdateOptions{})
	require.NoError(t, err)
	d, _ := c.Deployment(ctx, pm)
	sel := metav1.FormatLabelSelector(d.Spec.Selector)
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := c.Client.CoreV1().Pods(pm.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		return err == nil && len(l.Items) == 0, nil
	})
	require.NoError(t, err, "webhook pods still there after scaling to 0")
}

// waitInjecting waits until a server-side dry run of an opted-in pod comes
// back injected: the webhook is reachable through its Service again.
func waitInjecting(ctx context.Context, c *framework.Cluster, timeout time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods("default").Create(ctx, injectedPod("e2e-probe", nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			last = err
			return false, nil
		}
		if _, ok := p.Annotations[mutate.AnnotationStatus]; !ok {
			last = errors.New("dry-run pod not injected")
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return nil
}
