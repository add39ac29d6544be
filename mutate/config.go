package mutate

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/policy"
)

// Names of the user-facing contract (docs/contract.md).
const (
	// LabelInject is the only opt-in: a pod is touched only when it is "true".
	LabelInject = "podmeta.io/inject"
	// AnnotationPrefix is the prefix of every podmeta annotation; unknown keys
	// under it are errors (typo protection).
	AnnotationPrefix = "podmeta.io/"

	AnnotationEnv              = "podmeta.io/env"
	AnnotationVolume           = "podmeta.io/volume"
	AnnotationAmbassador       = "podmeta.io/ambassador"
	AnnotationContainers       = "podmeta.io/containers"
	AnnotationEnvPrefix        = "podmeta.io/env-prefix"
	AnnotationMountPath        = "podmeta.io/mount-path"
	AnnotationAmbassadorPort   = "podmeta.io/ambassador-port"
	AnnotationAmbassadorPolicy = "podmeta.io/ambassador-policy"
	AnnotationAmbassadorAllow  = "podmeta.io/ambassador-allow"
	AnnotationNativeSidecar    = "podmeta.io/native-sidecar"
	// AnnotationAmbassadorShutdownDelay overrides
	// ambassador.shutdownDelaySeconds for the pod (whole seconds).
	AnnotationAmbassadorShutdownDelay = "podmeta.io/ambassador-shutdown-delay"
	// AnnotationStatus is written by podmeta: the JSON Report.
	AnnotationStatus = "podmeta.io/status"

	// AmbassadorName is the name of the injected sidecar container.
	AmbassadorName = "podmeta-ambassador"
	// APIAccessVolumeName is the ambassador's own projected token volume:
	// webhooks run after the ServiceAccount admission plugin, so an injected
	// container does not get the pod's token mount.
	APIAccessVolumeName = "podmeta-api-access"
	// APIAccessMountPath is where the ambassador finds its token, CA and namespace.
	APIAccessMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// Keys of Config.EnvNames: one per Downward API field podmeta injects, plus
// the ambassador URL.
const (
	EnvPodName        = "podName"
	EnvPodNamespace   = "podNamespace"
	EnvPodUID         = "podUID"
	EnvPodIP          = "podIP"
	EnvPodIPs         = "podIPs"
	EnvHostIP         = "hostIP"
	EnvNodeName       = "nodeName"
	EnvServiceAccount = "serviceAccount"
	EnvCPURequest     = "cpuRequest"
	EnvCPULimit       = "cpuLimit"
	EnvMemoryRequest  = "memoryRequest"
	EnvMemoryLimit    = "memoryLimit"
	EnvAmbassadorURL  = "ambassadorURL"
)

// envKeys is the injection order of the env vars (stable, so patches and
// golden files are deterministic).
var envKeys = []string{
	EnvPodName, EnvPodNamespace, EnvPodUID, EnvPodIP, EnvPodIPs, EnvHostIP,
	EnvNodeName, EnvServiceAccount, EnvCPURequest, EnvCPULimit,
	EnvMemoryRequest, EnvMemoryLimit, EnvAmbassadorURL,
}

// Ambassador policies (package policy enforces them in the ambassador).
const (
	PolicyReadOnly  = string(policy.ReadOnly)
	PolicyFull      = string(policy.Full)
	PolicyAllowList = string(policy.AllowList)
)

var policies = []string{PolicyReadOnly, PolicyFull, PolicyAllowList}

// Config holds the cluster-wide defaults of the injection. The Helm chart
// renders it into a YAML file that the webhook reads (ParseConfig); per-pod
// annotations override some of it. Start from DefaultConfig: a zero Config
// is not valid.
type Config struct {
	// Env injects the Downward API env vars (annotation podmeta.io/env).
	Env bool `json:"env"`
	// Volume injects the downwardAPI volume and its mounts (podmeta.io/volume).
	Volume bool `json:"volume"`
	// EnvNames maps each injected field (keys: podName, podNamespace,
	// podUID, podIP, podIPs, hostIP, nodeName, serviceAccount, cpuRequest,
	// cpuLimit, memoryRequest, memoryLimit, ambassadorURL) to its env var
	// name. An empty name turns that variable off. Keys missing from a config
	// file keep their defaults (ParseConfig merges into DefaultConfig).
	EnvNames map[string]string `json:"envNames"`
	// EnvPrefix is prepended to every injected env var name
	// (podmeta.io/env-prefix).
	EnvPrefix string `json:"envPrefix"`
	// MountPath is where the downwardAPI volume is mounted read-only
	// (podmeta.io/mount-path).
	MountPath string `json:"mountPath"`
	// VolumeName is the name of the downwardAPI volume.
	VolumeName string `json:"volumeName"`
	// Ambassador configures the sidecar.
	Ambassador AmbassadorConfig `json:"ambassador"`
}

// AmbassadorConfig configures the podmeta-ambassador sidecar.
type AmbassadorConfig struct {
	// Enabled injects the ambassador (podmeta.io/ambassador).
	Enabled bool `json:"enabled"`
	// Image of the ambassador; the chart sets it to the released image.
	Image string `json:"image"`
	// ImagePullPolicy of the ambassador container.
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy"`
	// Port on 127.0.0.1 (podmeta.io/ambassador-port). Port+1 serves
	// /healthz, /readyz and /metrics.
	Port int `json:"port"`
	// Policy is read-only, full or allow-list (podmeta.io/ambassador-policy).
	Policy string `json:"policy"`
	// Allow holds allow rules added in every mode (podmeta.io/ambassador-allow).
	Allow string `json:"allow"`
	// NativeSidecar injects the ambassador as the first init container with
	// restartPolicy Always (Kubernetes >= 1.29); false appends it to the
	// regular containers for older clusters (podmeta.io/native-sidecar).
	NativeSidecar bool `json:"nativeSidecar"`
	// Resources of the ambassador container.
	Resources corev1.ResourceRequirements `json:"resources"`
	// TokenExpirationSeconds of the projected service account token; the
	// kubelet rotates it at 80% of its life and the ambassador rereads it.
	TokenExpirationSeconds int64 `json:"tokenExpirationSeconds"`
	// ShutdownDelaySeconds: placed as a regular container, the ambassador
	// gets SIGTERM together with the app and keeps serving this long, so
	// API calls the app makes while it shuts down still work (passed as
	// --shutdown-delay, capped to fit the pod's grace period). A native
	// sidecar is stopped after the app exits and gets none.
	ShutdownDelaySeconds int64 `json:"shutdownDelaySeconds"`
}

// DefaultConfig returns the documented defaults: every feature on, the
// contract's env var names without prefix, the volume "podmeta" at
// /etc/podinfo, and the ambassador on 127.0.0.1:8001 as a native sidecar with
// the read-only policy.
func DefaultConfig() Config {
	return Config{
		Env:    true,
		Volume: true,
		EnvNames: map[string]string{
			EnvPodName:        "POD_NAME",
			EnvPodNamespace:   "POD_NAMESPACE",
			EnvPodUID:         "POD_UID",
			EnvPodIP:          "POD_IP",
			EnvPodIPs:         "POD_IPS",
			EnvHostIP:         "HOST_IP",
			EnvNodeName:       "NODE_NAME",
			EnvServiceAccount: "POD_SERVICE_ACCOUNT",
			EnvCPURequest:     "CPU_REQUEST",
			EnvCPULimit:       "CPU_LIMIT",
			EnvMemoryRequest:  "MEMORY_REQUEST",
			EnvMemoryLimit:    "MEMORY_LIMIT",
			EnvAmbassadorURL:  "PODMETA_AMBASSADOR_URL",
		},
		MountPath:  "/etc/podinfo",
		VolumeName: "podmeta",
		Ambassador: AmbassadorConfig{
			Enabled:         true,
			Image:           "ghcr.io/podmeta/podmeta-ambassador:latest",
			ImagePullPolicy: corev1.PullIfNotPresent,
			Port:            8001,
			Policy:          PolicyReadOnly,
			NativeSidecar:   true,
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("10m"),
					corev1.ResourceMemory: resource.MustParse("32Mi"),
				},
				Limits: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("200m"),
					corev1.ResourceMemory: resource.MustParse("64Mi"),
				},
			},
			TokenExpirationSeconds: 3607,
			ShutdownDelaySeconds:   5,
		},
	}
}

// ParseConfig reads a YAML or JSON config on top of DefaultConfig: fields the
// document leaves out keep their defaults, unknown fields are errors (a typo
// in a chart value must not silently fall back to a default).
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return Config{}, fmt.Errorf("parse config: %w", err)
	}
	if cfg.EnvNames == nil {
		// "envNames:" with nothing under it is null in YAML: keep the
		// defaults rather than silently injecting no variables.
		cfg.EnvNames = DefaultConfig().EnvNames
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// cIdentifier is what a shell can expand: env var names and prefixes that
// apps read with $NAME must look like this.
var cIdentifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validPrefix: an empty prefix or the start of a C identifier.
func validPrefix(p string) bool { return p == "" || cIdentifier.MatchString(p) }

// Validate reports every problem of the config, each naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config %s: %s", field, fmt.Sprintf(format, args...)))
	}
	seen := map[string]string{}
	for k, name := range c.EnvNames {
		if !slices.Contains(envKeys, k) {
			bad("envNames", "unknown key %q (known: %s)", k, strings.Join(envKeys, ", "))
			continue
		}
		if name == "" {
			continue
		}
		if !cIdentifier.MatchString(name) {
			bad("envNames."+k, "%q is not a valid env var name (letters, digits, _; not starting with a digit)", name)
		}
		if other, dup := seen[name]; dup {
			bad("envNames."+k, "name %q is also used by %s", name, other)
		}
		seen[name] = k
	}
	if !validPrefix(c.EnvPrefix) {
		bad("envPrefix", "%q may contain only letters, digits and _, not starting with a digit", c.EnvPrefix)
	}
	if err := validateMountPath(c.MountPath); err != nil {
		bad("mountPath", "%q: %v", c.MountPath, err)
	}
	if msgs := validation.IsDNS1123Label(c.VolumeName); len(msgs) > 0 {
		bad("volumeName", "%q: %s", c.VolumeName, strings.Join(msgs, "; "))
	} else if c.VolumeName == APIAccessVolumeName {
		bad("volumeName", "%q is the ambassador's token volume", c.VolumeName)
	}
	a := c.Ambassador
	if a.Image == "" {
		bad("ambassador.image", "must not be empty")
	}
	switch a.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		bad("ambassador.imagePullPolicy", "%q is not one of Always, IfNotPresent, Never", a.ImagePullPolicy)
	}
	if err := validatePort(a.Port); err != nil {
		bad("ambassador.port", "%d: %v", a.Port, err)
	}
	if !slices.Contains(policies, a.Policy) {
		bad("ambassador.policy", "%q is not one of %s", a.Policy, strings.Join(policies, ", "))
	}
	if _, err := validateAllow(a.Policy, a.Allow); err != nil {
		bad("ambassador.allow", "%v", err)
	}
	for name, req := range a.Resources.Requests {
		if lim, ok := a.Resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			bad("ambassador.resources", "%s request %s exceeds its limit %s", name, req.String(), lim.String())
		}
	}
	if a.TokenExpirationSeconds < 600 {
		bad("ambassador.tokenExpirationSeconds", "%d is below the API server's minimum of 600", a.TokenExpirationSeconds)
	}
	if a.ShutdownDelaySeconds < 0 || a.ShutdownDelaySeconds > maxShutdownDelaySeconds {
		bad("ambassador.shutdownDelaySeconds", "%d is outside 0..%d", a.ShutdownDelaySeconds, maxShutdownDelaySeconds)
	}
	return errors.Join(errs...)
}

func validateMountPath(p string) error {
	switch {
	case !path.IsAbs(p):
		return errors.New("want an absolute path")
	case path.Clean(p) != p:
		return fmt.Errorf("want a clean absolute path (%q)", path.Clean(p))
	case p == "/":
		return errors.New("mounting over / would hide the container's root filesystem")
	case strings.ContainsAny(p, ":"):
		// Windows nodes and the kubelet reject ':' in mount paths.
		return errors.New("must not contain ':'")
	}
	return nil
}

// validatePort keeps room for the health port, which is port+1.
func validatePort(p int) error {
	if p < 1 || p > 65534 {
		return errors.New("want a port number 1-65534 (port+1 is the health port)")
	}
	return nil
}

// validateAllow parses allow rules with the parser the ambassador enforces
// them with, and returns them in canonical form (one line, "; "-separated)
// for the ambassador's --allow flag.
func validateAllow(mode, allow string) (string, error) {
	rules, err := policy.ParseRules(allow)
	if err != nil {
		return "", err
	}
	if mode == PolicyAllowList && len(rules) == 0 {
		return "", fmt.Errorf("policy %s without allow rules would refuse every request", PolicyAllowList)
	}
	return rules.String(), nil
}
