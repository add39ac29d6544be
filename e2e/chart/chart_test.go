//go:build e2e

// Package chart tests charts/podmeta on a real cluster the way a user runs
// it: cert-manager first, then `helm install`, a forced certificate renewal
// under load, `helm upgrade` under load, and `helm uninstall`. The steps
// build on each other, so they are subtests of one test, in order.
//
// cert-manager: when the cluster already serves certificates.cert-manager.io
// (kind with the released chart), that one is used; otherwise (the local
// harness) the suite installs hack/certmanager's build of cert-manager's
// controller and cainjector from the image the harness built.
package chart

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/podmeta/podmeta/e2e/framework"
)

const (
	release     = "podmeta"
	namespace   = "podmeta-system"
	servingCert = "podmeta-serving-cert"
)

var (
	certificateGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}
	issuerGVR      = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "issuers"}
)

// repoRoot is the repository checkout these tests run from.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	return root
}

type env struct {
	*framework.Cluster
	dyn    dynamic.Interface
	mapper meta.RESTMapper
	helm   string
	root   string
}

func newEnv(t *testing.T) *env {
	c := framework.Connect(t)
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	require.NoError(t, err)
	e := &env{Cluster: c, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), root: repoRoot(t)}
	out, err := exec.Command(filepath.Join(e.root, "hack/tools/helm.sh")).Output()
	require.NoError(t, err, "hack/tools/helm.sh")
	e.helm = strings.TrimSpace(string(out))
	return e
}

// run runs helm with the test's KUBECONFIG, logging its output.
func (e *env) run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(e.helm, args...)
	cmd.Dir = e.root
	out, err := cmd.CombinedOutput()
	t.Logf("helm %s\n%s", strings.Join(args, " "), out)
	require.NoError(t, err, "helm %s", strings.Join(args, " "))
	return string(out)
}

// apply server-side-applies every object of a multi-document YAML file.
func (e *env) apply(t *testing.T, data []byte) {
	t.Helper()
	ctx := context.Background()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if err.Error() == "EOF" {
				return
			}
			require.NoError(t, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvk := u.GroupVersionKind()
		m, err := e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			e.mapper.(*restmapper.DeferredDiscoveryRESTMapper).Reset()
			m, err = e.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		require.NoError(t, err, "%s", gvk)
		var ri dynamic.ResourceInterface = e.dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = e.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		body, err := u.MarshalJSON()
		require.NoError(t, err)
		_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "podmeta-e2e", Force: ptr(true)})
		require.NoError(t, err, "apply %s %s", gvk.Kind, u.GetName())
	}
}

func ptr[T any](v T) *T { return &v }

// ensureCertManager installs the test build of cert-manager unless the
// cluster already has cert-manager.
func (e *env) ensureCertManager(t *testing.T) {
	_, err := e.mapper.RESTMapping(schema.GroupKind{Group: "cert-manager.io", Kind: "Certificate"}, "v1")
	if err == nil {
		t.Log("the cluster serves cert-manager.io/v1 Certificates: using its cert-manager")
		return
	}
	t.Log("no cert-manager in the cluster: installing hack/certmanager's test build")
	cmd := exec.Command(filepath.Join(e.root, "hack/tools/certmanager.sh"))
	cmd.Env = append(os.Environ(), "CRDS=1")
	out, err := cmd.Output()
	require.NoError(t, err, "hack/tools/certmanager.sh CRDS=1")
	crds, err := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, crds)
	for _, f := range crds {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		e.apply(t, data)
	}
	e.mapper.(*restmapper.DeferredDiscoveryRESTMapper).Reset()
	deploy, err := os.ReadFile(filepath.Join(e.root, "hack/certmanager/deploy.yaml"))
	require.NoError(t, err)
	e.apply(t, bytes.ReplaceAll(deploy, []byte("IMAGE"), []byte(framework.Image("certmanager"))))
	for _, d := range []string{"cert-manager", "cert-manager-cainjector"} {
		e.waitDeployment(t, "cert-manager", d, 1, 2*time.Minute)
	}
}

func (e *env) waitDeployment(t *testing.T, ns, name string, replicas int32, timeout time.Duration) *appsv1.Deployment {
	t.Helper()
	var d *appsv1.Deployment
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		d, err = e.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return d.Status.ObservedGeneration == d.Generation && d.Status.UpdatedReplicas == replicas &&
			d.Status.ReadyReplicas == replicas && d.Status.Replicas == replicas, nil
	})
	require.NoError(t, err, "deployment %s/%s not rolled out: %+v", ns, name, d)
	return d
}

// certReady reports whether a Certificate has condition Ready=True.
func (e *env) certReady(ctx context.Context, name string) (bool, *unstructured.Unstructured) {
	u, err := e.dyn.Resource(certificateGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, nil
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Ready" && m["status"] == "True" {
			return true, u
		}
	}
	return false, u
}

func (e *env) leaf(t *testing.T) *x509.Certificate {
	t.Helper()
	s, err := e.Client.CoreV1().Secrets(namespace).Get(context.Background(), servingCert, metav1.GetOptions{})
	require.NoError(t, err)
	b, _ := pem.Decode(s.Data["tls.crt"])
	require.NotNil(t, b, "tls.crt holds no PEM")
	c, err := x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	return c
}

// served returns, per webhook pod, the NotAfter of the certificate the
// webhook process has loaded (its expiry metric, read through the pod proxy).
func (e *env) served(t *testing.T) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	pods, err := e.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	require.NoError(t, err)
	got := map[string]int64{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		body, err := e.PodGet(ctx, namespace, p.Name, 8080, "/metrics", nil)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(body))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "podmeta_certificate_expiry_timestamp_seconds "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				require.NoError(t, err)
				got[p.Name] = int64(f)
			}
		}
	}
	return got
}

// admissions creates labeled pods (server-side dry run: the webhook runs,
// nothing is stored) in a loop until stop is called, and counts successes
// (admitted and injected) and failures.
type admissions struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	done       chan struct{}
}

func (e *env) startAdmissions(t *testing.T, ns string) *admissions {
	ctx, cancel := context.WithCancel(context.Background())
	a := &admissions{stop: cancel, done: make(chan struct{})}
	pod := framework.TestAppPod("admission-loop", map[string]string{"podmeta.io/inject": "true"})
	go func() {
		defer close(a.done)
		for i := 0; ctx.Err() == nil; i++ {
			p := pod.DeepCopy()
			p.Name = fmt.Sprintf("admission-loop-%d", i)
			cctx, c := context.WithTimeout(ctx, 15*time.Second)
			got, err := e.Client.CoreV1().Pods(ns).Create(cctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			c()
			if ctx.Err() != nil {
				return
			}
			switch {
			case err != nil:
				a.fail(fmt.Sprintf("%s: %v", time.Now().Format(time.StampMilli), err))
			case got.Annotations["podmeta.io/status"] == "":
				a.fail(fmt.Sprintf("%s: pod admitted without injection", time.Now().Format(time.StampMilli)))
			default:
				a.ok.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return a
}

func (a *admissions) fail(msg string) {
	a.failed.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.errs) < 10 {
		a.errs = append(a.errs, msg)
	}
}

// finish stops the loop and asserts that every admission succeeded.
func (a *admissions) finish(t *testing.T, min int64) {
	t.Helper()
	a.stop()
	<-a.done
	t.Logf("admissions: %d ok, %d failed", a.ok.Load(), a.failed.Load())
	assert.Zero(t, a.failed.Load(), "failed admissions: %v", a.errs)
	assert.GreaterOrEqual(t, a.ok.Load(), min, "too few admissions to mean anything")
}

func (e *env) webhookPods(t *testing.T) map[string]corev1.Pod {
	t.Helper()
	pods, err := e.Client.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	require.NoError(t, err)
	m := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			m[string(p.UID)] = p
		}
	}
	return m
}

func restarts(p corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

func TestChart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.ensureCertManager(t)
	testNS := e.Namespace(t, "chart")

	installArgs := []string{
		"install", release, "charts/podmeta", "--namespace", namespace, "--create-namespace",
		"--set", "image.repository=" + imageRepo(framework.Image("webhook")),
		"--set", "image.tag=" + imageTag(framework.Image("webhook")),
		"--set", "image.pullPolicy=Never",
		"--set", "config.ambassador.image.repository=" + imageRepo(framework.Image("ambassador")),
		"--set", "config.ambassador.image.tag=" + imageTag(framework.Image("ambassador")),
		"--set", "config.ambassador.image.pullPolicy=Never",
		"--wait", "--timeout", "3m",
	}

	// Whatever happens, leave no release behind for the tests that follow.
	t.Cleanup(func() {
		out, err := exec.Command(e.helm, "uninstall", release, "--namespace", namespace, "--ignore-not-found", "--wait").CombinedOutput()
		if err != nil {
			t.Logf("cleanup: helm uninstall: %v\n%s", err, out)
		}
	})

	if !t.Run("install", func(t *testing.T) {
		e.run(t, installArgs...)
		ready, cert := e.certReady(ctx, servingCert)
		require.True(t, ready, "Certificate %s not Ready: %v", servingCert, cert)
		e.waitDeployment(t, namespace, release, 2, time.Minute)

		// cainjector wrote the CA that signed the serving certificate.
		var bundle []byte
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			mwc, err := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, release, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			bundle = mwc.Webhooks[0].ClientConfig.CABundle
			return len(bundle) > 0, nil
		})
		require.NoError(t, err, "caBundle never injected")
		s, err := e.Client.CoreV1().Secrets(namespace).Get(ctx, servingCert, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, string(s.Data["ca.crt"]), string(bundle))
		pool := x509.NewCertPool()
		require.True(t, pool.AppendCertsFromPEM(bundle))
		_, err = e.leaf(t).Verify(x509.VerifyOptions{Roots: pool, DNSName: release + "." + namespace + ".svc"})
		require.NoError(t, err, "the serving certificate does not verify against the injected caBundle")

		// And the API server uses it: an opted-in pod is injected.
		a := e.startAdmissions(t, testNS)
		time.Sleep(2 * time.Second)
		a.finish(t, 10)
	}) {
		return
	}

	if !t.Run("rotation", func(t *testing.T) {
		before := e.webhookPods(t)
		require.Len(t, before, 2)
		old := e.leaf(t)
		served := e.served(t)
		require.Len(t, served, 2, "expiry metric of both replicas")
		for pod, na := range served {
			require.Equal(t, old.NotAfter.Unix(), na, "pod %s serves another certificate than the Secret's", pod)
		}
		mwc, err := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, release, metav1.GetOptions{})
		require.NoError(t, err)

		// NotAfter has a one-second resolution: make sure the renewed
		// certificate's differs.
		time.Sleep(time.Until(old.NotBefore.Add(1100 * time.Millisecond)))
		a := e.startAdmissions(t, testNS)
		e.renew(t, servingCert)

		var renewed *x509.Certificate
		err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			renewed = e.leaf(t)
			return renewed.SerialNumber.Cmp(old.SerialNumber) != 0, nil
		})
		require.NoError(t, err, "the Secret was never updated with a renewed certificate")
		assert.NotEqual(t, old.PublicKey, renewed.PublicKey, "rotationPolicy Always: a new key")
		t.Logf("renewed: serial %s -> %s, NotAfter %s -> %s", old.SerialNumber, renewed.SerialNumber, old.NotAfter, renewed.NotAfter)

		// The kubelet refreshes the Secret volume within its sync period;
		// the webhook must then load it without a restart.
		start := time.Now()
		err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			s := e.served(t)
			if len(s) != 2 {
				return false, nil
			}
			for _, na := range s {
				if na != renewed.NotAfter.Unix() {
					return false, nil
				}
			}
			return true, nil
		})
		require.NoError(t, err, "the webhook did not load the renewed certificate: %v", e.served(t))
		t.Logf("both replicas serve the renewed certificate %s after the Secret changed", time.Since(start).Round(time.Second))
		time.Sleep(3 * time.Second) // admissions against the new certificate
		a.finish(t, 50)

		after := e.webhookPods(t)
		for uid, p := range before {
			q, ok := after[uid]
			require.True(t, ok, "webhook pod %s was replaced", p.Name)
			assert.Equal(t, restarts(p), restarts(q), "webhook pod %s restarted", p.Name)
		}
		// Same CA: the API server's trust did not have to change.
		mwc2, err := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, release, metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, mwc.Webhooks[0].ClientConfig.CABundle, mwc2.Webhooks[0].ClientConfig.CABundle)
	}) {
		return
	}

	if !t.Run("upgrade", func(t *testing.T) {
		before := e.webhookPods(t)
		a := e.startAdmissions(t, testNS)
		time.Sleep(time.Second)
		e.run(t, "upgrade", release, "charts/podmeta", "--namespace", namespace, "--reuse-values",
			"--set", "logLevel=debug", "--wait", "--timeout", "3m")
		d := e.waitDeployment(t, namespace, release, 2, 2*time.Minute)
		// Let the old replicas finish terminating under load.
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			pods, err := e.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
			return err == nil && len(pods.Items) == 2, nil
		})
		require.NoError(t, err)
		time.Sleep(2 * time.Second)
		a.finish(t, 50)

		after := e.webhookPods(t)
		for uid := range before {
			assert.NotContains(t, after, uid, "the upgrade did not roll the webhook pods")
		}
		assert.Contains(t, d.Spec.Template.Spec.Containers[0].Args, "--log-level=debug")
	}) {
		return
	}

	if !t.Run("uninstall", func(t *testing.T) {
		e.run(t, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m")
		sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			return len(e.leftovers(t, sel)) == 0, nil
		})
		require.NoError(t, err, "left behind after helm uninstall: %v", e.leftovers(t, sel))
		_, err = e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, release, metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "MutatingWebhookConfiguration still there: %v", err)

		// Pods created afterwards are untouched.
		p := framework.TestAppPod("after-uninstall", map[string]string{"podmeta.io/inject": "true"})
		got, err := e.Client.CoreV1().Pods(testNS).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		require.NoError(t, err)
		assert.NotContains(t, got.Annotations, "podmeta.io/status")
		assert.Len(t, got.Spec.Containers, 1)
		assert.Empty(t, got.Spec.Containers[0].Env)
		assert.Empty(t, got.Spec.InitContainers)
	}) {
		return
	}
}

// leftovers lists what still carries the release's label in its namespace.
func (e *env) leftovers(t *testing.T, sel metav1.ListOptions) []string {
	ctx := context.Background()
	var left []string
	for _, gvr := range []schema.GroupVersionResource{
		{Group: "apps", Version: "v1", Resource: "deployments"},
		{Group: "apps", Version: "v1", Resource: "replicasets"},
		{Version: "v1", Resource: "pods"},
		{Version: "v1", Resource: "services"},
		{Version: "v1", Resource: "configmaps"},
		{Version: "v1", Resource: "secrets"},
		{Version: "v1", Resource: "serviceaccounts"},
		{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
		certificateGVR,
		issuerGVR,
		{Group: "cert-manager.io", Version: "v1", Resource: "certificaterequests"},
	} {
		l, err := e.dyn.Resource(gvr).Namespace(namespace).List(ctx, sel)
		require.NoError(t, err, "%s", gvr)
		for _, u := range l.Items {
			left = append(left, gvr.Resource+"/"+u.GetName())
		}
	}
	return left
}

// renew forces a renewal now, the way `cmctl renew` does: by setting the
// Certificate's Issuing condition.
func (e *env) renew(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u, err := e.dyn.Resource(certificateGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		old, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		var conds []any
		for _, c := range old {
			if m, _ := c.(map[string]any); m["type"] != "Issuing" {
				conds = append(conds, c)
			}
		}
		conds = append(conds, map[string]any{
			"type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
			"message":            "renewal forced by the podmeta e2e rotation test",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
			"observedGeneration": u.GetGeneration(),
		})
		require.NoError(t, unstructured.SetNestedSlice(u.Object, conds, "status", "conditions"))
		_, err = e.dyn.Resource(certificateGVR).Namespace(namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return err == nil, err
	})
	require.NoError(t, err, "forcing renewal of %s", name)
}

func imageRepo(ref string) string { return ref[:strings.LastIndex(ref, ":")] }

func imageTag(ref string) string {
	i := strings.LastIndex(ref, ":")
	return ref[i+1:]
}
