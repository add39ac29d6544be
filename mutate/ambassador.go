package mutate

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// ambassador decides about the sidecar. The container itself is inserted by
// insertAmbassador at the end, because env and volume hold pointers into the
// container lists.
func (in *injection) ambassador() {
	if !in.s.ambassador {
		return
	}
	p := &in.pod.Spec
	for _, list := range [][]corev1.Container{p.InitContainers, p.Containers} {
		for i := range list {
			if list[i].Name != AmbassadorName {
				continue
			}
			if in.isOurAmbassador(&list[i]) {
				in.ambassadorPresent = true
				// Apps must find the sidecar where it listens, whatever
				// the port is now.
				in.ambassadorPort = listenPort(list[i].Args, in.s.port)
				in.report.Injected = append(in.report.Injected, PartAmbassador)
			} else {
				in.skip(PartAmbassador, "", AmbassadorName, ReasonUserDefined, "")
			}
			return
		}
	}
	if isWindows(p) {
		in.skip(PartAmbassador, "", AmbassadorName, ReasonWindows, "")
		return
	}
	if p.HostNetwork {
		in.skip(PartAmbassador, "", AmbassadorName, ReasonHostNetwork, "")
		return
	}
	if p.AutomountServiceAccountToken != nil && !*p.AutomountServiceAccountToken && !in.s.ambassadorExplicit {
		in.skip(PartAmbassador, "", AmbassadorName, ReasonTokenAutomountOff,
			fmt.Sprintf("set %s: \"true\" to inject it anyway", AnnotationAmbassador))
		return
	}
	if !in.s.native && p.RestartPolicy != "" && p.RestartPolicy != corev1.RestartPolicyAlways {
		in.skip(PartAmbassador, "", AmbassadorName, ReasonRestartPolicy,
			fmt.Sprintf("restartPolicy %s needs a native sidecar (%s: \"true\")", p.RestartPolicy, AnnotationNativeSidecar))
		return
	}
	for _, list := range [][]corev1.Container{p.InitContainers, p.Containers} {
		for i := range list {
			for _, cp := range list[i].Ports {
				if int(cp.ContainerPort) == in.s.port || int(cp.ContainerPort) == in.s.port+1 {
					in.skip(PartAmbassador, list[i].Name, AmbassadorName, ReasonPortInUse,
						fmt.Sprintf("container port %d; choose another with %s", cp.ContainerPort, AnnotationAmbassadorPort))
					return
				}
			}
		}
	}
	haveVolume := false
	for i := range p.Volumes {
		if p.Volumes[i].Name != APIAccessVolumeName {
			continue
		}
		if !isOurAPIAccess(&p.Volumes[i]) {
			in.skip(PartAmbassador, "", APIAccessVolumeName, ReasonUserDefined, "the ambassador's token volume name is taken")
			return
		}
		haveVolume = true
	}
	in.needAPIAccess = !haveVolume
	in.ambassadorPresent = true
	in.ambassadorPort = in.s.port
	in.report.Injected = append(in.report.Injected, PartAmbassador)
	c := in.ambassadorContainer()
	in.pendingAmbassador = &c
	in.changed = true
}

// insertAmbassador puts the sidecar first among the init containers (so it
// serves the other init containers too) or, for clusters without native
// sidecars, last among the containers.
func (in *injection) insertAmbassador() {
	c := in.pendingAmbassador
	if c == nil {
		return
	}
	if in.needAPIAccess {
		in.appendVolume(in.apiAccessVolume())
	}
	p := &in.pod.Spec
	if in.s.native {
		ics := make([]corev1.Container, 0, len(p.InitContainers)+1)
		ics = append(ics, *c)
		p.InitContainers = append(ics, p.InitContainers...)
		return
	}
	p.Containers = append(p.Containers, *c)
}

func (in *injection) ambassadorArgs() []string {
	args := []string{
		listenFlag + "127.0.0.1:" + strconv.Itoa(in.s.port),
		"--health-listen=:" + strconv.Itoa(in.s.port+1),
		"--policy=" + in.s.policy,
	}
	if in.s.allow != "" {
		args = append(args, "--allow="+in.s.allow)
	}
	if d := in.shutdownDelay(); d > 0 {
		args = append(args, shutdownDelayFlag+strconv.FormatInt(d, 10)+"s")
	}
	return args
}

// maxShutdownDelaySeconds bounds ambassador.shutdownDelaySeconds: longer
// would hold every pod in Terminating for minutes.
const maxShutdownDelaySeconds = 300

// ambassadorDrainSeconds is what the ambassador needs after its shutdown
// delay: its drain (ambassador.Config.ShutdownTimeout's default, 5 s) plus
// a second of slack.
const ambassadorDrainSeconds = 6

// shutdownDelay is the --shutdown-delay of an ambassador placed as a
// regular container: the configured delay (or the pod's annotation), cut
// so that delay and drain end before the kubelet's SIGKILL at the pod's
// grace period (30 s when the manifest sets none; the API server defaults
// it before admission).
func (in *injection) shutdownDelay() int64 {
	if in.s.native {
		return 0
	}
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if g := in.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	return max(0, min(in.s.shutdownDelay, grace-ambassadorDrainSeconds))
}

// isOurAmbassador tells the sidecar of an earlier pass from a user's
// container of the same name by its token mount, not by its image or flags:
// those follow podmeta's configuration and the pod's annotations, which may
// differ between passes (a rolling upgrade of the webhook, a webhook after
// podmeta changing the grace period) and between `podmeta-webhook inject`
// and the cluster. An earlier sidecar stays as it is (podmeta only adds, it
// never rewrites a container).
func (in *injection) isOurAmbassador(c *corev1.Container) bool {
	if c.Name != AmbassadorName {
		return false
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == APIAccessVolumeName && m.MountPath == APIAccessMountPath {
			mounted = true
		}
	}
	if !mounted {
		return false
	}
	// ... and the volume is a projected token, not some user's Secret of
	// that name.
	for i := range in.pod.Spec.Volumes {
		if in.pod.Spec.Volumes[i].Name == APIAccessVolumeName {
			return isOurAPIAccess(&in.pod.Spec.Volumes[i])
		}
	}
	return false
}

const (
	shutdownDelayFlag = "--shutdown-delay="
	listenFlag        = "--listen="
)

// listenPort is the port of an ambassador's --listen flag, or def.
func listenPort(args []string, def int) int {
	for _, a := range args {
		if addr, ok := strings.CutPrefix(a, listenFlag); ok {
			if _, p, err := net.SplitHostPort(addr); err == nil {
				if n, err := strconv.Atoi(p); err == nil && n > 0 && n < 65536 {
					return n
				}
			}
		}
	}
	return def
}

// osLabels are the node labels a pod's operating system is matched on;
// the kubelet still sets the beta one, and older manifests use it.
var osLabels = []string{"kubernetes.io/os", "beta.kubernetes.io/os"}

// isWindows tells a pod that can only run on Windows nodes: by spec.os, or,
// for manifests written before spec.os existed, by a node selector or a
// required node affinity that pins the os label to windows. The ambassador
// image is a Linux binary; as a native sidecar it would keep the app from
// ever starting there.
func isWindows(p *corev1.PodSpec) bool {
	if p.OS != nil {
		return p.OS.Name == corev1.Windows
	}
	for _, l := range osLabels {
		if p.NodeSelector[l] == string(corev1.Windows) {
			return true
		}
	}
	if p.Affinity == nil || p.Affinity.NodeAffinity == nil || p.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return false
	}
	terms := p.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	// Terms are ORed: every one of them must rule out other systems.
	for _, t := range terms {
		if !termPinsWindows(t) {
			return false
		}
	}
	return len(terms) > 0
}

func termPinsWindows(t corev1.NodeSelectorTerm) bool {
	for _, e := range t.MatchExpressions {
		if slices.Contains(osLabels, e.Key) && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) > 0 &&
			!slices.ContainsFunc(e.Values, func(v string) bool { return v != string(corev1.Windows) }) {
			return true
		}
	}
	return false
}

// ambassadorResources are the sidecar's requests and limits, chosen so that
// adding it neither makes the API server reject the pod nor changes the
// pod's QoS class:
//   - with pod-level resources (spec.resources) the sidecar asks for none
//     and shares the pod's budget: the API server rejects a pod whose
//     containers request more than the pod, and the pod's QoS class
//     follows the pod-level values;
//   - in a Guaranteed pod its requests are raised to its limits, or it
//     would make the pod Burstable (and lose, for example, the static CPU
//     manager's exclusive CPUs);
//   - otherwise they are as configured.
func (in *injection) ambassadorResources() corev1.ResourceRequirements {
	p := &in.pod.Spec
	if hasPodLevelResources(p) {
		return corev1.ResourceRequirements{}
	}
	cfg := &in.cfg.Ambassador.Resources
	if !isGuaranteed(p) {
		return *cfg.DeepCopy()
	}
	g := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, name := range qosResources {
		q, ok := cfg.Limits[name]
		if !ok {
			// No limit configured: turning the request into one could
			// starve the proxy; the pod becomes Burstable instead.
			return *cfg.DeepCopy()
		}
		g.Requests[name], g.Limits[name] = q.DeepCopy(), q.DeepCopy()
	}
	return g
}

// hasPodLevelResources: spec.resources sets CPU or memory, the resources
// pod-level values apply to (and the QoS class is computed from).
func hasPodLevelResources(p *corev1.PodSpec) bool {
	if p.Resources == nil {
		return false
	}
	for _, name := range qosResources {
		_, req := p.Resources.Requests[name]
		_, lim := p.Resources.Limits[name]
		if req || lim {
			return true
		}
	}
	return false
}

// qosResources are the resources a QoS class is computed from.
var qosResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}

// isGuaranteed computes the Guaranteed QoS class the way the API server
// does for a pod without pod-level resources: every container, init
// containers included, has CPU and memory requests equal to non-zero limits.
func isGuaranteed(p *corev1.PodSpec) bool {
	for _, list := range [][]corev1.Container{p.InitContainers, p.Containers} {
		for i := range list {
			r := &list[i].Resources
			for _, name := range qosResources {
				lim := r.Limits[name]
				req, ok := r.Requests[name]
				if !ok {
					req = lim // the API server's defaulting, for manifests given to inject
				}
				if lim.IsZero() || !req.Equal(lim) {
					return false
				}
			}
		}
	}
	return true
}

func isOurAPIAccess(v *corev1.Volume) bool {
	if v.Projected == nil {
		return false
	}
	for _, s := range v.Projected.Sources {
		if s.ServiceAccountToken != nil {
			return true
		}
	}
	return false
}

func (in *injection) ambassadorContainer() corev1.Container {
	health := intstr.FromInt(in.s.port + 1)
	c := corev1.Container{
		Name:            AmbassadorName,
		Image:           in.cfg.Ambassador.Image,
		ImagePullPolicy: in.cfg.Ambassador.ImagePullPolicy,
		Args:            in.ambassadorArgs(),
		Resources:       in.ambassadorResources(),
		// The app containers start once this succeeds, so their first
		// request already finds the proxy listening.
		StartupProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: health}},
			PeriodSeconds:    1,
			FailureThreshold: 30,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: health}},
			PeriodSeconds: 10,
		},
		VolumeMounts: []corev1.VolumeMount{{Name: APIAccessVolumeName, MountPath: APIAccessMountPath, ReadOnly: true}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](65532),
			RunAsGroup:               ptr.To[int64](65532),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if in.s.native {
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	}
	return c
}

// apiAccessVolume mirrors the kube-api-access volume the ServiceAccount
// admission plugin gives app containers: a rotating bound token, the
// cluster CA and the namespace.
func (in *injection) apiAccessVolume() corev1.Volume {
	return corev1.Volume{Name: APIAccessVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr.To[int32](0o444),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To(in.cfg.Ambassador.TokenExpirationSeconds)}},
			{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
			}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}},
			}}},
		},
	}}}
}
