//go:build certmanager

// TestWithCertManager installs the chart with Helm into a real API server
// (etcd + kube-apiserver on loopback, no nodes) where cert-manager v1.21's
// controller and cainjector run (hack/certmanager), and checks the whole
// certificate story short of running the webhook pods: both Certificates
// Ready, the caBundle injected and verifying the serving certificate for the
// Service's name, a forced renewal giving a new certificate and key from the
// same CA with the caBundle unchanged, a serving key change and a forced CA
// renewal that both keep the CA's key, an existing ClusterIssuer, Helm 4,
// upgrade and uninstall. The pods themselves (and rotation under load) are
// the e2e suite's job on the local cluster.
//
//	go test -tags certmanager -run TestWithCertManager ./...
//
// It needs etcd and kube-apiserver binaries: PODMETA_ETCD and
// PODMETA_KUBE_APISERVER, else the local cluster harness's cache
// (hack/cluster/build-bins.sh builds them).
package tests

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podmeta/podmeta/e2e/certmanager"
)

var (
	certGVR   = certmanager.CertificateGVR
	issuerGVR = certmanager.IssuerGVR
)

func binary(t *testing.T, env, cached string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	cache := os.Getenv("PODMETA_CACHE")
	if cache == "" {
		cache = "/var/cache/podmeta"
	}
	p := filepath.Join(cache, cached)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found (%v): run hack/cluster/build-bins.sh, or set %s", p, err, env)
	}
	return p
}

// start runs a process until the test ends, its output in dir/name.log
// (printed when the test fails).
func start(t *testing.T, ctx context.Context, dir, name string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.WaitDelay = 5 * time.Second
	require.NoError(t, cmd.Start(), "start %s", name)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("--- %s log tail:\n%s", name, b)
		}
	})
}

type controlPlane struct {
	kubeconfig string
	cfg        *rest.Config
	client     kubernetes.Interface
	dyn        dynamic.Interface
	applier    *certmanager.Applier
}

func startControlPlane(t *testing.T, ctx context.Context) *controlPlane {
	t.Helper()
	dir := t.TempDir()
	etcdPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	start(t, ctx, dir, "etcd", binary(t, "PODMETA_ETCD", "etcd-v3.6.16/bin/etcd"),
		"--data-dir", filepath.Join(dir, "etcd"), "--unsafe-no-fsync",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort))

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	saKey := filepath.Join(dir, "sa.key")
	require.NoError(t, os.WriteFile(saKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600))
	token := rand.Text()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600))
	start(t, ctx, dir, "kube-apiserver", binary(t, "PODMETA_KUBE_APISERVER", "k8s-v1.37.2/bin/kube-apiserver"),
		"--etcd-servers", etcdURL, "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(apiPort),
		"--cert-dir", filepath.Join(dir, "certs"),
		// No endpoints are reconciled, so the advertised address is never dialled.
		"--advertise-address", "10.255.255.1", "--endpoint-reconciler-type", "none",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--token-auth-file", filepath.Join(dir, "tokens.csv"), "--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16")

	kubeconfig := filepath.Join(dir, "kubeconfig")
	require.NoError(t, os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:%d", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
`, apiPort, token)), 0o600))
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	cp := &controlPlane{kubeconfig: kubeconfig, cfg: cfg}
	cp.client, err = kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	cp.dyn, err = dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		body, err := cp.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", nil
	})
	require.NoError(t, err, "kube-apiserver not ready")
	cp.applier, err = certmanager.NewApplier(cfg, "podmeta-test")
	require.NoError(t, err)
	return cp
}

// apply server-side-applies every object of a multi-document YAML.
func (cp *controlPlane) apply(t *testing.T, ctx context.Context, data []byte) {
	t.Helper()
	require.NoError(t, cp.applier.Apply(ctx, data))
}

func (cp *controlPlane) helm(t *testing.T, major string, args ...string) string {
	t.Helper()
	cmd := exec.Command(helm(t, major), args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cp.kubeconfig, "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "helm %s\n%s", strings.Join(args, " "), out)
	return string(out)
}

func (cp *controlPlane) waitReady(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	_, err := certmanager.WaitReady(ctx, cp.dyn, ns, name, time.Minute)
	require.NoError(t, err)
}

// renew has cert-manager renew Certificate name now and returns the
// certificate that replaced old in its Secret.
func (cp *controlPlane) renew(t *testing.T, ctx context.Context, ns, name string, old *x509.Certificate) *x509.Certificate {
	t.Helper()
	// NotBefore has one-second resolution; make the renewal observable.
	time.Sleep(time.Until(old.NotBefore.Add(1100 * time.Millisecond)))
	require.NoError(t, certmanager.Renew(ctx, cp.dyn, ns, name))
	var renewed *x509.Certificate
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		renewed, _ = cp.servingCert(t, ctx, ns, name)
		return renewed.SerialNumber.Cmp(old.SerialNumber) != 0, nil
	})
	require.NoError(t, err, "no renewed %s in its Secret", name)
	return renewed
}

func (cp *controlPlane) servingCert(t *testing.T, ctx context.Context, ns, name string) (leaf *x509.Certificate, ca []byte) {
	t.Helper()
	s, err := cp.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	require.NoError(t, err)
	b, _ := pem.Decode(s.Data["tls.crt"])
	require.NotNil(t, b, "%s/%s: tls.crt is not PEM", ns, name)
	leaf, err = x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	return leaf, s.Data["ca.crt"]
}

// caBundle waits for cainjector to fill the webhook configuration's caBundle.
func (cp *controlPlane) caBundle(t *testing.T, ctx context.Context, name string) []byte {
	t.Helper()
	bundle, err := certmanager.WaitCABundle(ctx, cp.client, name, time.Minute)
	require.NoError(t, err)
	return bundle
}

func verifies(t *testing.T, leaf *x509.Certificate, bundle []byte, dnsName string) {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(bundle), "caBundle holds no PEM certificate")
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: dnsName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	require.NoError(t, err, "the serving certificate does not verify against the caBundle for %s", dnsName)
}

func TestWithCertManager(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cp := startControlPlane(t, ctx)

	// cert-manager: CRDs from the module version hack/certmanager builds
	// (the e2e suite's code), then its controller and cainjector as local
	// processes.
	require.NoError(t, certmanager.InstallCRDs(ctx, cp.applier, "../../.."))
	// Where ClusterIssuers keep their Secrets (--cluster-resource-namespace).
	cp.apply(t, ctx, []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: cert-manager}\n"))
	bin := script(t, "../../../hack/tools/certmanager.sh")
	logs := t.TempDir()
	start(t, ctx, logs, "cert-manager-controller", bin, "controller", "--kubeconfig", cp.kubeconfig)
	start(t, ctx, logs, "cert-manager-cainjector", bin, "cainjector", "--kubeconfig", cp.kubeconfig)

	const ns = "podmeta-system"
	t.Run("install", func(t *testing.T) {
		// With the recommended priority class, to show it is admitted
		// outside kube-system.
		cp.helm(t, "3", "install", releaseName, chartDir, "--namespace", ns, "--create-namespace",
			"--set", "priorityClassName=system-cluster-critical")
		cp.waitReady(t, ctx, ns, "podmeta-ca")
		cp.waitReady(t, ctx, ns, "podmeta-serving-cert")
		leaf, ca := cp.servingCert(t, ctx, ns, "podmeta-serving-cert")
		bundle := cp.caBundle(t, ctx, "podmeta")
		assert.Equal(t, string(ca), string(bundle), "cainjector injects the serving Secret's ca.crt")
		verifies(t, leaf, bundle, "podmeta.podmeta-system.svc")
		caLeaf, _ := cp.servingCert(t, ctx, ns, "podmeta-ca")
		assert.True(t, caLeaf.IsCA)
		assert.Equal(t, caLeaf.Subject.String(), leaf.Issuer.String(), "signed by the chart's CA")

		// The API server admits the webhook's pod as the chart renders it,
		// system-cluster-critical outside kube-system included (dry run:
		// admission runs, nothing is stored; there are no nodes here).
		d, err := cp.client.AppsV1().Deployments(ns).Get(ctx, "podmeta", metav1.GetOptions{})
		require.NoError(t, err)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "podmeta-dry-run", Namespace: ns, Labels: d.Spec.Template.Labels}, Spec: d.Spec.Template.Spec}
		got, err := cp.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		require.NoError(t, err, "the API server refuses the webhook's pod")
		assert.Equal(t, "system-cluster-critical", got.Spec.PriorityClassName)
		require.NotNil(t, got.Spec.Priority)
		assert.Equal(t, int32(2000000000), *got.Spec.Priority)
		// DefaultTolerationSeconds adds no 300 s tolerations next to the chart's 30 s.
		n := 0
		for _, tol := range got.Spec.Tolerations {
			if tol.Key == "node.kubernetes.io/not-ready" || tol.Key == "node.kubernetes.io/unreachable" {
				n++
				require.NotNil(t, tol.TolerationSeconds)
				assert.Equal(t, int64(30), *tol.TolerationSeconds, "%s", tol.Key)
			}
		}
		assert.Equal(t, 2, n)
	})

	t.Run("renewal", func(t *testing.T) {
		old, _ := cp.servingCert(t, ctx, ns, "podmeta-serving-cert")
		bundle := cp.caBundle(t, ctx, "podmeta")
		renewed := cp.renew(t, ctx, ns, "podmeta-serving-cert", old)
		oldKey, _ := x509.MarshalPKIXPublicKey(old.PublicKey)
		newKey, _ := x509.MarshalPKIXPublicKey(renewed.PublicKey)
		assert.NotEqual(t, oldKey, newKey, "rotationPolicy Always: a new private key")
		assert.True(t, renewed.NotAfter.After(old.NotAfter))
		// Same CA: the API server's trust is unchanged and still verifies.
		time.Sleep(2 * time.Second)
		assert.Equal(t, bundle, cp.caBundle(t, ctx, "podmeta"))
		verifies(t, renewed, bundle, "podmeta.podmeta-system.svc")
	})

	t.Run("upgrade", func(t *testing.T) {
		cp.helm(t, "3", "upgrade", releaseName, chartDir, "--namespace", ns, "--reuse-values", "--set", "logLevel=debug")
		d, err := cp.client.AppsV1().Deployments(ns).Get(ctx, "podmeta", metav1.GetOptions{})
		require.NoError(t, err)
		assert.Contains(t, d.Spec.Template.Spec.Containers[0].Args, "--log-level=debug")
		assert.Equal(t, int64(2), d.Generation)
		// The certificates are untouched by an upgrade.
		cp.waitReady(t, ctx, ns, "podmeta-serving-cert")
	})

	// The CA the API server trusts keeps its key when the serving key
	// changes and when the CA itself is renewed, so a serving certificate
	// signed before either still verifies against whatever caBundle
	// cainjector has already injected.
	t.Run("serving key change keeps the CA", func(t *testing.T) {
		ca, _ := cp.servingCert(t, ctx, ns, "podmeta-ca")
		bundle := cp.caBundle(t, ctx, "podmeta")
		cp.helm(t, "3", "upgrade", releaseName, chartDir, "--namespace", ns, "--reuse-values",
			"--set", "certificates.certManager.privateKey.algorithm=RSA", "--set", "certificates.certManager.privateKey.size=2048")
		var leaf *x509.Certificate
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			leaf, _ = cp.servingCert(t, ctx, ns, "podmeta-serving-cert")
			return leaf.PublicKeyAlgorithm == x509.RSA, nil
		})
		require.NoError(t, err, "the serving certificate was not reissued with an RSA key")
		time.Sleep(2 * time.Second)
		after, _ := cp.servingCert(t, ctx, ns, "podmeta-ca")
		assert.Zero(t, ca.SerialNumber.Cmp(after.SerialNumber), "the CA was reissued")
		assert.Equal(t, bundle, cp.caBundle(t, ctx, "podmeta"), "the trusted CA changed")
		verifies(t, leaf, bundle, "podmeta.podmeta-system.svc")
	})

	t.Run("CA renewal keeps its key", func(t *testing.T) {
		ca, _ := cp.servingCert(t, ctx, ns, "podmeta-ca")
		leaf, _ := cp.servingCert(t, ctx, ns, "podmeta-serving-cert")
		renewed := cp.renew(t, ctx, ns, "podmeta-ca", ca)
		oldKey, _ := x509.MarshalPKIXPublicKey(ca.PublicKey)
		newKey, _ := x509.MarshalPKIXPublicKey(renewed.PublicKey)
		assert.Equal(t, oldKey, newKey, "rotationPolicy Never: the renewed CA keeps its key")
		// What the API server trusts once cainjector injects the renewed CA
		// still verifies the certificate the replicas serve until they reload.
		verifies(t, leaf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: renewed.Raw}), "podmeta.podmeta-system.svc")
	})

	t.Run("uninstall", func(t *testing.T) {
		cp.helm(t, "3", "uninstall", releaseName, "--namespace", ns, "--wait")
		sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + releaseName}
		for _, gvr := range []schema.GroupVersionResource{
			{Group: "apps", Version: "v1", Resource: "deployments"},
			{Version: "v1", Resource: "services"},
			{Version: "v1", Resource: "configmaps"},
			{Version: "v1", Resource: "serviceaccounts"},
			{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
			certGVR, issuerGVR,
		} {
			l, err := cp.dyn.Resource(gvr).Namespace(ns).List(ctx, sel)
			require.NoError(t, err)
			assert.Empty(t, l.Items, "%s left behind", gvr.Resource)
		}
		_, err := cp.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "podmeta", metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "MutatingWebhookConfiguration left behind: %v", err)
		// This API server runs no garbage collector; in a cluster it deletes
		// the issued Secrets, which cert-manager makes the Certificates own.
		secrets, err := cp.client.CoreV1().Secrets(ns).List(ctx, sel)
		require.NoError(t, err)
		require.Len(t, secrets.Items, 2)
		for _, s := range secrets.Items {
			require.Len(t, s.OwnerReferences, 1, "Secret %s", s.Name)
			assert.Equal(t, "Certificate", s.OwnerReferences[0].Kind)
			assert.Equal(t, s.Name, s.OwnerReferences[0].Name)
		}
	})

	t.Run("existing ClusterIssuer", func(t *testing.T) {
		cp.apply(t, ctx, []byte(`apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: corp-selfsigned}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: corp-ca, namespace: cert-manager}
spec: {isCA: true, commonName: corp-ca, secretName: corp-ca, issuerRef: {name: corp-selfsigned, kind: ClusterIssuer}}
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: corp-ca}
spec: {ca: {secretName: corp-ca}}
`))
		const ns = "podmeta-corp"
		cp.helm(t, "3", "install", releaseName, chartDir, "--namespace", ns, "--create-namespace",
			"--set", "certificates.certManager.issuerRef.name=corp-ca", "--set", "certificates.certManager.issuerRef.kind=ClusterIssuer")
		cp.waitReady(t, ctx, ns, "podmeta-serving-cert")
		issuers, err := cp.dyn.Resource(issuerGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		assert.Empty(t, issuers.Items, "no chart CA with an existing issuer")
		leaf, _ := cp.servingCert(t, ctx, ns, "podmeta-serving-cert")
		assert.Equal(t, "CN=corp-ca", leaf.Issuer.String())
		verifies(t, leaf, cp.caBundle(t, ctx, "podmeta"), "podmeta.podmeta-corp.svc")
		cp.helm(t, "3", "uninstall", releaseName, "--namespace", ns, "--wait")
	})

	t.Run("helm 4", func(t *testing.T) {
		const ns = "podmeta-helm4"
		cp.helm(t, "4", "install", releaseName, chartDir, "--namespace", ns, "--create-namespace")
		cp.waitReady(t, ctx, ns, "podmeta-serving-cert")
		leaf, _ := cp.servingCert(t, ctx, ns, "podmeta-serving-cert")
		verifies(t, leaf, cp.caBundle(t, ctx, "podmeta"), "podmeta.podmeta-helm4.svc")
		cp.helm(t, "4", "uninstall", releaseName, "--namespace", ns, "--wait")
	})

}

// script runs a repo script and returns its stdout (a path).
func script(t *testing.T, path string, env ...string) string {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	require.NoError(t, err, "%s", path)
	return strings.TrimSpace(string(out))
}
