package patch

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podmeta/podmeta/internal/jsonstr"
)

// Marshal encodes ops as a JSON Patch document, byte for byte what
// encoding/json.Marshal(ops) gives (the tests hold it to that), except that
// no operations encode as [] (a valid, empty patch) where encoding/json
// writes null for a nil slice.
//
// Why not just json.Marshal: the values podmeta adds by the dozen per pod
// (env vars, mounts, the downwardAPI volume's items; once per pod, the
// ambassador container and its token volume) are large Kubernetes
// structs that are almost entirely empty, and encoding/json visits every
// field of them by reflection; that made encoding the patch the costliest
// step of a review after decoding the pod. Those shapes are written here
// directly. Anything else, or any of them with a field this file does not
// write (a user's env var from secretKeyRef, a field newer than this code),
// goes to encoding/json, so the output never loses a field.
func Marshal(ops []Operation) ([]byte, error) {
	return Append(make([]byte, 0, 64+256*len(ops)), ops)
}

// Append appends what Marshal returns to b: a caller that reuses its
// buffer (the webhook pools them) allocates nothing for the patch.
func Append(b []byte, ops []Operation) ([]byte, error) {
	var memo [32]envWritten
	written := memo[:0]
	b = append(b, '[')
	for i := range ops {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"op":`...)
		b = jsonstr.Append(b, ops[i].Op)
		b = append(b, `,"path":`...)
		b = jsonstr.Append(b, ops[i].Path)
		b = append(b, `,"value":`...)
		e, isEnv := ops[i].Value.(*corev1.EnvVar)
		if isEnv && e != nil {
			if at, ok := findEnv(written, e); ok {
				b = append(append(b, b[at.start:at.end]...), '}')
				continue
			}
		}
		start := len(b)
		var err error
		if b, err = appendValue(b, ops[i].Value); err != nil {
			return nil, fmt.Errorf("encode patch operation %s %s: %w", ops[i].Op, ops[i].Path, err)
		}
		if isEnv && e != nil && len(written) < cap(written) {
			written = append(written, envWritten{env: *e, start: start, end: len(b)})
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

// envWritten is where an env var's JSON is in the patch being written.
// The env vars podmeta adds to each container are copies of one template
// (same name, value and source pointer), so each is encoded once and
// copied for the other containers.
type envWritten struct {
	env        corev1.EnvVar
	start, end int
}

func findEnv(written []envWritten, e *corev1.EnvVar) (envWritten, bool) {
	for _, w := range written {
		// Equal fields encode equally: the source is the same pointer,
		// not merely an equal value (comparing those would cost what
		// encoding them does).
		if w.env == *e {
			return w, true
		}
	}
	return envWritten{}, false
}

func appendValue(b []byte, v any) ([]byte, error) {
	n := len(b)
	ok := false
	switch v := v.(type) {
	case string:
		return jsonstr.Append(b, v), nil
	case map[string]string:
		return appendStringMap(b, v), nil
	case *corev1.EnvVar:
		if v != nil {
			b, ok = appendEnvVar(b, v)
		}
	case []corev1.EnvVar:
		b, ok = appendList(b, v, appendEnvVar)
	case *corev1.VolumeMount:
		if v != nil {
			b, ok = appendVolumeMount(b, v)
		}
	case []corev1.VolumeMount:
		b, ok = appendList(b, v, appendVolumeMount)
	case *corev1.Volume:
		if v != nil {
			b, ok = appendVolume(b, v)
		}
	case []corev1.Volume:
		b, ok = appendList(b, v, appendVolume)
	case *corev1.Container:
		if v != nil {
			b, ok = appendContainer(b, v)
		}
	case []corev1.Container:
		b, ok = appendList(b, v, appendContainer)
	}
	if ok {
		return b, nil
	}
	// Not a shape written above (nil pointers included): encoding/json,
	// through an Encoder straight into b (json.Marshal would return a copy).
	// Encode writes what Marshal does (HTML escaping on) plus a newline.
	w := appendWriter{b[:n]}
	if err := json.NewEncoder(&w).Encode(v); err != nil {
		return nil, err
	}
	return w.b[:len(w.b)-1], nil
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// appendList writes a JSON array, or reports false if one element has a
// shape the writer does not know (nil encodes as null, like encoding/json).
func appendList[T any](b []byte, list []T, one func([]byte, *T) ([]byte, bool)) ([]byte, bool) {
	if list == nil {
		return append(b, "null"...), true
	}
	b = append(b, '[')
	for i := range list {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = one(b, &list[i]); !ok {
			return b, false
		}
	}
	return append(b, ']'), true
}

// Field order and omitempty below follow the struct definitions in
// k8s.io/api/core/v1, as encoding/json does; TestFastPathKnowsEveryField
// fails when a k8s.io/api upgrade adds a field to one of these types.

func appendEnvVar(b []byte, e *corev1.EnvVar) ([]byte, bool) {
	b = append(b, `{"name":`...)
	b = jsonstr.Append(b, e.Name)
	if e.Value != "" {
		b = append(b, `,"value":`...)
		b = jsonstr.Append(b, e.Value)
	}
	if s := e.ValueFrom; s != nil {
		if s.ConfigMapKeyRef != nil || s.SecretKeyRef != nil || s.FileKeyRef != nil {
			return b, false
		}
		b = append(b, `,"valueFrom":{`...)
		comma := false
		if s.FieldRef != nil {
			b = append(b, `"fieldRef":`...)
			b = appendFieldSelector(b, s.FieldRef)
			comma = true
		}
		if s.ResourceFieldRef != nil {
			if comma {
				b = append(b, ',')
			}
			b = append(b, `"resourceFieldRef":`...)
			var ok bool
			if b, ok = appendResourceSelector(b, s.ResourceFieldRef); !ok {
				return b, false
			}
		}
		b = append(b, '}')
	}
	return append(b, '}'), true
}

func appendFieldSelector(b []byte, s *corev1.ObjectFieldSelector) []byte {
	b = append(b, '{')
	if s.APIVersion != "" {
		b = append(b, `"apiVersion":`...)
		b = jsonstr.Append(b, s.APIVersion)
		b = append(b, ',')
	}
	b = append(b, `"fieldPath":`...)
	b = jsonstr.Append(b, s.FieldPath)
	return append(b, '}')
}

func appendResourceSelector(b []byte, s *corev1.ResourceFieldSelector) ([]byte, bool) {
	b = append(b, '{')
	if s.ContainerName != "" {
		b = append(b, `"containerName":`...)
		b = jsonstr.Append(b, s.ContainerName)
		b = append(b, ',')
	}
	b = append(b, `"resource":`...)
	b = jsonstr.Append(b, s.Resource)
	// omitempty never omits a struct: encoding/json always writes divisor.
	b = append(b, `,"divisor":`...)
	b, ok := appendQuantity(b, &s.Divisor)
	return append(b, '}'), ok
}

// appendQuantity writes q as Quantity.MarshalJSON does: the string it was
// parsed from when ParseQuantity kept it (not always the canonical form:
// "1.500" stays "1.500"), else the canonical form. String on a copy:
// it caches the canonical form in its receiver.
func appendQuantity(b []byte, q *resource.Quantity) ([]byte, bool) {
	c := *q
	return jsonstr.Append(b, c.String()), true
}

func appendVolumeMount(b []byte, m *corev1.VolumeMount) ([]byte, bool) {
	if m.RecursiveReadOnly != nil || m.MountPropagation != nil || m.BindMountOptions != nil {
		return b, false
	}
	b = append(b, `{"name":`...)
	b = jsonstr.Append(b, m.Name)
	if m.ReadOnly {
		b = append(b, `,"readOnly":true`...)
	}
	b = append(b, `,"mountPath":`...)
	b = jsonstr.Append(b, m.MountPath)
	if m.SubPath != "" {
		b = append(b, `,"subPath":`...)
		b = jsonstr.Append(b, m.SubPath)
	}
	if m.SubPathExpr != "" {
		b = append(b, `,"subPathExpr":`...)
		b = jsonstr.Append(b, m.SubPathExpr)
	}
	return append(b, '}'), true
}

// appendVolume writes the volumes podmeta adds: a downwardAPI one (its
// files) and a projected one (the ambassador's token, CA and namespace);
// any other volume source is left to encoding/json.
func appendVolume(b []byte, v *corev1.Volume) ([]byte, bool) {
	if p := v.Projected; p != nil && v.VolumeSource == (corev1.VolumeSource{Projected: p}) {
		b = append(b, `{"name":`...)
		b = jsonstr.Append(b, v.Name)
		b = append(b, `,"projected":`...)
		b, ok := appendProjected(b, p)
		return append(b, '}'), ok
	}
	d := v.DownwardAPI
	if d == nil || v.VolumeSource != (corev1.VolumeSource{DownwardAPI: d}) || d.DefaultMode != nil || d.DefaultUser != nil {
		return b, false
	}
	b = append(b, `{"name":`...)
	b = jsonstr.Append(b, v.Name)
	b = append(b, `,"downwardAPI":{`...)
	b, ok := appendDownwardItems(b, d.Items)
	return append(b, "}}"...), ok
}

// appendDownwardItems writes `"items":[...]` (nothing for no items).
func appendDownwardItems(b []byte, items []corev1.DownwardAPIVolumeFile) ([]byte, bool) {
	if len(items) == 0 {
		return b, true
	}
	b = append(b, `"items":`...)
	return appendList(b, items, appendDownwardItem)
}

func appendDownwardItem(b []byte, it *corev1.DownwardAPIVolumeFile) ([]byte, bool) {
	if it.Mode != nil || it.User != nil {
		return b, false
	}
	b = append(b, `{"path":`...)
	b = jsonstr.Append(b, it.Path)
	if it.FieldRef != nil {
		b = append(b, `,"fieldRef":`...)
		b = appendFieldSelector(b, it.FieldRef)
	}
	if it.ResourceFieldRef != nil {
		b = append(b, `,"resourceFieldRef":`...)
		var ok bool
		if b, ok = appendResourceSelector(b, it.ResourceFieldRef); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

func appendStringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, k)
		b = append(b, ':')
		b = jsonstr.Append(b, m[k])
	}
	return append(b, '}')
}
