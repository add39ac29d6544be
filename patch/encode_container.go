package patch

import (
	"maps"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podmeta/podmeta/internal/jsonstr"
)

// The ambassador container and its projected token volume, written by hand
// like the env vars: encoding/json spent half of the patch's time on these
// two values, the same for every pod. Only the fields podmeta sets are
// written; a value with any other field set (a user's container reaching
// the patch on reinvocation, a field newer than this code) reports false
// and goes to encoding/json. Field order and omitempty follow the struct
// definitions (TestFastPathKnowsEveryField counts their fields).

func appendContainer(b []byte, c *corev1.Container) ([]byte, bool) {
	if c.Command != nil || c.WorkingDir != "" || c.Ports != nil || c.EnvFrom != nil ||
		c.ResizePolicy != nil || c.RestartPolicyRules != nil || c.VolumeDevices != nil ||
		c.LivenessProbe != nil || c.Lifecycle != nil || c.TerminationMessagePath != "" ||
		c.Stdin || c.StdinOnce || c.TTY || c.Resources.Claims != nil {
		return b, false
	}
	var ok bool
	b = append(b, `{"name":`...)
	b = jsonstr.Append(b, c.Name)
	if c.Image != "" {
		b = append(b, `,"image":`...)
		b = jsonstr.Append(b, c.Image)
	}
	if len(c.Args) > 0 {
		b = append(b, `,"args":`...)
		b = appendStrings(b, c.Args)
	}
	if len(c.Env) > 0 {
		b = append(b, `,"env":`...)
		if b, ok = appendList(b, c.Env, appendEnvVar); !ok {
			return b, false
		}
	}
	// omitempty never omits a struct: encoding/json always writes resources.
	b = append(b, `,"resources":{`...)
	if len(c.Resources.Limits) > 0 {
		b = append(b, `"limits":`...)
		if b, ok = appendResourceList(b, c.Resources.Limits); !ok {
			return b, false
		}
		if len(c.Resources.Requests) > 0 {
			b = append(b, ',')
		}
	}
	if len(c.Resources.Requests) > 0 {
		b = append(b, `"requests":`...)
		if b, ok = appendResourceList(b, c.Resources.Requests); !ok {
			return b, false
		}
	}
	b = append(b, '}')
	if c.RestartPolicy != nil {
		b = append(b, `,"restartPolicy":`...)
		b = jsonstr.Append(b, string(*c.RestartPolicy))
	}
	if len(c.VolumeMounts) > 0 {
		b = append(b, `,"volumeMounts":`...)
		if b, ok = appendList(b, c.VolumeMounts, appendVolumeMount); !ok {
			return b, false
		}
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
	}{{`,"readinessProbe":`, c.ReadinessProbe}, {`,"startupProbe":`, c.StartupProbe}} {
		if p.probe != nil {
			b = append(b, p.name...)
			if b, ok = appendProbe(b, p.probe); !ok {
				return b, false
			}
		}
	}
	if c.TerminationMessagePolicy != "" {
		b = append(b, `,"terminationMessagePolicy":`...)
		b = jsonstr.Append(b, string(c.TerminationMessagePolicy))
	}
	if c.ImagePullPolicy != "" {
		b = append(b, `,"imagePullPolicy":`...)
		b = jsonstr.Append(b, string(c.ImagePullPolicy))
	}
	if c.SecurityContext != nil {
		b = append(b, `,"securityContext":`...)
		if b, ok = appendSecurityContext(b, c.SecurityContext); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

func appendStrings[S ~string](b []byte, list []S) []byte {
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, string(s))
	}
	return append(b, ']')
}

// appendResourceList writes a ResourceList with its keys sorted, as
// encoding/json writes maps.
func appendResourceList(b []byte, l corev1.ResourceList) ([]byte, bool) {
	b = append(b, '{')
	for i, k := range slices.Sorted(maps.Keys(l)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, string(k))
		b = append(b, ':')
		q := l[k]
		var ok bool
		if b, ok = appendQuantity(b, &q); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

func appendProbe(b []byte, p *corev1.Probe) ([]byte, bool) {
	h := p.HTTPGet
	if p.Exec != nil || p.TCPSocket != nil || p.GRPC != nil || p.TerminationGracePeriodSeconds != nil ||
		h == nil || h.Host != "" || h.Scheme != "" || h.HTTPHeaders != nil || h.Protocol != nil {
		return b, false
	}
	b = append(b, `{"httpGet":{`...)
	if h.Path != "" {
		b = append(b, `"path":`...)
		b = jsonstr.Append(b, h.Path)
		b = append(b, ',')
	}
	b = append(b, `"port":`...)
	switch h.Port.Type {
	case intstr.Int:
		b = strconv.AppendInt(b, int64(h.Port.IntVal), 10)
	case intstr.String:
		b = jsonstr.Append(b, h.Port.StrVal)
	default:
		return b, false
	}
	b = append(b, '}')
	for _, f := range []struct {
		name string
		v    int32
	}{
		{`,"initialDelaySeconds":`, p.InitialDelaySeconds}, {`,"timeoutSeconds":`, p.TimeoutSeconds},
		{`,"periodSeconds":`, p.PeriodSeconds}, {`,"successThreshold":`, p.SuccessThreshold},
		{`,"failureThreshold":`, p.FailureThreshold},
	} {
		if f.v != 0 {
			b = append(b, f.name...)
			b = strconv.AppendInt(b, int64(f.v), 10)
		}
	}
	return append(b, '}'), true
}

func appendSecurityContext(b []byte, s *corev1.SecurityContext) ([]byte, bool) {
	if s.Privileged != nil || s.SELinuxOptions != nil || s.WindowsOptions != nil || s.ProcMount != nil ||
		s.AppArmorProfile != nil || (s.SeccompProfile != nil && s.SeccompProfile.LocalhostProfile != nil) {
		return b, false
	}
	b = append(b, '{')
	comma := false
	field := func(name string) {
		if comma {
			b = append(b, ',')
		}
		comma = true
		b = append(b, name...)
	}
	if c := s.Capabilities; c != nil {
		field(`"capabilities":{`)
		if len(c.Add) > 0 {
			b = append(b, `"add":`...)
			b = appendStrings(b, c.Add)
			if len(c.Drop) > 0 {
				b = append(b, ',')
			}
		}
		if len(c.Drop) > 0 {
			b = append(b, `"drop":`...)
			b = appendStrings(b, c.Drop)
		}
		b = append(b, '}')
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{{`"runAsUser":`, s.RunAsUser}, {`"runAsGroup":`, s.RunAsGroup}} {
		if f.v != nil {
			field(f.name)
			b = strconv.AppendInt(b, *f.v, 10)
		}
	}
	for _, f := range []struct {
		name string
		v    *bool
	}{{`"runAsNonRoot":`, s.RunAsNonRoot}, {`"readOnlyRootFilesystem":`, s.ReadOnlyRootFilesystem}, {`"allowPrivilegeEscalation":`, s.AllowPrivilegeEscalation}} {
		if f.v != nil {
			field(f.name)
			b = strconv.AppendBool(b, *f.v)
		}
	}
	if p := s.SeccompProfile; p != nil {
		field(`"seccompProfile":{"type":`)
		b = jsonstr.Append(b, string(p.Type))
		b = append(b, '}')
	}
	return append(b, '}'), true
}

func appendProjected(b []byte, p *corev1.ProjectedVolumeSource) ([]byte, bool) {
	if p.DefaultUser != nil {
		return b, false
	}
	b = append(b, `{"sources":`...)
	if p.Sources == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range p.Sources {
			if i > 0 {
				b = append(b, ',')
			}
			var ok bool
			if b, ok = appendProjection(b, &p.Sources[i]); !ok {
				return b, false
			}
		}
		b = append(b, ']')
	}
	if p.DefaultMode != nil {
		b = append(b, `,"defaultMode":`...)
		b = strconv.AppendInt(b, int64(*p.DefaultMode), 10)
	}
	return append(b, '}'), true
}

// appendProjection writes one source of the kinds podmeta uses (one per
// entry, as it builds them).
func appendProjection(b []byte, s *corev1.VolumeProjection) ([]byte, bool) {
	switch {
	case s.Secret != nil || s.ClusterTrustBundle != nil || s.PodCertificate != nil:
		return b, false
	case s.DownwardAPI != nil && s.ConfigMap == nil && s.ServiceAccountToken == nil:
		b = append(b, `{"downwardAPI":{`...)
		b, ok := appendDownwardItems(b, s.DownwardAPI.Items)
		return append(b, "}}"...), ok
	case s.ConfigMap != nil && s.DownwardAPI == nil && s.ServiceAccountToken == nil:
		c := s.ConfigMap
		if c.Optional != nil {
			return b, false
		}
		b = append(b, `{"configMap":{`...)
		if c.Name != "" {
			b = append(b, `"name":`...)
			b = jsonstr.Append(b, c.Name)
			if len(c.Items) > 0 {
				b = append(b, ',')
			}
		}
		if len(c.Items) > 0 {
			b = append(b, `"items":`...)
			var ok bool
			if b, ok = appendList(b, c.Items, appendKeyToPath); !ok {
				return b, false
			}
		}
		return append(b, "}}"...), true
	case s.ServiceAccountToken != nil && s.DownwardAPI == nil && s.ConfigMap == nil:
		t := s.ServiceAccountToken
		if t.User != nil {
			return b, false
		}
		b = append(b, `{"serviceAccountToken":{`...)
		if t.Audience != "" {
			b = append(b, `"audience":`...)
			b = jsonstr.Append(b, t.Audience)
			b = append(b, ',')
		}
		if t.ExpirationSeconds != nil {
			b = append(b, `"expirationSeconds":`...)
			b = strconv.AppendInt(b, *t.ExpirationSeconds, 10)
			b = append(b, ',')
		}
		b = append(b, `"path":`...)
		b = jsonstr.Append(b, t.Path)
		return append(b, "}}"...), true
	}
	return b, false
}

func appendKeyToPath(b []byte, k *corev1.KeyToPath) ([]byte, bool) {
	if k.Mode != nil || k.User != nil {
		return b, false
	}
	b = append(b, `{"key":`...)
	b = jsonstr.Append(b, k.Key)
	b = append(b, `,"path":`...)
	b = jsonstr.Append(b, k.Path)
	return append(b, '}'), true
}
