package tests

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestWebhookRunsWithChartArgs runs the real webhook binary with exactly the
// arguments and config file the chart renders (paths and ports moved into a
// temp dir), and checks the contract between the two: it starts, is ready on
// the probe port, answers an AdmissionReview on the path the webhook
// configuration names, and on SIGTERM fails /readyz at once but keeps
// answering for the chart's shutdown delay, then exits within the pod's grace
// period.
func TestWebhookRunsWithChartArgs(t *testing.T) {
	objs := split(t, renderCase(t, "3", "defaults"))
	dep := decode[appsv1.Deployment](t, must(t, objs, "Deployment"))
	cm := decode[corev1.ConfigMap](t, must(t, objs, "ConfigMap"))
	c := dep.Spec.Template.Spec.Containers[0]
	grace := time.Duration(*dep.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second

	dir := t.TempDir()
	bin := filepath.Join(dir, "podmeta-webhook")
	build := exec.Command("go", "build", "-o", bin, "./cmd/webhook")
	build.Dir = "../../.."
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build ./cmd/webhook: %s", out)

	// The pod's files: the ConfigMap at /etc/podmeta, the TLS Secret below it.
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tls"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(cm.Data["config.yaml"]), 0o644))
	pool := writeServingCert(t, filepath.Join(dir, "tls"), "podmeta.podmeta-system.svc")

	webhookPort, metricsPort := freePort(t), freePort(t)
	var args []string
	var delay time.Duration
	for _, a := range c.Args {
		a = strings.ReplaceAll(a, "/etc/podmeta/", dir+"/")
		switch {
		case strings.HasPrefix(a, "--listen="):
			a = fmt.Sprintf("--listen=127.0.0.1:%d", webhookPort)
		case strings.HasPrefix(a, "--metrics-listen="):
			a = fmt.Sprintf("--metrics-listen=127.0.0.1:%d", metricsPort)
		case strings.HasPrefix(a, "--shutdown-delay="):
			delay, err = time.ParseDuration(strings.TrimPrefix(a, "--shutdown-delay="))
			require.NoError(t, err)
		}
		args = append(args, a)
	}
	require.Positive(t, delay, "the chart sets a shutdown delay by default")
	var logs bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("webhook output:\n%s", logs.String())
		}
	})

	probe := func(path string) int {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", metricsPort, path))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Eventually(t, func() bool { return probe(c.ReadinessProbe.HTTPGet.Path) == http.StatusOK }, 30*time.Second, 50*time.Millisecond, "never ready")
	assert.Equal(t, http.StatusOK, probe(c.LivenessProbe.HTTPGet.Path))

	mwc := decode[admissionregv1.MutatingWebhookConfiguration](t, must(t, objs, "MutatingWebhookConfiguration"))
	path := mwc.Webhooks[0].ClientConfig.Service.Path
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "podmeta.podmeta-system.svc", MinVersion: tls.VersionTLS12},
	}}
	review := func() (*admissionv1.AdmissionResponse, error) {
		pod := corev1.Pod{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default", Labels: map[string]string{"podmeta.io/inject": "true"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		raw, _ := json.Marshal(pod)
		body, _ := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: "1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Namespace: "default", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
			},
		})
		resp, err := client.Post(fmt.Sprintf("https://127.0.0.1:%d%s", webhookPort, *path), "application/json", bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return nil, fmt.Errorf("status %d: %w", resp.StatusCode, err)
		}
		return out.Response, nil
	}
	r, err := review()
	require.NoError(t, err)
	assert.True(t, r.Allowed)
	assert.NotEmpty(t, r.Patch, "the labeled pod was not injected")

	// SIGTERM: not ready at once, still answering during the delay.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	sent := time.Now()
	require.Eventually(t, func() bool { return probe(c.ReadinessProbe.HTTPGet.Path) != http.StatusOK }, time.Second, 20*time.Millisecond, "/readyz still OK after SIGTERM")
	time.Sleep(delay / 2)
	r, err = review()
	require.NoError(t, err, "no answer %s into the shutdown delay", delay/2)
	assert.True(t, r.Allowed)
	select {
	case err := <-exited:
		assert.NoError(t, err, "exit status after SIGTERM")
		assert.GreaterOrEqual(t, time.Since(sent), delay)
	case <-time.After(grace):
		t.Fatalf("still running %s after SIGTERM (the kubelet would kill it)", grace)
	}
}

func writeServingCert(t *testing.T, dir, dnsName string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
