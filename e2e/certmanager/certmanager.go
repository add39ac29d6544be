// Package certmanager is what podmeta's tests and harness do with
// cert-manager: install hack/certmanager's test build (controller and
// cainjector) into a cluster that has no cert-manager, wait for a Certificate
// to be Ready and for cainjector to fill a webhook's caBundle, and force a
// renewal the way `cmctl renew` does. It is shared by the e2e suite
// (e2e/chart), the harness (`harness certmanager`, run by hack/e2e/deploy.sh)
// and the chart's cert-manager test (charts/podmeta/tests), so all three
// drive cert-manager the same way. It returns errors instead of taking a
// testing.TB because the harness command uses it too.
package certmanager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

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
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

var (
	CertificateGVR = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}
	IssuerGVR      = schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "issuers"}
	crdGVR         = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// Namespace is where hack/certmanager/deploy.yaml runs cert-manager (and
// where ClusterIssuers keep their Secrets).
const Namespace = "cert-manager"

// testBuildMarker is a ClusterRoleBinding only hack/certmanager/deploy.yaml
// creates: it tells our test build from a cert-manager someone else installed.
const testBuildMarker = "podmeta-test-cert-manager"

// deployments are hack/certmanager/deploy.yaml's, in Namespace.
var deployments = []string{"cert-manager", "cert-manager-cainjector"}

// Applier server-side-applies YAML documents of any kind, CRDs' included
// once they are served.
type Applier struct {
	Dyn          dynamic.Interface
	Mapper       *restmapper.DeferredDiscoveryRESTMapper
	FieldManager string
}

// NewApplier returns an Applier for cfg with a discovery-backed mapper.
func NewApplier(cfg *rest.Config, fieldManager string) (*Applier, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Applier{Dyn: dyn, Mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), FieldManager: fieldManager}, nil
}

// Apply server-side-applies every object of a multi-document YAML (or JSON)
// stream, taking ownership of conflicting fields.
func (a *Applier) Apply(ctx context.Context, data []byte) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decoding YAML: %w", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		gvk := u.GroupVersionKind()
		m, err := a.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			// A kind whose CRD was applied after discovery was cached.
			a.Mapper.Reset()
			m, err = a.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk, u.GetName(), err)
		}
		var ri dynamic.ResourceInterface = a.Dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = a.Dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		body, err := u.MarshalJSON()
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, u.GetName(), err)
		}
		force := true
		if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: a.FieldManager, Force: &force}); err != nil {
			return fmt.Errorf("applying %s %s: %w", gvk.Kind, u.GetName(), err)
		}
	}
}

// Install says where the test build comes from and how to report progress.
type Install struct {
	// RepoRoot is the checkout holding hack/tools/certmanager.sh (which
	// names the CRD directory of the cert-manager version it builds) and
	// hack/certmanager/deploy.yaml.
	RepoRoot string
	// Image is the test build's image, already in the cluster's image store.
	Image string
	// Allowed false makes Ensure only accept a cert-manager that is there
	// (kind with the released chart): it never installs the test build.
	Allowed bool
	// Logf reports what Ensure found and did; nil is quiet.
	Logf func(format string, args ...any)
}

// Ensure makes sure cert-manager runs in the cluster at cfg, installing the
// test build only when needed, so every caller can call it and the build is
// installed at most once:
//   - a cluster that serves cert-manager.io/v1 Certificates from a
//     cert-manager that is not our test build keeps its own;
//   - our test build already rolled out is left as it is;
//   - otherwise (none, or ours half there) its CRDs and deploy.yaml are
//     applied (server-side, so a repeat is harmless) and Ensure waits until
//     the CRDs are established and both Deployments are rolled out.
func Ensure(ctx context.Context, cfg *rest.Config, in Install) error {
	logf := in.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	a, err := NewApplier(cfg, "podmeta-test-cert-manager")
	if err != nil {
		return err
	}
	served, err := certificatesServed(client)
	if err != nil {
		return err
	}
	_, err = client.RbacV1().ClusterRoleBindings().Get(ctx, testBuildMarker, metav1.GetOptions{})
	ours := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("looking for ClusterRoleBinding %s: %w", testBuildMarker, err)
	}
	switch {
	case served && !ours:
		logf("the cluster serves cert-manager.io/v1 Certificates: using its cert-manager")
		return nil
	case served && ours && rolledOut(ctx, client) == nil:
		logf("hack/certmanager's test build of cert-manager is already running")
		return nil
	case !in.Allowed && served:
		return fmt.Errorf("hack/certmanager's test build of cert-manager is not running: %v", rolledOut(ctx, client))
	case !in.Allowed:
		return errors.New("the cluster has no cert-manager (cert-manager.io/v1 Certificates are not served): " +
			"install it from its released chart (README, Install with Helm), or install podmeta with certificates.mode=secret")
	}

	logf("installing hack/certmanager's test build of cert-manager (%s)", in.Image)
	if err := InstallCRDs(ctx, a, in.RepoRoot); err != nil {
		return err
	}
	deploy, err := os.ReadFile(filepath.Join(in.RepoRoot, "hack/certmanager/deploy.yaml"))
	if err != nil {
		return err
	}
	if err := a.Apply(ctx, bytes.ReplaceAll(deploy, []byte("IMAGE"), []byte(in.Image))); err != nil {
		return fmt.Errorf("hack/certmanager/deploy.yaml: %w", err)
	}
	start := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		return rolledOut(ctx, client) == nil, nil
	})
	if err != nil {
		return fmt.Errorf("cert-manager not rolled out within 3m: %v", rolledOut(ctx, client))
	}
	logf("cert-manager's controller and cainjector are Ready (%s)", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// InstallCRDs applies the CRDs of the cert-manager version hack/certmanager
// builds and waits until the API server serves them.
func InstallCRDs(ctx context.Context, a *Applier, repoRoot string) error {
	crdDir, err := crdDir(ctx, repoRoot)
	if err != nil {
		return err
	}
	crds, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil || len(crds) == 0 {
		return fmt.Errorf("no cert-manager CRDs in %s (%v)", crdDir, err)
	}
	var names []string
	for _, f := range crds {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := a.Apply(ctx, data); err != nil {
			return fmt.Errorf("cert-manager CRDs (%s): %w", filepath.Base(f), err)
		}
		names = append(names, crdNames(data)...)
	}
	if err := waitEstablished(ctx, a.Dyn, names); err != nil {
		return err
	}
	a.Mapper.Reset()
	return nil
}

func certificatesServed(client kubernetes.Interface) (bool, error) {
	res, err := client.Discovery().ServerResourcesForGroupVersion(CertificateGVR.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discovery of %s: %w", CertificateGVR.GroupVersion(), err)
	}
	for _, r := range res.APIResources {
		if r.Name == CertificateGVR.Resource {
			return true, nil
		}
	}
	return false, nil
}

// rolledOut says why the test build's Deployments are not all rolled out
// with one ready replica, or nil when they are.
func rolledOut(ctx context.Context, client kubernetes.Interface) error {
	for _, name := range deployments {
		d, err := client.AppsV1().Deployments(Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s := d.Status
		if s.ObservedGeneration != d.Generation || s.UpdatedReplicas != 1 || s.ReadyReplicas != 1 || s.Replicas != 1 {
			return fmt.Errorf("deployment %s/%s: %+v", Namespace, name, s)
		}
	}
	return nil
}

// crdDir asks hack/tools/certmanager.sh where the CRDs of the cert-manager
// version it builds are (the Go module cache).
func crdDir(ctx context.Context, repoRoot string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot, "hack/tools/certmanager.sh"))
	cmd.Env = append(os.Environ(), "CRDS=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("CRDS=1 hack/tools/certmanager.sh: %w\n%s", err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out)), nil
}

// crdNames returns the names of the CustomResourceDefinitions in data.
func crdNames(data []byte) []string {
	var names []string
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			return names
		}
		if u.GetKind() == "CustomResourceDefinition" {
			names = append(names, u.GetName())
		}
	}
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, names []string) error {
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			u, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			return err == nil && hasCondition(u, "Established", "True"), nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s not established: %w", name, err)
		}
	}
	return nil
}

// hasCondition reports whether u's status.conditions has type typ with status.
func hasCondition(u *unstructured.Unstructured, typ, status string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == typ && m["status"] == status {
			return true
		}
	}
	return false
}

// Ready reports whether a Certificate has condition Ready=True.
func Ready(cert *unstructured.Unstructured) bool { return hasCondition(cert, "Ready", "True") }

// WaitReady waits up to timeout until Certificate ns/name is Ready and
// returns it; the error carries its last conditions.
func WaitReady(ctx context.Context, dyn dynamic.Interface, ns, name string, timeout time.Duration) (*unstructured.Unstructured, error) {
	var last *unstructured.Unstructured
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		u, err := dyn.Resource(CertificateGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = u
		return Ready(u), nil
	})
	if err != nil {
		var conds any
		if last != nil {
			conds, _, _ = unstructured.NestedSlice(last.Object, "status", "conditions")
		}
		return last, fmt.Errorf("Certificate %s/%s not Ready within %s; conditions: %v", ns, name, timeout, conds)
	}
	return last, nil
}

// WaitCABundle waits up to timeout until cainjector has filled the caBundle
// of every webhook of MutatingWebhookConfiguration name, and returns the
// first one's.
func WaitCABundle(ctx context.Context, client kubernetes.Interface, name string, timeout time.Duration) ([]byte, error) {
	var bundle []byte
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		mwc, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
		if err != nil || len(mwc.Webhooks) == 0 {
			return false, nil
		}
		for _, w := range mwc.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				return false, nil
			}
		}
		bundle = mwc.Webhooks[0].ClientConfig.CABundle
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("caBundle of MutatingWebhookConfiguration %s never injected within %s", name, timeout)
	}
	return bundle, nil
}

// Renew forces cert-manager to reissue Certificate ns/name now, as
// `cmctl renew` does: it sets the Certificate's Issuing condition (keeping
// the others), retrying on update conflicts with cert-manager's own writes.
func Renew(ctx context.Context, dyn dynamic.Interface, ns, name string) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u, err := dyn.Resource(CertificateGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
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
			"message":            "Certificate re-issuance manually triggered by podmeta's tests",
			"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
			"observedGeneration": u.GetGeneration(),
		})
		if err := unstructured.SetNestedSlice(u.Object, conds, "status", "conditions"); err != nil {
			return false, err
		}
		_, err = dyn.Resource(CertificateGVR).Namespace(ns).UpdateStatus(ctx, u, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("forcing renewal of Certificate %s/%s: %w", ns, name, err)
	}
	return nil
}
