// Command demo starts a pod that opts in to podmeta and prints what its app
// sees from the inside: the injected env vars, the /etc/podinfo files and an
// API call through the ambassador. `make demo` runs it after installing
// podmeta; it talks to the cluster named by KUBECONFIG.
//
//	demo [-namespace podmeta-demo] [-pod demo]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podmeta/podmeta/e2e/framework"
	"github.com/podmeta/podmeta/e2e/images/testapp/app"
)

func main() {
	if err := run(os.Stdout, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(out io.Writer, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	ns := fs.String("namespace", "podmeta-demo", "namespace of the demo pod (created if missing)")
	name := fs.String("pod", "demo", "name of the demo pod (replaced if it exists)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("no cluster (set KUBECONFIG): %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := setup(ctx, client, *ns); err != nil {
		return err
	}
	pod, err := start(ctx, client, *ns, *name)
	if err != nil {
		return err
	}
	return show(ctx, out, client, pod)
}

// setup creates the namespace and lets its default ServiceAccount read pods,
// so the app can read itself through the ambassador.
func setup(ctx context.Context, c kubernetes.Interface, ns string) error {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s has no default ServiceAccount: %w", ns, err)
	}
	_, err = c.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("Role pod-reader: %w", err)
	}
	_, err = c.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("RoleBinding pod-reader: %w", err)
	}
	return nil
}

func start(ctx context.Context, c kubernetes.Interface, ns, name string) (*corev1.Pod, error) {
	pods := c.CoreV1().Pods(ns)
	zero := int64(0)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err == nil {
		fmt.Fprintf(os.Stderr, "replacing the existing pod %s/%s\n", ns, name)
		_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := pods.Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	}
	p := framework.TestAppPod(name, map[string]string{"app": "demo", "podmeta.io/inject": "true"})
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
	}
	if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", ns, name, err)
	}
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = got
		if s := framework.Stuck(got); s != "" {
			return false, errors.New(s)
		}
		return got.Status.Phase == corev1.PodRunning && framework.PodReady(got), nil
	})
	if err != nil {
		status := "pod not found"
		if pod != nil {
			b, _ := json.Marshal(pod.Status)
			status = string(b)
		}
		return nil, fmt.Errorf("pod %s/%s did not become ready: %w (status: %s)", ns, name, err, status)
	}
	return pod, nil
}

func show(ctx context.Context, out io.Writer, c kubernetes.Interface, pod *corev1.Pod) error {
	get := func(path string) ([]byte, error) {
		return c.CoreV1().Pods(pod.Namespace).ProxyGet("http", pod.Name, "8080", path, nil).DoRaw(ctx)
	}
	fmt.Fprintf(out, "\nPod %s/%s has the label podmeta.io/inject=true. podmeta added:\n", pod.Namespace, pod.Name)
	fmt.Fprintf(out, "  podmeta.io/status: %s\n", pod.Annotations["podmeta.io/status"])
	for _, ctr := range pod.Spec.InitContainers {
		fmt.Fprintf(out, "  sidecar %s (%s) %s\n", ctr.Name, ctr.Image, strings.Join(ctr.Args, " "))
	}

	body, err := get("/env")
	if err != nil {
		return fmt.Errorf("reading the app's environment: %w", err)
	}
	var env map[string]string
	if err := json.Unmarshal(body, &env); err != nil {
		return err
	}
	injected := map[string]bool{}
	for _, e := range pod.Spec.Containers[0].Env {
		injected[e.Name] = true
	}
	fmt.Fprintf(out, "\n== The app's environment (the variables podmeta injected) ==\n")
	for _, k := range sortedKeys(env) {
		if injected[k] {
			fmt.Fprintf(out, "  %s=%s\n", k, env[k])
		}
	}

	body, err = get("/podinfo")
	if err != nil {
		return fmt.Errorf("reading the app's /etc/podinfo: %w", err)
	}
	var files map[string]string
	if err := json.Unmarshal(body, &files); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== The app's /etc/podinfo ==\n")
	for _, k := range sortedKeys(files) {
		v := strings.TrimRight(files[k], "\n")
		if strings.Contains(v, "\n") || len(v) > 60 {
			fmt.Fprintf(out, "  /etc/podinfo/%s:\n      %s\n", k, strings.ReplaceAll(v, "\n", "\n      "))
		} else {
			fmt.Fprintf(out, "  /etc/podinfo/%s: %s\n", k, v)
		}
	}

	fmt.Fprintf(out, "\n== An API call from the app through the ambassador (http://127.0.0.1:8001, read-only policy) ==\n")
	self := fmt.Sprintf("/api/v1/namespaces/%s/pods/%s", pod.Namespace, pod.Name)
	res, err := relay(ctx, c, pod, "GET", self)
	if err != nil {
		return err
	}
	var got corev1.Pod
	_ = json.Unmarshal([]byte(res.Body), &got)
	fmt.Fprintf(out, "  GET %s -> %d: pod %s, uid %s, phase %s, node %s\n", self, res.Status, got.Name, got.UID, got.Status.Phase, got.Spec.NodeName)
	del := self
	res, err = relay(ctx, c, pod, "DELETE", del)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  DELETE %s -> %d: %s\n", del, res.Status, firstLine(res.Body))
	return nil
}

func relay(ctx context.Context, c kubernetes.Interface, pod *corev1.Pod, method, path string) (app.Result, error) {
	body, err := c.CoreV1().RESTClient().Verb(method).Namespace(pod.Namespace).Resource("pods").
		Name(pod.Name + ":8080").SubResource("proxy").Suffix("relay" + path).DoRaw(ctx)
	if err != nil {
		return app.Result{}, fmt.Errorf("%s %s through the ambassador: %w", method, path, err)
	}
	var res app.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return app.Result{}, err
	}
	if res.Error != "" {
		return res, fmt.Errorf("%s %s: the app could not reach the ambassador: %s", method, path, res.Error)
	}
	return res, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
