package tests

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/mutate"
)

// TestStartupConfigRejected: values the webhook refuses when it starts
// (mutate.ParseConfig, whose refusal makes every replica crash-loop) are
// refused by helm instead, by values.schema.json or a render-time check,
// with a message naming the value. Each case is also rendered with
// --skip-schema-validation and the rendered config fed to the webhook's own
// parser, which must refuse it too: the chart is not stricter than the
// webhook (a case the template itself refuses cannot render at all), except
// for the cases in webhookStarts, which the API server would refuse in every
// injected pod instead.
func TestStartupConfigRejected(t *testing.T) {
	webhookStarts := map[string]string{
		"ambassador resource negative": "a negative request is invalid in a pod",
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"mount path with ..", []string{"--set", "config.mountPath=/etc/../x"}, "mountPath"},
		{"mount path with .", []string{"--set", "config.mountPath=/etc/./x"}, "mountPath"},
		{"mount path with //", []string{"--set", "config.mountPath=/etc//x"}, "mountPath"},
		{"mount path with trailing /", []string{"--set", "config.mountPath=/etc/podinfo/"}, "mountPath"},
		{"mount path /", []string{"--set", "config.mountPath=/"}, "mountPath"},
		{"mount path with :", []string{"--set", "config.mountPath=/etc/pod:info"}, "mountPath"},
		{"volume name of the token volume", []string{"--set", "config.volumeName=podmeta-api-access"}, "volumeName"},
		{"allow-list without rules", []string{"--set", "config.ambassador.policy=allow-list"}, "allow"},
		{"allow-list with blank rules", []string{"--set", "config.ambassador.policy=allow-list", "--set-string", "config.ambassador.allow=  ;  "}, "allow"},
		{"env name not an identifier", []string{"--set", "config.envNames.podName=1POD"}, "podName"},
		{"env names duplicated", []string{"--set", "config.envNames.podIP=POD_NAME"}, `config.envNames.podIP: "POD_NAME" is also the name of config.envNames.podName`},
		{"ambassador port 0", []string{"--set", "config.ambassador.port=0"}, "port"},
		{"ambassador port 65535", []string{"--set", "config.ambassador.port=65535"}, "port"},
		{"ambassador resource not a quantity", []string{"--set", "config.ambassador.resources.limits.memory=lots"}, "memory"},
		{"ambassador resource negative", []string{"--set", "config.ambassador.resources.requests.cpu=-1"}, "cpu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "3", tc.args...)
			require.Error(t, err, "helm rendered it; the webhook would crash-loop")
			assert.Contains(t, err.Error(), tc.want)

			out, err := render(t, "3", append([]string{"--skip-schema-validation"}, tc.args...)...)
			if err != nil {
				assert.Contains(t, err.Error(), tc.want, "refused by the template, with the value's name")
				return
			}
			if why, ok := webhookStarts[tc.name]; ok {
				t.Logf("the webhook starts with it, but %s", why)
				return
			}
			cm := decode[corev1.ConfigMap](t, must(t, split(t, out), "ConfigMap"))
			_, err = mutate.ParseConfig([]byte(cm.Data["config.yaml"]))
			assert.Error(t, err, "the webhook accepts what the chart refuses:\n%s", cm.Data["config.yaml"])
		})
	}
}

// TestStartupConfigAccepted: values at the edge of those rules still render,
// and the webhook accepts what they render.
func TestStartupConfigAccepted(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"dotted segments", []string{"--set", "config.mountPath=/var/..podinfo/.meta/..."}},
		{"allow-list with a rule", []string{"--set", "config.ambassador.policy=allow-list", "--set", "config.ambassador.allow=GET /api/v1/namespaces/*/pods/**"}},
		{"two env vars left out", []string{"--set", "config.envNames.podIP=", "--set", "config.envNames.podIPs="}},
		{"names swapped", []string{"--set", "config.envNames.podIP=POD_IPS", "--set", "config.envNames.podIPs=POD_IP"}},
		{"highest port", []string{"--set", "config.ambassador.port=65534"}},
		{"quantities", []string{"--set", "config.ambassador.resources.requests.cpu=0.05", "--set", "config.ambassador.resources.limits.cpu=1",
			"--set", "config.ambassador.resources.requests.memory=1e6", "--set-string", "config.ambassador.resources.limits.memory=1Gi"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, "3", tc.args...)
			require.NoError(t, err)
			cm := decode[corev1.ConfigMap](t, must(t, split(t, out), "ConfigMap"))
			_, err = mutate.ParseConfig([]byte(cm.Data["config.yaml"]))
			require.NoError(t, err, "rendered config.yaml:\n%s", cm.Data["config.yaml"])
		})
	}
}

// TestPDBAllowsEvictingUnhealthy: replicas that are not Ready (e.g.
// crash-looping on a bad config) can always be evicted, so they never block
// a node drain.
func TestPDBAllowsEvictingUnhealthy(t *testing.T) {
	out, err := render(t, "3")
	require.NoError(t, err)
	pdb := decode[policyv1.PodDisruptionBudget](t, must(t, split(t, out), "PodDisruptionBudget"))
	require.NotNil(t, pdb.Spec.UnhealthyPodEvictionPolicy)
	assert.Equal(t, policyv1.AlwaysAllow, *pdb.Spec.UnhealthyPodEvictionPolicy)
}

// certKey is a cert-manager Certificate's private key settings.
type certKey struct {
	Algorithm      string `json:"algorithm"`
	Size           int    `json:"size"`
	RotationPolicy string `json:"rotationPolicy"`
}

func certKeys(t *testing.T, args ...string) (ca, serving certKey) {
	t.Helper()
	out, err := render(t, "3", args...)
	require.NoError(t, err)
	objs := split(t, out)
	get := func(name string) certKey {
		var c struct {
			Spec struct {
				PrivateKey certKey `json:"privateKey"`
			} `json:"spec"`
		}
		o, ok := objs["Certificate/"+name]
		require.True(t, ok, "no Certificate/%s", name)
		require.NoError(t, yaml.Unmarshal(o.raw, &c))
		return c.Spec.PrivateKey
	}
	return get("podmeta-ca"), get("podmeta-serving-cert")
}

// TestCAKeyIndependentOfServingKey: the chart's CA has its own key settings
// and keeps its key when renewed (rotationPolicy Never). Before, it shared
// the serving certificate's settings with rotationPolicy Always, so changing
// the serving key (or a CA renewal) gave the CA a new key; cainjector then
// swapped the caBundle while replicas still served leaves signed by the old
// key, and every opted-in pod's admission failed x509 verification.
func TestCAKeyIndependentOfServingKey(t *testing.T) {
	ca, serving := certKeys(t)
	assert.Equal(t, certKey{"ECDSA", 256, "Never"}, ca, "defaults: today's algorithm and size, key kept on renewal")
	assert.Equal(t, certKey{"ECDSA", 256, "Always"}, serving)

	ca, serving = certKeys(t, "--set", "certificates.certManager.privateKey.algorithm=RSA", "--set", "certificates.certManager.privateKey.size=3072")
	assert.Equal(t, certKey{"ECDSA", 256, "Never"}, ca, "the serving key settings must not change the CA")
	assert.Equal(t, certKey{"RSA", 3072, "Always"}, serving)

	ca, serving = certKeys(t, "--set", "certificates.certManager.ca.privateKey.algorithm=RSA", "--set", "certificates.certManager.ca.privateKey.size=4096")
	assert.Equal(t, certKey{"RSA", 4096, "Never"}, ca)
	assert.Equal(t, certKey{"ECDSA", 256, "Always"}, serving, "the CA key settings must not change the serving key")

	ca, _ = certKeys(t, "--set", "certificates.certManager.ca.privateKey.algorithm=Ed25519")
	assert.Equal(t, certKey{Algorithm: "Ed25519", RotationPolicy: "Never"}, ca, "no size for Ed25519")
}

// TestUnworkableValuesRejected: combinations of values that each pass the
// schema but cannot work together fail the render, naming the values.
func TestUnworkableValuesRejected(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no grace left after the shutdown delay", []string{"--set", "shutdownDelaySeconds=29"}, []string{"shutdownDelaySeconds (29)", "terminationGracePeriodSeconds (30)"}},
		{"shutdown delay longer than the grace period", []string{"--set", "shutdownDelaySeconds=10", "--set", "terminationGracePeriodSeconds=5"}, []string{"shutdownDelaySeconds (10)", "terminationGracePeriodSeconds (5)"}},
		{"webhook port is the metrics port", []string{"--set", "ports.webhook=8080"}, []string{"ports.webhook", "ports.metrics", "8080"}},
		{"PDB minAvailable = replicas", []string{"--set", "podDisruptionBudget.minAvailable=2"}, []string{"podDisruptionBudget.minAvailable (2)", "replicaCount (2)"}},
		{"PDB minAvailable > replicas", []string{"--set", "replicaCount=3", "--set", "podDisruptionBudget.minAvailable=4"}, []string{"podDisruptionBudget.minAvailable (4)", "replicaCount (3)"}},
		{"PDB minAvailable 100%", []string{"--set-string", "podDisruptionBudget.minAvailable=100%"}, []string{"podDisruptionBudget.minAvailable (100%)", "replicaCount (2)"}},
		{"PDB minAvailable % rounding up to all", []string{"--set-string", "podDisruptionBudget.minAvailable=51%"}, []string{"podDisruptionBudget.minAvailable (51%)", "replicaCount (2)"}},
		{"PDB minAvailable not a percentage", []string{"--set-string", "podDisruptionBudget.minAvailable=one"}, []string{"minAvailable"}},
		{"Recreate strategy", []string{"--set", "updateStrategy.type=Recreate"}, []string{"updateStrategy", "RollingUpdate"}},
		{"rolling update that can never progress", []string{"--set", "updateStrategy.rollingUpdate.maxSurge=0"}, []string{"updateStrategy.rollingUpdate.maxSurge", "maxUnavailable"}},
		{"misspelt rolling update key", []string{"--set", "updateStrategy.rollingUpdate.maxSurges=2"}, []string{"maxSurges"}},
		{"match condition named like the chart's", []string{"--set", "webhook.extraMatchConditions[0].name=not-a-mirror-pod", "--set-string", "webhook.extraMatchConditions[0].expression=true"}, []string{"webhook.extraMatchConditions", `"not-a-mirror-pod"`}},
		{"match conditions with one name", []string{"--set", "webhook.extraMatchConditions[0].name=a", "--set-string", "webhook.extraMatchConditions[0].expression=true",
			"--set", "webhook.extraMatchConditions[1].name=a", "--set-string", "webhook.extraMatchConditions[1].expression=false"}, []string{"webhook.extraMatchConditions", `"a"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "3", tc.args...)
			require.Error(t, err, "rendered")
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

// TestWorkableEdgeValues: the closest values that do work still render.
func TestWorkableEdgeValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"1 s of grace left", []string{"--set", "shutdownDelaySeconds=28"}},
		{"no shutdown delay, shortest grace", []string{"--set", "shutdownDelaySeconds=0", "--set", "terminationGracePeriodSeconds=2"}},
		{"PDB minAvailable one below replicas", []string{"--set", "replicaCount=3", "--set", "podDisruptionBudget.minAvailable=2"}},
		{"PDB minAvailable 50%", []string{"--set-string", "podDisruptionBudget.minAvailable=50%"}},
		{"PDB off", []string{"--set", "podDisruptionBudget.enabled=false", "--set", "podDisruptionBudget.minAvailable=2"}},
		{"one replica: no PDB", []string{"--set", "replicaCount=1", "--set", "podDisruptionBudget.minAvailable=1"}},
		{"percentages in the rolling update", []string{"--set-string", "updateStrategy.rollingUpdate.maxSurge=50%"}},
		{"chart's condition name free", []string{"--set", "webhook.skipMirrorPods=false", "--set", "webhook.extraMatchConditions[0].name=mine", "--set-string", "webhook.extraMatchConditions[0].expression=true"}},
		{"chart's condition name, its condition off", []string{"--set", "webhook.skipMirrorPods=false", "--set", "webhook.extraMatchConditions[0].name=not-a-mirror-pod", "--set-string", "webhook.extraMatchConditions[0].expression=true"}},
		{"PDB minAvailable as a numeric string", []string{"--set", "replicaCount=3", "--set-string", "podDisruptionBudget.minAvailable=2"}},
		{"quantity with a sign", []string{"--set", "resources.requests.cpu=+100m"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "3", tc.args...)
			require.NoError(t, err)
		})
	}
}

// TestShutdownGraceArg: --shutdown-grace is what the render-time check
// computes: the grace period minus the delay minus one second.
func TestShutdownGraceArg(t *testing.T) {
	out, err := render(t, "3", "--set", "shutdownDelaySeconds=28")
	require.NoError(t, err)
	dep := decode[appsv1.Deployment](t, must(t, split(t, out), "Deployment"))
	args := dep.Spec.Template.Spec.Containers[0].Args
	assert.Contains(t, args, "--shutdown-delay=28s")
	assert.Contains(t, args, "--shutdown-grace=1s")
}

// TestNodeFailureTolerations: the webhook pods tolerate a not-ready or
// unreachable node for 30 s (not the API server's default 300 s), so a lost
// node's replica is replaced quickly; a toleration the user gives for one of
// those taints replaces the chart's for that taint (the shortest matching
// toleration is what the taint manager applies, so adding ours would cut
// theirs short), and other user tolerations are kept.
func TestNodeFailureTolerations(t *testing.T) {
	sec := func(n int64) *int64 { return &n }
	chart := func(key string, s int64) corev1.Toleration {
		return corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: sec(s)}
	}
	const notReady, unreachable = "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"
	tolerations := func(args ...string) []corev1.Toleration {
		out, err := render(t, "3", args...)
		require.NoError(t, err)
		return decode[appsv1.Deployment](t, must(t, split(t, out), "Deployment")).Spec.Template.Spec.Tolerations
	}

	assert.ElementsMatch(t, []corev1.Toleration{chart(notReady, 30), chart(unreachable, 30)}, tolerations())
	assert.ElementsMatch(t, []corev1.Toleration{chart(notReady, 120), chart(unreachable, 120)}, tolerations("--set", "nodeFailureTolerationSeconds=120"))

	dedicated := corev1.Toleration{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "platform", Effect: corev1.TaintEffectNoSchedule}
	assert.ElementsMatch(t, []corev1.Toleration{dedicated, chart(notReady, 30), chart(unreachable, 30)}, tolerations("-f", "testdata/custom.values.yaml"))

	forever := corev1.Toleration{Key: notReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}
	assert.ElementsMatch(t, []corev1.Toleration{forever, chart(unreachable, 30)}, tolerations(
		"--set", "tolerations[0].key="+notReady, "--set", "tolerations[0].operator=Exists", "--set", "tolerations[0].effect=NoExecute"),
		"the user's toleration for not-ready replaces the chart's")

	anyEffect := corev1.Toleration{Key: unreachable, Operator: corev1.TolerationOpExists}
	assert.ElementsMatch(t, []corev1.Toleration{anyEffect, chart(notReady, 30)}, tolerations(
		"--set", "tolerations[0].key="+unreachable, "--set", "tolerations[0].operator=Exists"),
		"an empty effect covers NoExecute")

	noSchedule := corev1.Toleration{Key: notReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	assert.ElementsMatch(t, []corev1.Toleration{noSchedule, chart(notReady, 30), chart(unreachable, 30)}, tolerations(
		"--set", "tolerations[0].key="+notReady, "--set", "tolerations[0].operator=Exists", "--set", "tolerations[0].effect=NoSchedule"),
		"a NoSchedule toleration does not cover eviction")

	everything := corev1.Toleration{Operator: corev1.TolerationOpExists}
	assert.ElementsMatch(t, []corev1.Toleration{everything}, tolerations("--set", "tolerations[0].operator=Exists"),
		"a toleration of every taint covers both")
}

// TestPriorityClass: the webhook pods get the cluster's default priority
// unless a class is given (system-cluster-critical is recommended but not
// the default: a cluster may limit it with a ResourceQuota admission
// configuration, see the README).
func TestPriorityClass(t *testing.T) {
	class := func(args ...string) string {
		out, err := render(t, "3", args...)
		require.NoError(t, err)
		return decode[appsv1.Deployment](t, must(t, split(t, out), "Deployment")).Spec.Template.Spec.PriorityClassName
	}
	assert.Equal(t, "", class())
	assert.Equal(t, "platform-critical", class("-f", "testdata/custom.values.yaml"))
	assert.Equal(t, "system-cluster-critical", class("--set", "priorityClassName=system-cluster-critical"))
}

// TestReusedOldValues: `helm upgrade --reuse-values` renders the new chart
// with the release's old values instead of the chart's values.yaml, so keys
// added since are missing (testdata/release-values-b37cee1.yaml is
// values.yaml as it was before ca.privateKey and
// nodeFailureTolerationSeconds existed). The CA keeps the key settings it
// had, and a lost node's replica is still replaced after 30 s, not at once.
func TestReusedOldValues(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS(chartDir)))
	old, err := os.ReadFile("testdata/release-values-b37cee1.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "values.yaml"), old, 0o644))
	for _, major := range []string{"3", "4"} {
		out, err := renderChart(t, major, dir)
		require.NoError(t, err, "helm %s", major)
		objs := split(t, out)
		ca, ok := objs["Certificate/podmeta-ca"]
		require.True(t, ok, "helm %s: no CA Certificate", major)
		var cert struct {
			Spec struct {
				PrivateKey map[string]any `json:"privateKey"`
			} `json:"spec"`
		}
		require.NoError(t, yaml.Unmarshal(ca.raw, &cert))
		assert.Equal(t, map[string]any{"algorithm": "ECDSA", "size": float64(256), "rotationPolicy": "Never"},
			cert.Spec.PrivateKey, "helm %s: the CA's key settings", major)
		d := decode[appsv1.Deployment](t, must(t, objs, "Deployment"))
		for _, tol := range d.Spec.Template.Spec.Tolerations {
			require.NotNil(t, tol.TolerationSeconds, "helm %s: %+v", major, tol)
			assert.Equal(t, int64(30), *tol.TolerationSeconds, "helm %s: %s", major, tol.Key)
		}
		assert.Len(t, d.Spec.Template.Spec.Tolerations, 2, "helm %s", major)
	}
}
