// Package framework is what the e2e tests share: a client-go connection to
// the cluster named by KUBECONFIG (the local harness's or a kind cluster),
// the references of the images the harness built, throwaway namespaces and
// waiting for pods. Tests talk to pods only through the API server (pod proxy),
// so they run unchanged wherever the API server is reachable.
package framework

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a connection to the cluster under test.
type Cluster struct {
	Config *rest.Config
	Client kubernetes.Interface
}

// Connect loads the kubeconfig the way kubectl does (KUBECONFIG, else
// ~/.kube/config) and fails the test with a hint when there is none.
func Connect(t testing.TB) *Cluster {
	t.Helper()
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		t.Fatalf("e2e tests need a cluster (run `make e2e`, or set KUBECONFIG): %v", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client for %s: %v", cfg.Host, err)
	}
	return &Cluster{Config: cfg, Client: client}
}

// Image returns the reference of an image built by the harness (pause,
// testapp, webhook, ambassador). PODMETA_IMAGE_REGISTRY and PODMETA_IMAGE_TAG
// override the harness defaults, as they do for hack/cluster/up.sh.
func Image(name string) string {
	return ImageRef(os.Getenv("PODMETA_IMAGE_REGISTRY"), os.Getenv("PODMETA_IMAGE_TAG"), name)
}

// ImageRef is Image with explicit settings; empty ones take the defaults.
func ImageRef(registry, tag, name string) string {
	if registry == "" {
		registry = "podmeta.local"
	}
	if tag == "" {
		tag = "dev"
	}
	return fmt.Sprintf("%s/%s:%s", strings.TrimSuffix(registry, "/"), name, tag)
}

// Namespace creates a namespace for one test, waits for its default
// ServiceAccount (pods cannot be created before it exists) and deletes it
// when the test ends.
func (c *Cluster) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		err := c.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s: default ServiceAccount did not appear: %v", ns.Name, err)
	}
	return ns.Name
}

// TestAppPod returns a pod running the test app on port 8080, with a
// readiness probe, that satisfies Pod Security "restricted".
func TestAppPod(name string, labels map[string]string) *corev1.Pod {
	f := false
	tr := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr(int64(5)),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &tr,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           Image("testapp"),
				ImagePullPolicy: corev1.PullNever,
				Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstrFromInt(8080)}},
					PeriodSeconds: 1,
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &f,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

// WaitPodReady waits until the pod is Running and Ready. It fails early, with
// the pod's events, when a container cannot start (e.g. an image missing
// from the node) instead of running into the timeout.
func (c *Cluster) WaitPodReady(t testing.TB, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	var stuck string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if w := s.State.Waiting; w != nil && (w.Reason == "ErrImageNeverPull" || w.Reason == "CreateContainerConfigError" || w.Reason == "CrashLoopBackOff" || w.Reason == "InvalidImageName") {
				stuck = fmt.Sprintf("container %s: %s: %s", s.Name, w.Reason, w.Message)
				return true, nil
			}
		}
		if p.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil || stuck != "" {
		t.Fatalf("pod %s/%s not ready (%v %s); status: %s; events:\n%s", ns, name, err, stuck, statusJSON(pod), c.events(ns, name))
	}
	return pod
}

// PodGet sends a GET to the pod's port through the API server's pod proxy.
func (c *Cluster) PodGet(ctx context.Context, ns, pod string, port int, path string, params map[string]string) ([]byte, error) {
	return c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, fmt.Sprint(port), path, params).DoRaw(ctx)
}

func (c *Cluster) events(ns, name string) string {
	evs, err := c.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "  %s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

func statusJSON(p *corev1.Pod) string {
	if p == nil {
		return "<pod not found>"
	}
	b, _ := json.Marshal(p.Status)
	return string(b)
}

func ptr[T any](v T) *T { return &v }

func intstrFromInt(i int) intstr.IntOrString { return intstr.FromInt32(int32(i)) }
