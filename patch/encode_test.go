package patch

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ptr[T any](v T) *T { return &v }

func fieldRef(path string) *corev1.EnvVarSource {
	return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}
}

func resourceRef(container, res, divisor string) *corev1.EnvVarSource {
	return &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: container, Resource: res, Divisor: resource.MustParse(divisor)}}
}

// ambassador and apiAccess are shaped like what mutate injects.
func ambassador() *corev1.Container {
	health := intstr.FromInt(8002)
	return &corev1.Container{
		Name: "podmeta-ambassador", Image: "ghcr.io/podmeta/podmeta-ambassador:latest", ImagePullPolicy: corev1.PullIfNotPresent,
		Args: []string{"--listen=127.0.0.1:8001", "--policy=allow-list", "--allow=GET /api/v1/namespaces/a/configmaps/**"},
		Resources: corev1.ResourceRequirements{
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi"), corev1.ResourceCPU: resource.MustParse("200m")},
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("0.01"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		},
		StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: health}}, PeriodSeconds: 1, FailureThreshold: 30},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: health}}, PeriodSeconds: 10},
		VolumeMounts:   []corev1.VolumeMount{{Name: "podmeta-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(65532)), RunAsGroup: ptr(int64(65532)), ReadOnlyRootFilesystem: ptr(true),
			AllowPrivilegeEscalation: ptr(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		RestartPolicy:            ptr(corev1.ContainerRestartPolicyAlways),
	}
}

func apiAccess() *corev1.Volume {
	return &corev1.Volume{Name: "podmeta-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr(int32(0o444)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		},
	}}}
}

func downward(items ...corev1.DownwardAPIVolumeFile) *corev1.Volume {
	return &corev1.Volume{Name: "podmeta", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: items}}}
}

// TestMarshalMatchesEncodingJSON holds Marshal to encoding/json's exact
// bytes, for the shapes it writes itself and for those it hands over.
func TestMarshalMatchesEncodingJSON(t *testing.T) {
	envs := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: fieldRef("metadata.name")},
		{Name: "CPU", ValueFrom: resourceRef("app", "requests.cpu", "1m")},
		{Name: "MEM", ValueFrom: resourceRef("", "limits.memory", "1")},
		{Name: "ZERO_DIVISOR", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
		{Name: "URL", Value: "http://127.0.0.1:8001"},
		{Name: "EMPTY"},
		{Name: "BOTH", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}, ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
		{Name: "EMPTY_SOURCE", ValueFrom: &corev1.EnvVarSource{}},
		{Name: "SECRET", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k", LocalObjectReference: corev1.LocalObjectReference{Name: "s"}}}},
		{Name: "CM", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "k"}}},
		{Name: "FILE", ValueFrom: &corev1.EnvVarSource{FileKeyRef: &corev1.FileKeySelector{Key: "k"}}},
		{Name: "ESCAPES", Value: "a\"b\\c\n\t<tag>&amp; é ☃ \u2028 \x7f"},
		{Name: "INVALID_UTF8", Value: "\xff\xfe"},
	}
	mounts := []corev1.VolumeMount{
		{Name: "podmeta", MountPath: "/etc/podmeta", ReadOnly: true},
		{Name: "data", MountPath: "/data", SubPath: "x", SubPathExpr: "$(POD)"},
		{Name: "rro", MountPath: "/r", ReadOnly: true, RecursiveReadOnly: ptr(corev1.RecursiveReadOnlyEnabled)},
		{Name: "prop", MountPath: "/p", MountPropagation: ptr(corev1.MountPropagationHostToContainer)},
		{Name: "opts", MountPath: "/o", BindMountOptions: []string{"noexec"}},
	}
	items := []corev1.DownwardAPIVolumeFile{
		{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.labels"}},
		{Path: "app/cpu_limit", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "app", Resource: "limits.cpu", Divisor: resource.MustParse("1m")}},
		{Path: "bare"},
	}
	values := map[string]any{
		"string":             "true",
		"string escapes":     "<&>\u2028\"",
		"empty map":          map[string]string{},
		"nil map":            map[string]string(nil),
		"map":                map[string]string{"b": "2", "a": "1", "podmeta.io/status": `{"injected":["env"]}`, "é": "<"},
		"nil env list":       []corev1.EnvVar(nil),
		"empty env list":     []corev1.EnvVar{},
		"env list":           envs,
		"nil mount list":     []corev1.VolumeMount(nil),
		"mount list":         mounts,
		"downward volume":    downward(items...),
		"downward no items":  downward(),
		"downward with mode": &corev1.Volume{Name: "m", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: items, DefaultMode: ptr(int32(0o444))}}},
		"item with mode":     downward(corev1.DownwardAPIVolumeFile{Path: "x", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}, Mode: ptr(int32(0o400))}),
		"downward and other": &corev1.Volume{Name: "x", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{}, EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		"empty dir volume":   &corev1.Volume{Name: "x", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		"volume list":        []corev1.Volume{*downward(items...), {Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}}},
		"container":          &corev1.Container{Name: "podmeta-ambassador", Image: "x", Env: envs, VolumeMounts: mounts, RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)},
		"container list":     []corev1.Container{{Name: "a"}},
		"ambassador":         ambassador(),
		"ambassador non-native": func() *corev1.Container {
			c := ambassador()
			c.RestartPolicy, c.Image, c.ImagePullPolicy, c.TerminationMessagePolicy = nil, "", "", ""
			c.Resources = corev1.ResourceRequirements{}
			c.SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}}, SeccompProfile: &corev1.SeccompProfile{}}
			c.ReadinessProbe.HTTPGet.Port = intstr.FromString("health")
			c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt(1)}}, InitialDelaySeconds: 1, TimeoutSeconds: 2, SuccessThreshold: 3}
			return c
		}(),
		"ambassador with env": func() *corev1.Container {
			c := ambassador()
			c.Env = envs[:5]
			c.Resources.Limits = nil
			c.Args = []string{}
			c.SecurityContext.Capabilities = &corev1.Capabilities{Add: []corev1.Capability{"A"}, Drop: []corev1.Capability{"<B>"}}
			return c
		}(),
		"container with command":    &corev1.Container{Name: "c", Command: []string{"x"}},
		"container with ports":      &corev1.Container{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 1}}},
		"container with liveness":   &corev1.Container{Name: "c", LivenessProbe: &corev1.Probe{}},
		"container with tty":        &corev1.Container{Name: "c", TTY: true},
		"container with claims":     &corev1.Container{Name: "c", Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}}},
		"probe with exec":           &corev1.Container{Name: "c", ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}},
		"probe with scheme":         &corev1.Container{Name: "c", StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Scheme: corev1.URISchemeHTTPS}}}},
		"probe with grace":          &corev1.Container{Name: "c", StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{}}, TerminationGracePeriodSeconds: ptr(int64(1))}},
		"privileged":                &corev1.Container{Name: "c", SecurityContext: &corev1.SecurityContext{Privileged: ptr(true)}},
		"localhost seccomp":         &corev1.Container{Name: "c", SecurityContext: &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr("p")}}},
		"empty security context":    &corev1.Container{Name: "c", SecurityContext: &corev1.SecurityContext{}},
		"api access volume":         apiAccess(),
		"projected without sources": &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
		"projected variants": &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "vault", Path: "t"}},
			{ConfigMap: &corev1.ConfigMapProjection{}},
			{ConfigMap: &corev1.ConfigMapProjection{Items: []corev1.KeyToPath{{Key: "k", Path: "p"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{}},
		}}}},
		"projected with secret":  &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{Secret: &corev1.SecretProjection{}}}}}},
		"projected two in one":   &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ConfigMap: &corev1.ConfigMapProjection{}, DownwardAPI: &corev1.DownwardAPIProjection{}}}}}},
		"projected empty source": &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{}}}}},
		"projected optional":     &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ConfigMap: &corev1.ConfigMapProjection{Optional: ptr(true)}}}}}},
		"projected item mode":    &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ConfigMap: &corev1.ConfigMapProjection{Items: []corev1.KeyToPath{{Key: "k", Path: "p", Mode: ptr(int32(0o400))}}}}}}}},
		"projected default user": &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultUser: ptr(int64(1))}}},
		"projected and secret":   &corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}, Secret: &corev1.SecretVolumeSource{}}},
		"other type":             metav1.ObjectMeta{Name: "x"},
		"nil":                    nil,
		"nil env":                (*corev1.EnvVar)(nil),
		"nil mount":              (*corev1.VolumeMount)(nil),
		"nil volume":             (*corev1.Volume)(nil),
	}
	for i := range envs {
		values["env "+envs[i].Name] = &envs[i]
	}
	for i := range mounts {
		values["mount "+mounts[i].Name] = &mounts[i]
	}
	for name, v := range values {
		t.Run(name, func(t *testing.T) {
			ops := []Operation{{Op: "add", Path: "/spec/x~1y", Value: v}, {Op: "add", Path: "/metadata/annotations/a<b", Value: "v"}}
			want, err := json.Marshal(ops)
			require.NoError(t, err)
			got, err := Marshal(ops)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got))
			// Append after other bytes (the webhook's pooled buffer): they
			// are kept, and the fallback writes in place after them.
			prefix := []byte("previous answer ")
			got, err = Append(append(make([]byte, 0, len(prefix)+4), prefix...), ops)
			require.NoError(t, err)
			assert.Equal(t, string(prefix)+string(want), string(got))
		})
	}
}

func TestMarshalEmpty(t *testing.T) {
	for _, ops := range [][]Operation{nil, {}} {
		got, err := Marshal(ops)
		require.NoError(t, err)
		assert.Equal(t, "[]", string(got))
	}
}

func TestMarshalError(t *testing.T) {
	_, err := Marshal([]Operation{{Op: "add", Path: "/x", Value: func() {}}})
	require.ErrorContains(t, err, "encode patch operation add /x: json: unsupported type: func()")
}

// TestFastPathKnowsEveryField fails when a k8s.io/api upgrade adds a field
// to a type Marshal writes itself: teach encode.go the field (and its
// fallback), then update the count here.
func TestFastPathKnowsEveryField(t *testing.T) {
	for typ, n := range map[reflect.Type]int{
		reflect.TypeFor[corev1.EnvVar]():                        3,
		reflect.TypeFor[corev1.EnvVarSource]():                  5,
		reflect.TypeFor[corev1.ObjectFieldSelector]():           2,
		reflect.TypeFor[corev1.ResourceFieldSelector]():         3,
		reflect.TypeFor[corev1.VolumeMount]():                   8,
		reflect.TypeFor[corev1.Volume]():                        2,
		reflect.TypeFor[corev1.DownwardAPIVolumeSource]():       3,
		reflect.TypeFor[corev1.DownwardAPIVolumeFile]():         5,
		reflect.TypeFor[corev1.Container]():                     25,
		reflect.TypeFor[corev1.ResourceRequirements]():          3,
		reflect.TypeFor[corev1.Probe]():                         7,
		reflect.TypeFor[corev1.ProbeHandler]():                  4,
		reflect.TypeFor[corev1.HTTPGetAction]():                 6,
		reflect.TypeFor[corev1.SecurityContext]():               12,
		reflect.TypeFor[corev1.Capabilities]():                  2,
		reflect.TypeFor[corev1.SeccompProfile]():                2,
		reflect.TypeFor[corev1.ProjectedVolumeSource]():         3,
		reflect.TypeFor[corev1.VolumeProjection]():              6,
		reflect.TypeFor[corev1.ServiceAccountTokenProjection](): 4,
		reflect.TypeFor[corev1.ConfigMapProjection]():           3,
		reflect.TypeFor[corev1.KeyToPath]():                     4,
		reflect.TypeFor[corev1.DownwardAPIProjection]():         1,
	} {
		assert.Equal(t, n, typ.NumField(), "%s has a new field: patch/encode.go must write it", typ)
	}
}

// FuzzMarshal: any strings in the shapes written by hand encode exactly as
// encoding/json encodes them.
func FuzzMarshal(f *testing.F) {
	f.Add("POD_NAME", "", "metadata.name", "app", "requests.cpu", "/etc/podmeta", "v1")
	f.Add("A", "<v>&\u2028", "", "", "", "", "")
	f.Add("\xff", "\x00\n", "é", "☃", "\"", "\\", "\x7f")
	f.Fuzz(func(t *testing.T, name, value, field, container, res, path, api string) {
		ops := []Operation{
			{Op: "add", Path: path, Value: &corev1.EnvVar{Name: name, Value: value, ValueFrom: &corev1.EnvVarSource{
				FieldRef:         &corev1.ObjectFieldSelector{APIVersion: api, FieldPath: field},
				ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: container, Resource: res, Divisor: resource.MustParse("1m")},
			}}},
			{Op: "add", Path: name, Value: []corev1.VolumeMount{{Name: name, MountPath: path, SubPath: value, SubPathExpr: field, ReadOnly: len(value)%2 == 0}}},
			{Op: "add", Path: value, Value: downward(corev1.DownwardAPIVolumeFile{Path: path, FieldRef: &corev1.ObjectFieldSelector{APIVersion: api, FieldPath: field}})},
			{Op: "add", Path: field, Value: map[string]string{name: value, container: res}},
		}
		want, err := json.Marshal(ops)
		require.NoError(t, err)
		got, err := Marshal(ops)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})
}

// TestFastPathTaken: what mutate injects is written by hand, not handed to
// encoding/json (the table above would pass either way).
func TestFastPathTaken(t *testing.T) {
	_, ok := appendContainer(nil, ambassador())
	assert.True(t, ok, "ambassador container")
	_, ok = appendVolume(nil, apiAccess())
	assert.True(t, ok, "api access volume")
	_, ok = appendVolume(nil, downward(corev1.DownwardAPIVolumeFile{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.labels"}}))
	assert.True(t, ok, "downwardAPI volume")
	_, ok = appendContainer(nil, &corev1.Container{Name: "c", Command: []string{"x"}})
	assert.False(t, ok, "a field the fast path does not write")
}

// appendQuantity writes what Quantity.MarshalJSON writes: the parsed
// string where ParseQuantity keeps it (canonical or not: "1.500", "+1"),
// the canonical form otherwise, in a buffer with and without room.
func TestAppendQuantity(t *testing.T) {
	for _, s := range []string{"0", "1", "1m", "1000m", "0.5", "1e3", "500m", "512Mi", "1.5Gi", "100M", "2k", "1Ki", "-1", "123456789012345678901234567890", "0.000000001", "1n",
		"1.500", "2.250", "+1", "+500m", "+1Ki", "01", "1e03", "1E3"} {
		q := resource.MustParse(s)
		want, err := q.MarshalJSON()
		require.NoError(t, err)
		for _, room := range []int{0, 64} {
			b, ok := appendQuantity(append(make([]byte, 0, 3+room), "ab,"...), &q)
			require.True(t, ok)
			assert.Equal(t, "ab,"+string(want), string(b), "%s (room %d)", s, room)
		}
		// A quantity built, not parsed, has no string: the canonical form.
		built := *resource.NewMilliQuantity(q.MilliValue(), q.Format)
		want, err = built.MarshalJSON()
		require.NoError(t, err)
		b, _ := appendQuantity(nil, resource.NewMilliQuantity(q.MilliValue(), q.Format))
		assert.Equal(t, string(want), string(b), "built from %s", s)
	}
}

// Env vars repeated across containers (copies of one template, as mutate
// adds them) are written once and copied; vars that only look alike (same
// name and value, another source, or an equal source at another address
// with other contents) are each written in full. The result is what
// encoding/json writes either way.
func TestMarshalRepeatedEnv(t *testing.T) {
	tmpl := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: fieldRef("metadata.name")},
		{Name: "MEM", ValueFrom: resourceRef("", "limits.memory", "1")},
		{Name: "URL", Value: "http://127.0.0.1:8001"},
	}
	var ops []Operation
	for c := range 3 {
		for i := range tmpl {
			e := tmpl[i] // a copy sharing the source, as mutate makes them
			ops = append(ops, Operation{Op: "add", Path: fmt.Sprintf("/spec/containers/%d/env/-", c), Value: &e})
		}
	}
	lookalikes := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: fieldRef("metadata.namespace")},
		{Name: "POD_NAME", ValueFrom: fieldRef("metadata.name")},
		{Name: "URL", Value: "http://127.0.0.1:9001"},
		{Name: "MEM", ValueFrom: resourceRef("app", "limits.memory", "1")},
	}
	for i := range lookalikes {
		ops = append(ops, Operation{Op: "add", Path: "/spec/containers/3/env/-", Value: &lookalikes[i]})
	}
	for i := range 40 { // more distinct vars than are remembered
		ops = append(ops, Operation{Op: "add", Path: "/spec/containers/4/env/-", Value: &corev1.EnvVar{Name: fmt.Sprintf("V%d", i), Value: "x"}})
	}
	ops = append(ops, Operation{Op: "add", Path: "/spec/containers/5/env/-", Value: &tmpl[0]})
	want, err := json.Marshal(ops)
	require.NoError(t, err)
	got, err := Marshal(ops)
	require.NoError(t, err)
	assert.JSONEq(t, string(want), string(got))
	assert.Equal(t, string(want), string(got))
}
