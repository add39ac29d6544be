package mutate

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Pod returns pod with podmeta's injections and a Report of what was
// injected and skipped. It never modifies pod; to stay cheap on the admission
// hot path the result shares the parts it did not change (user env vars,
// resources, ...) with pod, and its containers share the sources of the
// injected env vars, so DeepCopy the result before changing it.
//
// A pod without the label podmeta.io/inject="true" is returned as is (same
// pointer) with Report.OptedIn false. An invalid podmeta annotation yields
// an error wrapping *AnnotationError values, which name the annotation.
//
// Pod is idempotent: run on its own output it changes nothing, which the
// webhook's reinvocationPolicy IfNeeded relies on.
func Pod(pod *corev1.Pod, cfg Config) (*corev1.Pod, Report, error) {
	if pod.Labels[LabelInject] != "true" {
		return pod, Report{}, nil
	}
	s, err := parseAnnotations(pod.Annotations, cfg)
	if err != nil {
		return nil, Report{}, err
	}
	if len(pod.Spec.Containers) == 0 {
		return nil, Report{}, errors.New("spec.containers: a pod needs at least one container")
	}
	in := &injection{cfg: &cfg, s: &s, orig: pod, report: Report{OptedIn: true}}
	out := *pod
	in.pod = &out
	// Copy-on-write of the lists podmeta may change; the elements are
	// shallow copies, their own env and mount lists are replaced, never
	// appended to in place.
	out.Spec.Containers = cloneContainers(pod.Spec.Containers, 1)
	out.Spec.InitContainers = cloneContainers(pod.Spec.InitContainers, 1)
	if err := in.selectContainers(); err != nil {
		return nil, Report{}, err
	}
	in.ambassador()
	in.volume()
	in.env()
	in.finish()
	return in.pod, in.report, nil
}

// cloneContainers copies the list with room for extra elements; nil stays
// nil so that "absent" survives into the patch.
func cloneContainers(c []corev1.Container, extra int) []corev1.Container {
	if c == nil {
		return nil
	}
	out := make([]corev1.Container, len(c), len(c)+extra)
	copy(out, c)
	return out
}

var partOrder = []string{PartEnv, PartVolume, PartAmbassador}

type injection struct {
	cfg    *Config
	s      *settings
	orig   *corev1.Pod
	pod    *corev1.Pod
	report Report
	// selected are pointers into pod's container lists, in pod order:
	// init containers first.
	selected []*corev1.Container
	// touched[i]: selected[i] carries podmeta env vars or the mount (now
	// or from an earlier pass), so the report lists it on every pass.
	touched []bool
	// ambassadorPresent: the ambassador is in the pod (added now or before),
	// listening on ambassadorPort.
	ambassadorPresent bool
	ambassadorPort    int
	pendingAmbassador *corev1.Container
	needAPIAccess     bool
	changed           bool
}

func (in *injection) skip(what, container, name, reason, detail string) {
	in.report.Skips = append(in.report.Skips, Skip{What: what, Container: container, Name: name, Reason: reason, Detail: detail})
}

// selectContainers picks the user containers that get env vars and the
// mount: all of them, or those named by podmeta.io/containers. Our own
// ambassador never counts as a user container.
func (in *injection) selectContainers() error {
	var missing []string
	found := map[string]bool{}
	pick := func(list []corev1.Container) {
		for i := range list {
			c := &list[i]
			if in.isOurAmbassador(c) {
				continue
			}
			if in.s.containers == nil || in.s.containers[c.Name] {
				in.selected = append(in.selected, c)
				found[c.Name] = true
			}
		}
	}
	pick(in.pod.Spec.InitContainers)
	pick(in.pod.Spec.Containers)
	in.touched = make([]bool, len(in.selected))
	for _, n := range in.s.containerList {
		if !found[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return &AnnotationError{
			Key: AnnotationContainers, Value: in.orig.Annotations[AnnotationContainers],
			Reason: fmt.Sprintf("no container named %s in the pod (it has: %s)", strings.Join(missing, ", "), strings.Join(in.userContainerNames(), ", ")),
		}
	}
	return nil
}

func (in *injection) userContainerNames() []string {
	var names []string
	for _, list := range [][]corev1.Container{in.pod.Spec.InitContainers, in.pod.Spec.Containers} {
		for i := range list {
			if !in.isOurAmbassador(&list[i]) {
				names = append(names, list[i].Name)
			}
		}
	}
	return names
}

func (in *injection) finish() {
	in.insertAmbassador()
	// Parts in a fixed order, whatever order they were decided in.
	slices.SortFunc(in.report.Injected, func(a, b string) int {
		return slices.Index(partOrder, a) - slices.Index(partOrder, b)
	})
	for i, c := range in.selected {
		if in.touched[i] {
			in.report.Containers = append(in.report.Containers, c.Name)
		}
	}
	status := in.report.Status()
	if in.orig.Annotations[AnnotationStatus] != status {
		ann := make(map[string]string, len(in.orig.Annotations)+1)
		maps.Copy(ann, in.orig.Annotations)
		ann[AnnotationStatus] = status
		in.pod.Annotations = ann
		in.changed = true
	}
	in.report.Changed = in.changed
	if !in.changed {
		// Nothing added: hand back the input itself, as promised for the
		// not-opted-in case, so callers can compare pointers.
		in.pod = in.orig
	}
}

// ---- env vars ----

func (in *injection) env() {
	found := false
	want := in.envTemplate()
	if len(want) == 0 {
		return
	}
	// The wanted names are the same in every container: index them once,
	// then make one pass over each (possibly huge) user list.
	idx := make(map[string]int, len(want))
	for i := range want {
		idx[want[i].Name] = i
	}
	const absent = -1
	at := make([]int, len(want))
	for ci, c := range in.selected {
		for i := range at {
			at[i] = absent
		}
		for i := range c.Env {
			if w, ok := idx[c.Env[i].Name]; ok && at[w] == absent {
				at[w] = i
			}
		}
		missing := 0
		for i := range want {
			switch {
			case at[i] == absent:
				missing++
			case envMatches(&c.Env[at[i]], &want[i], c.Name):
				found = true // ours, from an earlier pass
				in.touched[ci] = true
			default:
				in.skip(PartEnv, c.Name, want[i].Name, ReasonUserDefined, "")
			}
		}
		if missing == 0 {
			continue
		}
		found = true
		in.touched[ci] = true
		// Ours go first so that the user's $(POD_NAME) references resolve;
		// the user's own order is kept.
		env := make([]corev1.EnvVar, 0, missing+len(c.Env))
		for i := range want {
			if at[i] == absent {
				env = append(env, want[i])
			}
		}
		c.Env = append(env, c.Env...)
		in.changed = true
	}
	// "env" is the Downward API variables; the ambassador URL alone (env
	// off) belongs to the ambassador part.
	if found && in.s.env {
		in.report.Injected = append(in.report.Injected, PartEnv)
	}
}

// envTemplate lists the env vars podmeta injects, in envKeys order: the
// Downward API ones when env is on, and the ambassador URL whenever the
// ambassador is in the pod (apps need it to find the sidecar even when they
// do not want the other variables). The entries are shared by all
// containers of this pod: the resource ones name no container, so each
// reads the resources of the container it is in.
func (in *injection) envTemplate() []corev1.EnvVar {
	tmpl := make([]corev1.EnvVar, 0, len(envKeys))
	var sels []corev1.ResourceFieldSelector
	var selAt []int // the tmpl index of each of sels
	// The field sources, allocated together: by capacity, no append moves
	// them.
	fields := make([]corev1.ObjectFieldSelector, 0, len(envKeys))
	fieldSrcs := make([]corev1.EnvVarSource, 0, len(envKeys))
	fieldRef := func(path string) *corev1.EnvVarSource {
		fields = append(fields, corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path})
		fieldSrcs = append(fieldSrcs, corev1.EnvVarSource{FieldRef: &fields[len(fields)-1]})
		return &fieldSrcs[len(fieldSrcs)-1]
	}
	for _, k := range envKeys {
		name := in.cfg.EnvNames[k]
		if name == "" || !in.s.env && k != EnvAmbassadorURL {
			continue
		}
		e := corev1.EnvVar{Name: in.s.prefix + name}
		r := ""
		switch k {
		case EnvPodName:
			e.ValueFrom = fieldRef("metadata.name")
		case EnvPodNamespace:
			e.ValueFrom = fieldRef("metadata.namespace")
		case EnvPodUID:
			e.ValueFrom = fieldRef("metadata.uid")
		case EnvPodIP:
			e.ValueFrom = fieldRef("status.podIP")
		case EnvPodIPs:
			e.ValueFrom = fieldRef("status.podIPs")
		case EnvHostIP:
			e.ValueFrom = fieldRef("status.hostIP")
		case EnvNodeName:
			e.ValueFrom = fieldRef("spec.nodeName")
		case EnvServiceAccount:
			e.ValueFrom = fieldRef("spec.serviceAccountName")
		case EnvCPURequest:
			r = "requests.cpu"
		case EnvCPULimit:
			r = "limits.cpu"
		case EnvMemoryRequest:
			r = "requests.memory"
		case EnvMemoryLimit:
			r = "limits.memory"
		case EnvAmbassadorURL:
			if !in.ambassadorPresent {
				continue
			}
			e.Value = "http://127.0.0.1:" + strconv.Itoa(in.ambassadorPort)
		}
		if r != "" {
			// No container name: the kubelet then reads the container's own
			// resources with missing limits set to node allocatable. With
			// a name it looks the container up in a copy of the pod where
			// only regular containers got that default, so an init
			// container without limits would read 0.
			sels = append(sels, resourceSelector("", r))
			selAt = append(selAt, len(tmpl))
		}
		tmpl = append(tmpl, e)
	}
	srcs := make([]corev1.EnvVarSource, len(sels))
	for j, i := range selAt {
		srcs[j].ResourceFieldRef = &sels[j]
		tmpl[i].ValueFrom = &srcs[j]
	}
	return tmpl
}

// CPU in millicores, memory in bytes: integers an app can use directly.
var (
	divisorCPU    = resource.MustParse("1m")
	divisorMemory = resource.MustParse("1")
)

func resourceSelector(container, res string) corev1.ResourceFieldSelector {
	d := divisorMemory
	if strings.HasSuffix(res, ".cpu") {
		d = divisorCPU
	}
	return corev1.ResourceFieldSelector{ContainerName: container, Resource: res, Divisor: d}
}

// envMatches tells podmeta's own env var (from an earlier pass, possibly
// defaulted by the API server since) from a user's one of the same name in
// container c.
func envMatches(have, want *corev1.EnvVar, c string) bool {
	if have.Value != want.Value {
		return false
	}
	h, w := have.ValueFrom, want.ValueFrom
	if h == nil || w == nil {
		return h == nil && w == nil
	}
	if h.ConfigMapKeyRef != nil || h.SecretKeyRef != nil || h.FileKeyRef != nil {
		return false
	}
	switch {
	case w.FieldRef != nil:
		return h.FieldRef != nil && h.FieldRef.FieldPath == w.FieldRef.FieldPath &&
			(h.FieldRef.APIVersion == "" || h.FieldRef.APIVersion == "v1")
	case w.ResourceFieldRef != nil:
		return h.ResourceFieldRef != nil && selectorMatches(h.ResourceFieldRef, w.ResourceFieldRef, c)
	}
	return false
}

// selectorMatches compares resource selectors of container c; an empty
// container name means c itself (earlier podmeta versions named it in env
// vars too, as the volume still must).
func selectorMatches(have, want *corev1.ResourceFieldSelector, c string) bool {
	name := func(s *corev1.ResourceFieldSelector) string {
		if s.ContainerName == "" {
			return c
		}
		return s.ContainerName
	}
	return have.Resource == want.Resource && name(have) == name(want) &&
		have.Divisor.Cmp(want.Divisor) == 0
}

// ---- downwardAPI volume ----

func (in *injection) volume() {
	if !in.s.volume {
		return
	}
	name := in.cfg.VolumeName
	for i := range in.pod.Spec.Volumes {
		v := &in.pod.Spec.Volumes[i]
		if v.Name != name {
			continue
		}
		if !in.isOurVolume(v) {
			in.skip(PartVolume, "", name, ReasonUserDefined, "")
			return
		}
		in.mounts()
		in.extendVolume(i)
		in.report.Injected = append(in.report.Injected, PartVolume)
		return
	}
	if !in.mounts() {
		in.skip(PartVolume, "", name, ReasonNoMount, "")
		return
	}
	in.appendVolume(corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{DownwardAPI: in.downwardAPI()}})
	in.report.Injected = append(in.report.Injected, PartVolume)
}

// extendVolume adds the resource files of containers the volume of an
// earlier pass does not have yet: another mutating webhook may have added a
// container since, and reinvocation gives that container the mount, so it
// must find its own files there too. Existing items are never changed.
func (in *injection) extendVolume(i int) {
	old := in.pod.Spec.Volumes[i].DownwardAPI
	have := make(map[string]bool, len(old.Items))
	for _, it := range old.Items {
		have[it.Path] = true
	}
	var add []corev1.DownwardAPIVolumeFile
	for _, c := range in.selected {
		if in.skipClash(c) {
			continue
		}
		for _, f := range containerFiles {
			if p := c.Name + "/" + f.file; !have[p] {
				sel := resourceSelector(c.Name, f.resource)
				add = append(add, corev1.DownwardAPIVolumeFile{Path: p, ResourceFieldRef: &sel})
			}
		}
	}
	if len(add) == 0 {
		return
	}
	// Copy-on-write down to the items: the input pod shares them.
	d := *old
	d.Items = append(slices.Clip(old.Items), add...)
	vols := slices.Clone(in.pod.Spec.Volumes)
	vols[i].DownwardAPI = &d
	in.pod.Spec.Volumes = vols
	in.changed = true
}

func (in *injection) appendVolume(v corev1.Volume) {
	vols := make([]corev1.Volume, 0, len(in.pod.Spec.Volumes)+2)
	vols = append(vols, in.pod.Spec.Volumes...)
	in.pod.Spec.Volumes = append(vols, v)
	in.changed = true
}

// mounts adds the read-only mount to every selected container and reports
// whether any container has it now.
func (in *injection) mounts() bool {
	found := false
	for ci, c := range in.selected {
		var conflict *corev1.VolumeMount
		for i := range c.VolumeMounts {
			// Cleaned: "/etc/podinfo/" is the same directory, which the API
			// server's own duplicate check does not see.
			if path.Clean(c.VolumeMounts[i].MountPath) == in.s.mountPath {
				conflict = &c.VolumeMounts[i]
				break
			}
		}
		device := ""
		for i := range c.VolumeDevices {
			if path.Clean(c.VolumeDevices[i].DevicePath) == in.s.mountPath {
				device = c.VolumeDevices[i].Name
			}
		}
		switch {
		case device != "":
			// The API server rejects a mount path that is also a device path.
			in.skip("mount", c.Name, in.s.mountPath, ReasonMountPathInUse, "block device of volume "+device)
		case conflict == nil:
			m := make([]corev1.VolumeMount, 0, len(c.VolumeMounts)+1)
			m = append(m, c.VolumeMounts...)
			c.VolumeMounts = append(m, corev1.VolumeMount{Name: in.cfg.VolumeName, MountPath: in.s.mountPath, ReadOnly: true})
			in.changed = true
			found = true
			in.touched[ci] = true
		case in.isOurMount(conflict):
			found = true
			in.touched[ci] = true
		default:
			in.skip("mount", c.Name, in.s.mountPath, ReasonMountPathInUse, "volume "+conflict.Name)
		}
	}
	return found
}

func (in *injection) isOurMount(m *corev1.VolumeMount) bool {
	return m.Name == in.cfg.VolumeName && m.MountPath == in.s.mountPath && m.ReadOnly && m.SubPath == "" && m.SubPathExpr == ""
}

// isOurVolume recognizes the volume of an earlier pass by its pod-level
// files (the per-container ones depend on which containers existed then).
func (in *injection) isOurVolume(v *corev1.Volume) bool {
	d := v.DownwardAPI
	if d == nil {
		return false
	}
	for _, want := range podFiles {
		ok := false
		for _, it := range d.Items {
			if it.Path == want.path && it.FieldRef != nil && it.FieldRef.FieldPath == want.field {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// skipClash reports (and records) a container whose name is one of the
// pod-level files: "<name>/cpu_request" would need a directory where the
// file is, and the kubelet could not set up the volume at all. Checked on
// every pass, so the status stays the same on reinvocation.
func (in *injection) skipClash(c *corev1.Container) bool {
	for _, f := range podFiles {
		if c.Name == f.path {
			in.skip(PartVolume, c.Name, c.Name+"/", ReasonFileNameClash, "its resource files are left out of the volume; the env vars still carry them")
			return true
		}
	}
	return false
}

var podFiles = []struct{ path, field string }{
	{"labels", "metadata.labels"},
	{"annotations", "metadata.annotations"},
	{"name", "metadata.name"},
	{"namespace", "metadata.namespace"},
	{"uid", "metadata.uid"},
}

// containerFiles are the per-container resource files, <container>/<file>.
var containerFiles = []struct{ file, resource string }{
	{"cpu_request", "requests.cpu"},
	{"cpu_limit", "limits.cpu"},
	{"memory_request", "requests.memory"},
	{"memory_limit", "limits.memory"},
}

func (in *injection) downwardAPI() *corev1.DownwardAPIVolumeSource {
	items := make([]corev1.DownwardAPIVolumeFile, 0, len(podFiles)+len(containerFiles)*len(in.selected))
	fields := make([]corev1.ObjectFieldSelector, len(podFiles))
	for i, f := range podFiles {
		fields[i] = corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: f.field}
		items = append(items, corev1.DownwardAPIVolumeFile{Path: f.path, FieldRef: &fields[i]})
	}
	sels := make([]corev1.ResourceFieldSelector, 0, len(containerFiles)*len(in.selected))
	var buf [256]byte
	for _, c := range in.selected {
		if in.skipClash(c) {
			continue
		}
		// A container's file paths are substrings of one string.
		paths := buf[:0]
		for _, f := range containerFiles {
			paths = append(append(append(paths, c.Name...), '/'), f.file...)
		}
		all := string(paths)
		for _, f := range containerFiles {
			n := len(c.Name) + 1 + len(f.file)
			sels = append(sels, resourceSelector(c.Name, f.resource))
			items = append(items, corev1.DownwardAPIVolumeFile{Path: all[:n], ResourceFieldRef: &sels[len(sels)-1]})
			all = all[n:]
		}
	}
	return &corev1.DownwardAPIVolumeSource{Items: items}
}
