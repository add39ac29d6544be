package mutate

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// AnnotationError is a pod annotation podmeta cannot accept. Its message
// names the annotation and what is allowed; the webhook denies the pod with it.
type AnnotationError struct {
	Key    string
	Value  string
	Reason string
	// UnknownKey is set when the key itself is wrong (not a podmeta annotation).
	UnknownKey bool
}

func (e *AnnotationError) Error() string {
	if e.UnknownKey {
		return fmt.Sprintf("annotation %s: %s", e.Key, e.Reason)
	}
	return fmt.Sprintf("annotation %s: invalid value %q: %s", e.Key, e.Value, e.Reason)
}

// AnnotationErrors are all the problems of one pod's annotations, sorted by
// key, so that a user fixes them in one go.
type AnnotationErrors []*AnnotationError

func (es AnnotationErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	// One line: it ends up in kubectl's "admission webhook denied" message.
	return strings.Join(msgs, "; ")
}

// Unwrap lets errors.As find each *AnnotationError.
func (es AnnotationErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// settings is Config with the pod's annotations applied.
type settings struct {
	env, volume, ambassador bool
	// ambassadorExplicit is true when the pod asked for the ambassador by
	// annotation rather than getting the cluster default.
	ambassadorExplicit bool
	containers         map[string]bool // nil: all
	containerList      []string
	prefix             string
	mountPath          string
	port               int
	policy             string
	allow              string
	native             bool
	shutdownDelay      int64 // seconds, before the cut to the grace period
}

var knownAnnotations = map[string]bool{
	AnnotationEnv: true, AnnotationVolume: true, AnnotationAmbassador: true,
	AnnotationContainers: true, AnnotationEnvPrefix: true, AnnotationMountPath: true,
	AnnotationAmbassadorPort: true, AnnotationAmbassadorPolicy: true,
	AnnotationAmbassadorAllow: true, AnnotationNativeSidecar: true, AnnotationStatus: true,
	AnnotationAmbassadorShutdownDelay: true,
}

// parseAnnotations applies the pod's podmeta.io/* annotations to cfg. It
// returns every problem at once as AnnotationErrors.
func parseAnnotations(ann map[string]string, cfg Config) (settings, error) {
	s := settings{
		env: cfg.Env, volume: cfg.Volume, ambassador: cfg.Ambassador.Enabled,
		prefix: cfg.EnvPrefix, mountPath: cfg.MountPath, port: cfg.Ambassador.Port,
		policy: cfg.Ambassador.Policy, allow: cfg.Ambassador.Allow, native: cfg.Ambassador.NativeSidecar,
		shutdownDelay: cfg.Ambassador.ShutdownDelaySeconds,
	}
	var errs AnnotationErrors
	bad := func(k, v, format string, args ...any) {
		errs = append(errs, &AnnotationError{Key: k, Value: v, Reason: fmt.Sprintf(format, args...)})
	}
	boolean := func(k, v string, dst *bool) {
		switch v {
		case "true":
			*dst = true
		case "false":
			*dst = false
		default:
			bad(k, v, `allowed values are "true" and "false"`)
		}
	}
	for k, v := range ann {
		if !strings.HasPrefix(k, AnnotationPrefix) {
			continue
		}
		switch k {
		case AnnotationEnv:
			boolean(k, v, &s.env)
		case AnnotationVolume:
			boolean(k, v, &s.volume)
		case AnnotationAmbassador:
			boolean(k, v, &s.ambassador)
			s.ambassadorExplicit = s.ambassador
		case AnnotationNativeSidecar:
			boolean(k, v, &s.native)
		case AnnotationContainers:
			list, err := parseContainerList(v)
			if err != nil {
				bad(k, v, "%v", err)
				break
			}
			s.containerList = list
			s.containers = make(map[string]bool, len(list))
			for _, n := range list {
				s.containers[n] = true
			}
		case AnnotationEnvPrefix:
			if !validPrefix(v) {
				bad(k, v, "allowed are letters, digits and _, not starting with a digit")
			}
			s.prefix = v
		case AnnotationMountPath:
			if err := validateMountPath(v); err != nil {
				bad(k, v, "%v", err)
			}
			s.mountPath = v
		case AnnotationAmbassadorPort:
			p, err := strconv.Atoi(v)
			if err != nil {
				bad(k, v, "want a port number 1-65534 (port+1 is the health port)")
				break
			}
			if err := validatePort(p); err != nil {
				bad(k, v, "%v", err)
				break
			}
			s.port = p
		case AnnotationAmbassadorPolicy:
			switch v {
			case PolicyReadOnly, PolicyFull, PolicyAllowList:
				s.policy = v
			default:
				bad(k, v, "allowed values are %s", strings.Join(policies, ", "))
			}
		case AnnotationAmbassadorAllow:
			s.allow = v
		case AnnotationAmbassadorShutdownDelay:
			d, err := strconv.ParseInt(v, 10, 64)
			if err != nil || d < 0 || d > maxShutdownDelaySeconds {
				bad(k, v, "want whole seconds 0-%d", maxShutdownDelaySeconds)
				break
			}
			s.shutdownDelay = d
		case AnnotationStatus:
			// Written by podmeta; rewritten on every pass.
		default:
			errs = append(errs, &AnnotationError{Key: k, Value: v, UnknownKey: true,
				Reason: fmt.Sprintf("unknown podmeta annotation (known: %s)", strings.Join(sortedKnown(), ", "))})
		}
	}
	// The allow rules are checked against the effective policy so that a
	// pod's allow-list policy can take its rules from the cluster default.
	if allow, err := validateAllow(s.policy, s.allow); err != nil {
		key := AnnotationAmbassadorAllow
		if _, set := ann[key]; !set {
			key = AnnotationAmbassadorPolicy
		}
		bad(key, ann[key], "%v", err)
	} else {
		s.allow = allow
	}
	if len(errs) == 0 {
		return s, nil
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Key < errs[j].Key })
	return settings{}, errs
}

func sortedKnown() []string {
	keys := make([]string, 0, len(knownAnnotations))
	for k := range knownAnnotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseContainerList parses "a, b,c": DNS-1123 labels, no empties, no
// duplicates. Whether the containers exist is checked against the pod.
func parseContainerList(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, errors.New("want a comma-separated list of container names (remove the annotation to select all containers)")
	}
	parts := strings.Split(v, ",")
	out := make([]string, 0, len(parts))
	seen := map[string]bool{}
	for _, p := range parts {
		n := strings.TrimSpace(p)
		if n == "" {
			return nil, errors.New("empty container name in the comma-separated list")
		}
		if msgs := validation.IsDNS1123Label(n); len(msgs) > 0 {
			return nil, fmt.Errorf("%q is not a container name: %s", n, strings.Join(msgs, "; "))
		}
		if seen[n] {
			return nil, fmt.Errorf("container %q listed twice", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	return out, nil
}
