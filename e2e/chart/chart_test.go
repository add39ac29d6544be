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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/podmeta/podmeta/e2e/certmanager"
	"github.com/podmeta/podmeta/e2e/framework"
)

const (
	release     = "podmeta"
	namespace   = "podmeta-system"
	servingCert = "podmeta-serving-cert"
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
	dyn  dynamic.Interface
	helm string
	root string
}

func newEnv(t *testing.T) *env {
	c := framework.Connect(t)
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	e := &env{Cluster: c, dyn: dyn, root: repoRoot(t)}
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
	// The same code as hack/e2e/deploy.sh's: whichever runs first installs
	// the test build, the other finds it running.
	require.NoError(t, certmanager.Ensure(ctx, e.Config, certmanager.Install{
		RepoRoot: e.root, Image: framework.Image("certmanager"), Allowed: true, Logf: t.Logf,
	}))
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

	// A release left by hack/e2e/deploy.sh or make demo on a cluster that was
	// up already: this test installs the release itself, so it goes first
	// (hack/cluster/e2e.sh installs it again for the rest of the suite).
	e.run(t, "uninstall", release, "--namespace", namespace, "--ignore-not-found", "--wait", "--timeout", "2m")

	// Whatever happens, leave no release behind for the tests that follow.
	t.Cleanup(func() {
		out, err := exec.Command(e.helm, "uninstall", release, "--namespace", namespace, "--ignore-not-found", "--wait").CombinedOutput()
		if err != nil {
			t.Logf("cleanup: helm uninstall: %v\n%s", err, out)
		}
	})

	if !t.Run("install", func(t *testing.T) {
		e.run(t, installArgs...)
		// helm --wait saw the pods Ready, so the Secret exists: Ready now.
		_, err := certmanager.WaitReady(ctx, e.dyn, namespace, servingCert, 10*time.Second)
		require.NoError(t, err)
		e.waitDeployment(t, namespace, release, 2, time.Minute)

		// cainjector wrote the CA that signed the serving certificate. The
		// bundle holds it rather than is it: cert-manager can issue the CA
		// twice on a fresh install, and cainjector merges the second into
		// the bundle, keeping the first.
		var bundle []byte
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			b, err := certmanager.WaitCABundle(ctx, e.Client, release, time.Minute)
			require.NoError(c, err)
			s, err := e.Client.CoreV1().Secrets(namespace).Get(ctx, servingCert, metav1.GetOptions{})
			require.NoError(c, err)
			require.NotEmpty(c, s.Data["ca.crt"])
			assert.Contains(c, string(b), string(s.Data["ca.crt"]))
			bundle = b
		}, time.Minute, 500*time.Millisecond)
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
		require.NoError(t, certmanager.Renew(ctx, e.dyn, namespace, servingCert))

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
		certmanager.CertificateGVR,
		certmanager.IssuerGVR,
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

func imageRepo(ref string) string { return ref[:strings.LastIndex(ref, ":")] }

func imageTag(ref string) string {
	i := strings.LastIndex(ref, ":")
	return ref[i+1:]
}
