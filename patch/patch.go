// Package patch turns what mutate added to a pod into RFC 6902 JSON Patch
// "add" operations. It is not a generic diff: it relies on the mutation
// being additive (every original list is a subsequence of the mutated one,
// matched by name; maps only gain or update keys) and says so with an error
// otherwise. It never replaces a whole object or list that exists in the
// original, so fields unknown to our k8s.io/api version survive.
package patch

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Operation is one JSON Patch operation; Op is always "add".
type Operation struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// Pod returns the add operations that turn orig into mutated. Both must be
// decoded from the same request: a nil list or map in orig means the key is
// absent (or null) in the raw JSON, so the whole value is added; a non-nil
// one exists there, so elements are inserted one by one.
func Pod(orig, mutated *corev1.Pod) ([]Operation, error) {
	return AppendPod(nil, orig, mutated)
}

// AppendPod is Pod appending to ops[:0]: a caller that reuses the slice
// (the webhook pools it) allocates none per review (60 operations, 2.9 KB,
// for a typical pod). The operations point into mutated.
func AppendPod(ops []Operation, orig, mutated *corev1.Pod) ([]Operation, error) {
	if orig == mutated {
		return nil, nil
	}
	ops = slices.Grow(ops[:0], opsBound(orig, mutated))
	var err error
	ops, err = mapAdds(ops, "/metadata/labels", orig.Labels, mutated.Labels)
	if err != nil {
		return nil, err
	}
	ops, err = mapAdds(ops, "/metadata/annotations", orig.Annotations, mutated.Annotations)
	if err != nil {
		return nil, err
	}
	ops, err = listAdds(ops, "/spec/initContainers", orig.Spec.InitContainers, mutated.Spec.InitContainers, containerName, containerAdds)
	if err != nil {
		return nil, err
	}
	ops, err = listAdds(ops, "/spec/containers", orig.Spec.Containers, mutated.Spec.Containers, containerName, containerAdds)
	if err != nil {
		return nil, err
	}
	ops, err = listAdds(ops, "/spec/volumes", orig.Spec.Volumes, mutated.Spec.Volumes, volumeName, volumeAdds)
	if err != nil || len(ops) == 0 {
		return nil, err
	}
	return ops, nil
}

// opsBound estimates the number of operations (one per added env var,
// mount, container or volume; a list added whole is one op) so that ops is
// usually allocated once: a pod gets dozens of env vars. Items added to an
// existing downwardAPI volume are not counted; append grows the slice then.
func opsBound(orig, mutated *corev1.Pod) int {
	n := 2 + len(mutated.Spec.Volumes) - len(orig.Spec.Volumes)
	for _, c := range [][]corev1.Container{mutated.Spec.InitContainers, mutated.Spec.Containers} {
		for i := range c {
			n += 1 + len(c[i].Env) + len(c[i].VolumeMounts)
		}
	}
	for _, c := range [][]corev1.Container{orig.Spec.InitContainers, orig.Spec.Containers} {
		for i := range c {
			n -= 1 + len(c[i].Env) + len(c[i].VolumeMounts)
		}
	}
	return max(n, 0)
}

func containerName(c *corev1.Container) string { return c.Name }
func volumeName(v *corev1.Volume) string       { return v.Name }
func envName(e *corev1.EnvVar) string          { return e.Name }
func mountPath(m *corev1.VolumeMount) string   { return m.MountPath }

// volumeAdds inserts the downwardAPI items a volume gained (podmeta's own
// volume, extended on reinvocation); any other change of a volume's source
// is not additive.
func volumeAdds(ops []Operation, path string, o, m *corev1.Volume) ([]Operation, error) {
	od, md := o.DownwardAPI, m.DownwardAPI
	if od == nil || md == nil {
		if od != md {
			return nil, fmt.Errorf("%s: the volume source changed in the mutated pod", path)
		}
		return ops, nil
	}
	return listAdds(ops, path+"/downwardAPI/items", od.Items, md.Items, itemPath, nil)
}

func itemPath(f *corev1.DownwardAPIVolumeFile) string { return f.Path }

func containerAdds(ops []Operation, path string, o, m *corev1.Container) ([]Operation, error) {
	ops, err := listAdds(ops, path+"/env", o.Env, m.Env, envName, nil)
	if err != nil {
		return nil, err
	}
	return listAdds(ops, path+"/volumeMounts", o.VolumeMounts, m.VolumeMounts, mountPath, nil)
}

// listAdds aligns orig with mutated by key: elements of mutated not matched
// in order are inserted at their final index. Ops apply in order, so after
// the ops for indexes < i the list holds mutated[:i] followed by the
// remaining originals, and "add" at i inserts exactly before them.
func listAdds[T any](ops []Operation, path string, orig, mutated []T, key func(*T) string,
	inner func([]Operation, string, *T, *T) ([]Operation, error)) ([]Operation, error) {
	if orig == nil {
		if len(mutated) > 0 {
			ops = append(ops, Operation{Op: "add", Path: path, Value: mutated})
		}
		return ops, nil
	}
	// The paths of this list's ops are written one after another into one
	// buffer and become substrings of one string: a string per op was 3 %
	// of a review's CPU (a pod gets dozens of env vars).
	var (
		arena  [1024]byte
		paths  = arena[:0]
		added  []pathAt
		addBuf [64]pathAt
	)
	added = addBuf[:0]
	j := 0
	for i := range mutated {
		m := &mutated[i]
		if j < len(orig) && key(&orig[j]) == key(m) {
			if inner != nil {
				var err error
				if ops, err = inner(ops, path+"/"+strconv.Itoa(i), &orig[j], m); err != nil {
					return nil, err
				}
			}
			j++
			continue
		}
		start := len(paths)
		paths = strconv.AppendInt(append(append(paths, path...), '/'), int64(i), 10)
		added = append(added, pathAt{op: len(ops), start: start, end: len(paths)})
		ops = append(ops, Operation{Op: "add", Value: m})
	}
	if j != len(orig) {
		return nil, fmt.Errorf("%s: element %q of the original is missing or moved in the mutated pod", path, key(&orig[j]))
	}
	all := string(paths)
	for _, a := range added {
		ops[a.op].Path = all[a.start:a.end]
	}
	return ops, nil
}

// pathAt is where the path of ops[op] is in listAdds' buffer.
type pathAt struct{ op, start, end int }

// mapAdds adds the keys mutated gained or changed, in sorted order for
// deterministic patches. "add" on an existing member replaces its value
// (RFC 6902 4.1), which is how podmeta.io/status is refreshed.
func mapAdds(ops []Operation, path string, orig, mutated map[string]string) ([]Operation, error) {
	for k := range orig {
		if _, ok := mutated[k]; !ok {
			return nil, fmt.Errorf("%s: key %q of the original is missing in the mutated pod", path, k)
		}
	}
	if orig == nil {
		if len(mutated) > 0 {
			ops = append(ops, Operation{Op: "add", Path: path, Value: mutated})
		}
		return ops, nil
	}
	var keys []string
	for k, v := range mutated {
		if ov, ok := orig[k]; !ok || ov != v {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		ops = append(ops, Operation{Op: "add", Path: path + "/" + EscapeKey(k), Value: mutated[k]})
	}
	return ops, nil
}

var keyEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// EscapeKey escapes an object member name for a JSON Pointer (RFC 6901):
// "~" becomes "~0" and "/" becomes "~1".
func EscapeKey(k string) string { return keyEscaper.Replace(k) }
