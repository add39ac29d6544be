package framework

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Podmeta is the podmeta installation under test (hack/e2e/deploy.sh or
// `helm install`): the namespace of the release and the name the chart gives
// its Deployment, Service, ConfigMap and MutatingWebhookConfiguration.
type Podmeta struct {
	Namespace string
	Name      string
}

// Installed returns where podmeta is installed (PODMETA_NAMESPACE, default
// podmeta-system; PODMETA_RELEASE, default podmeta) and fails the test unless
// its Deployment is available and its webhook configuration exists.
func (c *Cluster) Installed(t testing.TB) Podmeta {
	t.Helper()
	p := Podmeta{Namespace: envOr("PODMETA_NAMESPACE", "podmeta-system")}
	release := envOr("PODMETA_RELEASE", "podmeta")
	p.Name = release
	if !strings.Contains(release, "podmeta") {
		p.Name = release + "-podmeta"
	}
	ctx := context.Background()
	d, err := c.Client.AppsV1().Deployments(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("podmeta is not installed (Deployment %s/%s: %v); run `make e2e` (local cluster) or hack/e2e/deploy.sh", p.Namespace, p.Name, err)
	}
	if d.Status.AvailableReplicas < 1 {
		t.Fatalf("podmeta Deployment %s/%s has no available replica: %+v", p.Namespace, p.Name, d.Status)
	}
	if _, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, p.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("podmeta's MutatingWebhookConfiguration %s: %v", p.Name, err)
	}
	return p
}

// Deployment returns podmeta's webhook Deployment.
func (c *Cluster) Deployment(ctx context.Context, p Podmeta) (*appsv1.Deployment, error) {
	return c.Client.AppsV1().Deployments(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
}

// StartPod creates the pod and waits until it is Ready, failing the test
// with the pod's status, events and container logs when it is not.
func (c *Cluster) StartPod(t testing.TB, ns string, pod *corev1.Pod, timeout time.Duration) *corev1.Pod {
	t.Helper()
	if _, err := c.Client.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, pod.Name, err)
	}
	return c.WaitReady(t, ns, pod.Name, timeout)
}

// WaitReady waits until the pod is Running and Ready (every container,
// native sidecars included), failing early when a container cannot start.
func (c *Cluster) WaitReady(t testing.TB, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	var stuck string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		if stuck = Stuck(p); stuck != "" {
			return true, nil
		}
		return p.Status.Phase == corev1.PodRunning && PodReady(p), nil
	})
	if err != nil || stuck != "" {
		t.Fatalf("pod %s/%s not ready within %v (%v %s)\n%s", ns, name, timeout, err, stuck, c.Describe(ns, name))
	}
	return pod
}

// Stuck says why a pod will not become ready by itself, or "".
func Stuck(p *corev1.Pod) string {
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if w := s.State.Waiting; w != nil {
			switch w.Reason {
			case "ErrImageNeverPull", "CreateContainerConfigError", "CrashLoopBackOff", "InvalidImageName", "CreateContainerError":
				return fmt.Sprintf("container %s: %s: %s", s.Name, w.Reason, w.Message)
			}
		}
	}
	if p.Status.Phase == corev1.PodFailed {
		return "pod failed: " + p.Status.Message
	}
	return ""
}

// PodReady reports the pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Describe is what a failure message needs about a pod: its status, its
// events and the last lines of every container's log.
func (c *Cluster) Describe(ns, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b strings.Builder
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		fmt.Fprintf(&b, "pod %s/%s: %v\n", ns, name, err)
	} else {
		fmt.Fprintf(&b, "pod %s/%s status: %s\n", ns, name, statusJSON(p))
	}
	fmt.Fprintf(&b, "events:\n%s", c.events(ns, name))
	if p != nil {
		var names []string
		for _, ctr := range p.Spec.InitContainers {
			names = append(names, ctr.Name)
		}
		for _, ctr := range p.Spec.Containers {
			names = append(names, ctr.Name)
		}
		for _, n := range names {
			fmt.Fprintf(&b, "log of container %s:\n%s\n", n, c.Logs(ctx, ns, name, n, 30))
		}
	}
	return b.String()
}

// Logs returns the last lines of a container's log, or why there are none.
func (c *Cluster) Logs(ctx context.Context, ns, pod, container string, lines int64) string {
	out, err := c.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, TailLines: &lines}).DoRaw(ctx)
	if err != nil {
		return "  <" + err.Error() + ">"
	}
	return string(out)
}

// PodDo sends a request with a body to the pod's port through the API
// server's pod proxy (PodGet is the GET-only form).
func (c *Cluster) PodDo(ctx context.Context, method, ns, pod string, port int, path string, body []byte) ([]byte, error) {
	req := c.Client.CoreV1().RESTClient().Verb(method).Namespace(ns).Resource("pods").
		Name(fmt.Sprintf("%s:%d", pod, port)).SubResource("proxy").Suffix(path)
	if body != nil {
		req = req.Body(body).SetHeader("Content-Type", "application/json")
	}
	return req.DoRaw(ctx)
}

// ParseKubeletMap parses a downwardAPI labels/annotations file: one
// key="quoted value" per line, as the kubelet writes them.
func ParseKubeletMap(s string) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %q: no '='", line)
		}
		uq, err := strconv.Unquote(v)
		if err != nil {
			return nil, fmt.Errorf("line %q: value: %w", line, err)
		}
		out[k] = uq
	}
	return out, sc.Err()
}

// ServingCert returns a throwaway CA and a serving certificate (PEM) for the
// DNS names, for webhooks the tests deploy themselves.
func ServingCert(dnsNames ...string) (caPEM, certPEM, keyPEM []byte, err error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsNames[0]}, DNSNames: dnsNames,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, key.Public(), caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	enc := func(typ string, der []byte) []byte {
		var b bytes.Buffer
		_ = pem.Encode(&b, &pem.Block{Type: typ, Bytes: der})
		return b.Bytes()
	}
	return enc("CERTIFICATE", caDER), enc("CERTIFICATE", der), enc("PRIVATE KEY", keyDER), nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
