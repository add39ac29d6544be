// Package tests renders charts/podmeta with the real helm binary and checks
// the output: golden files for the main value sets, strict decoding of every
// object into the Kubernetes API types (a misspelt field fails), the
// invariants the chart promises, helm lint, and values the schema must reject.
//
// It is its own module so neither the helm binary nor these tests slow the
// root module's build. helm comes from hack/tools/helm.sh (built from the Go
// module proxy on first use, then cached); PODMETA_HELM points at another
// binary instead.
//
//	go test ./...           # check
//	go test ./... -update   # rewrite testdata/*.golden.yaml
package tests

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/mutate"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the current chart")

const (
	chartDir    = ".."
	releaseName = "podmeta"
	releaseNS   = "podmeta-system"
)

var (
	helmOnce = map[string]*sync.Once{"3": {}, "4": {}}
	helmPath = map[string]string{}
	helmErr  = map[string]error{}
)

// helm returns the path of a helm binary of the given major version, building
// it through the repo's script the first time (minutes, cached outside the repo).
func helm(t *testing.T, major string) string {
	t.Helper()
	if p := os.Getenv("PODMETA_HELM"); p != "" && major == "3" {
		return p
	}
	helmOnce[major].Do(func() {
		cmd := exec.Command("../../../hack/tools/helm.sh")
		cmd.Env = append(os.Environ(), "HELM_MAJOR="+major)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		helmPath[major], helmErr[major] = strings.TrimSpace(string(out)), err
	})
	require.NoError(t, helmErr[major], "hack/tools/helm.sh (HELM_MAJOR=%s) failed", major)
	return helmPath[major]
}

// render runs `helm template` with the given values files and --set flags.
func render(t *testing.T, major string, args ...string) (string, error) {
	t.Helper()
	return renderChart(t, major, chartDir, args...)
}

// renderChart renders the chart in dir.
func renderChart(t *testing.T, major, dir string, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"template", releaseName, dir, "--namespace", releaseNS}, args...)
	cmd := exec.Command(helm(t, major), full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A clean helm home: no user repositories or plugins change the output.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm %s: %w: %s", strings.Join(full, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// renderCase renders a testdata case; "defaults" uses no values file.
func renderCase(t *testing.T, major, name string) string {
	t.Helper()
	var args []string
	if name != "defaults" {
		args = append(args, "-f", filepath.Join("testdata", name+".values.yaml"))
	}
	if name == "servicemonitor" {
		args = append(args, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
	}
	out, err := render(t, major, args...)
	require.NoError(t, err)
	return out
}

func cases(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/*.values.yaml")
	require.NoError(t, err)
	names := []string{"defaults"}
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".values.yaml"))
	}
	return names
}

func TestGolden(t *testing.T) {
	for _, name := range cases(t) {
		t.Run(name, func(t *testing.T) {
			got := renderCase(t, "3", name)
			golden := filepath.Join("testdata", name+".golden.yaml")
			if *update {
				require.NoError(t, os.WriteFile(golden, []byte(got), 0o644))
				return
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "missing golden file; run go test -update")
			assert.Equal(t, string(want), got, "rendered chart differs from %s; if intended, run go test ./... -update and review the diff", golden)
		})
	}
}

// docSep separates YAML documents; each keeps its own final newline, which
// a block scalar at its end depends on.
var docSep = regexp.MustCompile(`(?m)^---$`)

// object is one rendered manifest.
type object struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	raw []byte
}

func split(t *testing.T, manifest string) map[string]object {
	t.Helper()
	objs := map[string]object{}
	for _, doc := range docSep.Split(manifest, -1) {
		var o object
		require.NoError(t, yaml.Unmarshal([]byte(doc), &o))
		if o.Kind == "" {
			continue
		}
		o.raw = []byte(doc)
		key := o.Kind + "/" + o.Metadata.Name
		require.NotContains(t, objs, key, "object rendered twice")
		objs[key] = o
	}
	return objs
}

// decode decodes strictly: an unknown or misspelt field is an error.
func decode[T any](t *testing.T, o object) *T {
	t.Helper()
	var v T
	require.NoError(t, yaml.UnmarshalStrict(o.raw, &v), "%s/%s", o.Kind, o.Metadata.Name)
	return &v
}

// one returns the only object of a kind, failing when there is not exactly one.
func one(t *testing.T, objs map[string]object, kind string) (object, bool) {
	t.Helper()
	var found []object
	for _, o := range objs {
		if o.Kind == kind {
			found = append(found, o)
		}
	}
	require.LessOrEqual(t, len(found), 1, "more than one %s", kind)
	if len(found) == 0 {
		return object{}, false
	}
	return found[0], true
}

func must(t *testing.T, objs map[string]object, kind string) object {
	t.Helper()
	o, ok := one(t, objs, kind)
	require.True(t, ok, "no %s rendered", kind)
	return o
}

func kinds(objs map[string]object) []string {
	var ks []string
	for k := range objs {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestInvariants checks, for every case, what the chart promises whatever the
// values: typed objects decode strictly, common labels everywhere, no RBAC,
// the pod security posture, and the webhook configuration's fixed settings.
func TestInvariants(t *testing.T) {
	for _, name := range cases(t) {
		t.Run(name, func(t *testing.T) {
			objs := split(t, renderCase(t, "3", name))
			for key, o := range objs {
				assert.Equal(t, "podmeta", o.Metadata.Labels["app.kubernetes.io/name"], "%s lacks the chart labels", key)
				assert.NotContains(t, []string{"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}, o.Kind, "the webhook needs no RBAC")
				if o.Kind != "MutatingWebhookConfiguration" {
					assert.Equal(t, releaseNS, o.Metadata.Namespace, "%s must be in the release namespace", key)
				}
			}

			var err error
			dep := decode[appsv1.Deployment](t, must(t, objs, "Deployment"))
			fullname := dep.Name
			pod := dep.Spec.Template.Spec
			require.NotNil(t, pod.AutomountServiceAccountToken)
			assert.False(t, *pod.AutomountServiceAccountToken)
			assert.Equal(t, "0", dep.Spec.Strategy.RollingUpdate.MaxUnavailable.String())
			require.Len(t, pod.Containers, 1)
			c := pod.Containers[0]
			assert.True(t, *pod.SecurityContext.RunAsNonRoot)
			assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, pod.SecurityContext.SeccompProfile.Type)
			assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)
			assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
			assert.Equal(t, []corev1.Capability{"ALL"}, c.SecurityContext.Capabilities.Drop)
			assert.Equal(t, "metrics", c.LivenessProbe.HTTPGet.Port.String())
			assert.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
			assert.Equal(t, "metrics", c.ReadinessProbe.HTTPGet.Port.String())
			assert.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
			assert.Contains(t, dep.Spec.Template.Annotations, "checksum/config")
			// Shutdown delay plus grace for in-flight reviews fit in the
			// pod's grace period, or the kubelet kills reviews mid-flight.
			var delay, grace time.Duration
			for _, a := range c.Args {
				if v, ok := strings.CutPrefix(a, "--shutdown-delay="); ok {
					delay, err = time.ParseDuration(v)
					require.NoError(t, err)
				}
				if v, ok := strings.CutPrefix(a, "--shutdown-grace="); ok {
					grace, err = time.ParseDuration(v)
					require.NoError(t, err)
				}
			}
			assert.Positive(t, grace)
			assert.Less(t, delay+grace, time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second)

			// The webhook's own parser accepts the rendered config: field
			// names and types match mutate.Config (it rejects unknown fields).
			cm := decode[corev1.ConfigMap](t, must(t, objs, "ConfigMap"))
			_, err = mutate.ParseConfig([]byte(cm.Data["config.yaml"]))
			require.NoError(t, err, "rendered config.yaml:\n%s", cm.Data["config.yaml"])

			mwcObj := must(t, objs, "MutatingWebhookConfiguration")
			mwc := decode[admissionv1.MutatingWebhookConfiguration](t, mwcObj)
			require.Len(t, mwc.Webhooks, 1)
			w := mwc.Webhooks[0]
			assert.Equal(t, []string{"v1"}, w.AdmissionReviewVersions)
			assert.Equal(t, admissionv1.SideEffectClassNone, *w.SideEffects)
			assert.Equal(t, admissionv1.IfNeededReinvocationPolicy, *w.ReinvocationPolicy)
			assert.Equal(t, []admissionv1.OperationType{admissionv1.Create}, w.Rules[0].Operations)
			assert.Equal(t, []string{"pods"}, w.Rules[0].Resources)
			assert.Equal(t, map[string]string{"podmeta.io/inject": "true"}, w.ObjectSelector.MatchLabels)
			excluded := w.NamespaceSelector.MatchExpressions[0].Values
			for _, ns := range []string{"kube-system", "kube-node-lease", "kube-public", "cert-manager", releaseNS} {
				assert.Contains(t, excluded, ns)
			}
			for _, mc := range w.MatchConditions {
				assert.NotContains(t, mc.Expression, "podmeta.io/status", "reinvocation must still reach injected pods")
			}
			assert.Equal(t, fullname, w.ClientConfig.Service.Name)
			assert.Equal(t, releaseNS, w.ClientConfig.Service.Namespace)
			assert.Equal(t, "/mutate", *w.ClientConfig.Service.Path)

			if _, certManager := objs["Certificate/"+fullname+"-serving-cert"]; certManager {
				// No caBundle key at all (not even an empty one): cainjector owns it.
				var generic struct {
					Webhooks []struct {
						ClientConfig map[string]any `json:"clientConfig"`
					} `json:"webhooks"`
				}
				require.NoError(t, yaml.Unmarshal(mwcObj.raw, &generic))
				assert.NotContains(t, generic.Webhooks[0].ClientConfig, "caBundle")
				assert.Equal(t, releaseNS+"/"+fullname+"-serving-cert", mwc.Annotations["cert-manager.io/inject-ca-from"])
				assert.Equal(t, fullname+"-serving-cert", secretOf(pod))
			} else {
				assert.NotEmpty(t, w.ClientConfig.CABundle)
				assert.NotContains(t, mwc.Annotations, "cert-manager.io/inject-ca-from")
				_, hasIssuer := one(t, objs, "Issuer")
				assert.False(t, hasIssuer)
			}

			svc := decode[corev1.Service](t, must(t, objs, "Service"))
			assert.Equal(t, fullname, svc.Name)
			assert.Equal(t, dep.Spec.Selector.MatchLabels, svc.Spec.Selector)

			if pdb, ok := one(t, objs, "PodDisruptionBudget"); ok {
				p := decode[policyv1.PodDisruptionBudget](t, pdb)
				assert.Equal(t, dep.Spec.Selector.MatchLabels, p.Spec.Selector.MatchLabels)
				assert.Greater(t, *dep.Spec.Replicas, int32(1), "a PDB on a single replica blocks drains")
				assert.Equal(t, policyv1.AlwaysAllow, *p.Spec.UnhealthyPodEvictionPolicy, "a replica that is not Ready must not block drains")
			} else {
				assert.Equal(t, int32(1), *dep.Spec.Replicas, "more than one replica but no PDB")
			}
			if sa, ok := one(t, objs, "ServiceAccount"); ok {
				a := decode[corev1.ServiceAccount](t, sa)
				assert.False(t, *a.AutomountServiceAccountToken)
				assert.Equal(t, a.Name, pod.ServiceAccountName)
			}
		})
	}
}

func secretOf(pod corev1.PodSpec) string {
	for _, v := range pod.Volumes {
		if v.Name == "tls" && v.Secret != nil {
			return v.Secret.SecretName
		}
	}
	return ""
}

// TestDefaults pins what a plain `helm install` gives, beyond the invariants.
func TestDefaults(t *testing.T) {
	objs := split(t, renderCase(t, "3", "defaults"))
	assert.Equal(t, []string{
		"Certificate/podmeta-ca", "Certificate/podmeta-serving-cert", "ConfigMap/podmeta", "Deployment/podmeta",
		"Issuer/podmeta-ca", "Issuer/podmeta-selfsigned", "MutatingWebhookConfiguration/podmeta",
		"PodDisruptionBudget/podmeta", "Service/podmeta", "ServiceAccount/podmeta",
	}, kinds(objs))

	dep := decode[appsv1.Deployment](t, objs["Deployment/podmeta"])
	assert.Equal(t, int32(2), *dep.Spec.Replicas)
	assert.Equal(t, "ghcr.io/podmeta/podmeta-webhook:0.1.0", dep.Spec.Template.Spec.Containers[0].Image)
	mwc := decode[admissionv1.MutatingWebhookConfiguration](t, objs["MutatingWebhookConfiguration/podmeta"])
	assert.Equal(t, admissionv1.Fail, *mwc.Webhooks[0].FailurePolicy)

	// The chart's defaults are the webhook's defaults, except the ambassador
	// image, which the chart pins to its appVersion.
	cm := decode[corev1.ConfigMap](t, objs["ConfigMap/podmeta"])
	cfg, err := mutate.ParseConfig([]byte(cm.Data["config.yaml"]))
	require.NoError(t, err)
	want := mutate.DefaultConfig()
	want.Ambassador.Image = "ghcr.io/podmeta/podmeta-ambassador:0.1.0"
	assert.Equal(t, want, cfg)

	var serving struct {
		Spec struct {
			DNSNames   []string `json:"dnsNames"`
			PrivateKey struct {
				RotationPolicy string `json:"rotationPolicy"`
			} `json:"privateKey"`
			IssuerRef struct{ Name, Kind string } `json:"issuerRef"`
		} `json:"spec"`
	}
	require.NoError(t, yaml.Unmarshal(objs["Certificate/podmeta-serving-cert"].raw, &serving))
	assert.Contains(t, serving.Spec.DNSNames, "podmeta.podmeta-system.svc", "the name the API server verifies")
	assert.Equal(t, "Always", serving.Spec.PrivateKey.RotationPolicy)
	assert.Equal(t, "podmeta-ca", serving.Spec.IssuerRef.Name)
}

// TestConfigValues: chart values reach the webhook's config.
func TestConfigValues(t *testing.T) {
	cm := decode[corev1.ConfigMap](t, split(t, renderCase(t, "3", "custom"))["ConfigMap/meta"])
	cfg, err := mutate.ParseConfig([]byte(cm.Data["config.yaml"]))
	require.NoError(t, err)
	assert.Equal(t, "registry.example/podmeta/ambassador:v1.2.3", cfg.Ambassador.Image)
	assert.Equal(t, corev1.PullAlways, cfg.Ambassador.ImagePullPolicy)
	assert.Equal(t, 9001, cfg.Ambassador.Port)
	assert.Equal(t, "allow-list", cfg.Ambassador.Policy)
	assert.False(t, cfg.Ambassador.Enabled)
	assert.False(t, cfg.Ambassador.NativeSidecar)
	assert.False(t, cfg.Volume)
	assert.Equal(t, "APP_", cfg.EnvPrefix)
	assert.Equal(t, "/var/run/podinfo", cfg.MountPath)
	assert.Equal(t, "", cfg.EnvNames[mutate.EnvPodIPs])
	assert.Equal(t, "CPU_MAX", cfg.EnvNames[mutate.EnvCPULimit])
	assert.Equal(t, "POD_NAME", cfg.EnvNames[mutate.EnvPodName], "values not set keep the default")
}

// TestConfigChangeRollsPods: a changed injection value changes the pod
// template (so the Deployment rolls); an unrelated value does not.
func TestConfigChangeRollsPods(t *testing.T) {
	checksum := func(args ...string) string {
		out, err := render(t, "3", args...)
		require.NoError(t, err)
		return decode[appsv1.Deployment](t, split(t, out)["Deployment/podmeta"]).Spec.Template.Annotations["checksum/config"]
	}
	base := checksum()
	assert.NotEqual(t, base, checksum("--set", "config.envPrefix=APP_"))
	assert.NotEqual(t, base, checksum("--set", "config.ambassador.image.tag=v9"))
	assert.Equal(t, base, checksum("--set", "webhook.timeoutSeconds=7"))
}

// TestRejected: values the chart must refuse, with a message naming the
// value at fault.
func TestRejected(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"misspelt top-level key", []string{"--set", "replicas=3"}, "replicas"},
		{"misspelt nested key", []string{"--set", "webhook.failurPolicy=Ignore"}, "failurPolicy"},
		{"wrong type", []string{"--set-string", "replicaCount=two"}, "replicaCount"},
		{"bad enum", []string{"--set", "webhook.failurePolicy=Sometimes"}, "failurePolicy"},
		{"timeout out of range", []string{"--set", "webhook.timeoutSeconds=31"}, "timeoutSeconds"},
		{"bad duration", []string{"--set", "certificates.certManager.duration=90d"}, "duration"},
		{"bad env name", []string{"--set", "config.envNames.podName=POD-NAME"}, "podName"},
		{"relative mount path", []string{"--set", "config.mountPath=podinfo"}, "mountPath"},
		{"bad policy", []string{"--set", "config.ambassador.policy=read-write"}, "policy"},
		{"short token lifetime", []string{"--set", "config.ambassador.tokenExpirationSeconds=60"}, "tokenExpirationSeconds"},
		{"secret mode without secret", []string{"--set", "certificates.mode=secret", "--set", "certificates.secret.caBundle=Zm9v"}, "certificates.secret.name is required"},
		{"secret mode without caBundle", []string{"--set", "certificates.mode=secret", "--set", "certificates.secret.name=tls"}, "certificates.secret.caBundle is required"},
		{"issuerRef without name", []string{"--set", "certificates.certManager.issuerRef.kind=ClusterIssuer"}, "issuerRef.name is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "3", tc.args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestServiceMonitorNeedsCRD(t *testing.T) {
	out, err := render(t, "3", "-f", "testdata/servicemonitor.values.yaml")
	require.NoError(t, err)
	assert.NotContains(t, kinds(split(t, out)), "ServiceMonitor/podmeta", "rendered although the cluster has no ServiceMonitor CRD")
	assert.Contains(t, kinds(split(t, renderCase(t, "3", "servicemonitor"))), "ServiceMonitor/podmeta")
}

func TestLint(t *testing.T) {
	for _, name := range cases(t) {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", chartDir, "--strict", "--namespace", releaseNS}
			if name != "defaults" {
				args = append(args, "-f", filepath.Join("testdata", name+".values.yaml"))
			}
			out, err := exec.Command(helm(t, "3"), args...).CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "0 chart(s) failed")
			assert.NotContains(t, string(out), "[WARNING]")
		})
	}
}

// TestHelm4 renders every case with Helm 4 and expects the same objects as
// Helm 3 (the chart supports both).
func TestHelm4(t *testing.T) {
	for _, name := range cases(t) {
		t.Run(name, func(t *testing.T) {
			want := split(t, renderCase(t, "3", name))
			got := split(t, renderCase(t, "4", name))
			require.Equal(t, kinds(want), kinds(got))
			for k := range want {
				var a, b any
				require.NoError(t, yaml.Unmarshal(want[k].raw, &a))
				require.NoError(t, yaml.Unmarshal(got[k].raw, &b))
				assert.Equal(t, a, b, k)
			}
		})
	}
}
