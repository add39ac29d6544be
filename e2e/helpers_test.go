//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/e2e/framework"
	"github.com/podmeta/podmeta/e2e/images/testapp/app"
	"github.com/podmeta/podmeta/mutate"
)

// template is the pod as a template: controllers name the pods themselves.
func template(p *corev1.Pod) corev1.PodTemplateSpec {
	meta := *p.ObjectMeta.DeepCopy()
	meta.Name = ""
	return corev1.PodTemplateSpec{ObjectMeta: meta, Spec: *p.Spec.DeepCopy()}
}

func deployment(name string, replicas int32, tmpl *corev1.Pod) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: template(tmpl),
		},
	}
}

func job(name string, tmpl *corev1.Pod) *batchv1.Job {
	backoff := int32(0)
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: batchv1.JobSpec{
			BackoffLimit: &backoff,
			Template:     template(tmpl),
		},
	}
}

var (
	webhookBinOnce sync.Once
	webhookBin     string
	webhookBinErr  error
)

// offlineInject runs `podmeta-webhook inject -f POD --config CONFIG`, built
// from this checkout, and returns the injected pod.
func offlineInject(t *testing.T, pod *corev1.Pod, config string) *corev1.Pod {
	t.Helper()
	webhookBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "podmeta-e2e-")
		if err != nil {
			webhookBinErr = err
			return
		}
		webhookBin = filepath.Join(dir, "podmeta-webhook")
		cmd := exec.Command("go", "build", "-o", webhookBin, "./cmd/webhook")
		cmd.Dir = ".." // the repository root: this package is e2e/
		if out, err := cmd.CombinedOutput(); err != nil {
			webhookBinErr = err
			webhookBin = string(out)
		}
	})
	require.NoError(t, webhookBinErr, "building cmd/webhook: %s", webhookBin)

	dir := t.TempDir()
	in := pod.DeepCopy()
	in.APIVersion, in.Kind = "v1", "Pod"
	raw, err := yaml.Marshal(in)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pod.yaml"), raw, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(config), 0o644))
	cmd := exec.Command(webhookBin, "inject", "-f", filepath.Join(dir, "pod.yaml"), "--config", filepath.Join(dir, "config.yaml"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "podmeta-webhook inject: %s", stderr.String())
	var res corev1.Pod
	require.NoError(t, yaml.UnmarshalStrict(out, &res), "inject output:\n%s", out)
	require.Contains(t, res.Annotations, mutate.AnnotationStatus, "inject did not inject:\n%s", out)
	return &res
}

// admissionCount sums podmeta_admission_requests_total over every webhook
// replica, read through the API server's pod proxy.
func admissionCount(ctx context.Context, t *testing.T, c *framework.Cluster, pm framework.Podmeta) float64 {
	t.Helper()
	d, err := c.Deployment(ctx, pm)
	require.NoError(t, err)
	l, err := c.Client.CoreV1().Pods(pm.Namespace).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(d.Spec.Selector)})
	require.NoError(t, err)
	var sum float64
	for _, p := range l.Items {
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		port := 0
		for _, cp := range p.Spec.Containers[0].Ports {
			if cp.Name == "metrics" {
				port = int(cp.ContainerPort)
			}
		}
		require.NotZero(t, port, "webhook pod %s has no port named metrics", p.Name)
		body, err := c.PodGet(ctx, pm.Namespace, p.Name, port, "/metrics", nil)
		require.NoError(t, err, "metrics of webhook pod %s", p.Name)
		sc := bufio.NewScanner(bytes.NewReader(body))
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "podmeta_admission_requests_total") {
				continue
			}
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			require.NoError(t, err, "metric line %q", line)
			sum += v
		}
	}
	return sum
}

// deployLabeler runs the test app's labeler mode in ns behind a Service and
// registers it as a mutating webhook for opted-in pods of ns only. Its
// configuration's name sorts after podmeta's, so the API server calls it
// after podmeta, and then podmeta again.
func deployLabeler(ctx context.Context, t *testing.T, c *framework.Cluster, ns string) {
	t.Helper()
	caPEM, certPEM, keyPEM, err := framework.ServingCert("labeler." + ns + ".svc")
	require.NoError(t, err)
	_, err = c.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "labeler-tls"},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	pod := framework.TestAppPod("labeler", map[string]string{"app": "labeler"})
	ctr := &pod.Spec.Containers[0]
	ctr.Args = []string{"labeler"}
	ctr.Env = []corev1.EnvVar{{Name: "TLS_CERT_FILE", Value: "/tls/tls.crt"}, {Name: "TLS_KEY_FILE", Value: "/tls/tls.key"}}
	ctr.Ports = []corev1.ContainerPort{{Name: "https", ContainerPort: 8443}}
	ctr.ReadinessProbe.HTTPGet = &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8443), Scheme: corev1.URISchemeHTTPS}
	ctr.VolumeMounts = []corev1.VolumeMount{{Name: "tls", MountPath: "/tls", ReadOnly: true}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "labeler-tls"}}}}
	_, err = c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "labeler"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "labeler"},
			Ports:    []corev1.ServicePort{{Port: 443, TargetPort: intstr.FromInt32(8443)}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	c.StartPod(t, ns, pod, podTimeout)

	fail, none, never := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.NeverReinvocationPolicy
	timeout := int32(10)
	path := "/label"
	name := "zz-e2e-labeler-" + ns
	_, err = c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "label.e2e.podmeta.io",
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             &none,
			FailurePolicy:           &fail,
			ReinvocationPolicy:      &never,
			TimeoutSeconds:          &timeout,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service:  &admissionregistrationv1.ServiceReference{Namespace: ns, Name: "labeler", Path: &path},
				CABundle: caPEM,
			},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			ObjectSelector:    &metav1.LabelSelector{MatchLabels: map[string]string{mutate.LabelInject: "true"}},
		}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), name, metav1.DeleteOptions{})
	})

	// The labeler answers through its Service once kube-proxy has its endpoint.
	var last error
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(ns).Create(ctx, injectedPod("probe", nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		last = err
		return err == nil && p.Labels[app.LabelerLabel] == "true", nil
	})
	require.NoError(t, err, "the labeler webhook never answered (last: %v)\n%s", last, c.Describe(ns, "labeler"))
}
