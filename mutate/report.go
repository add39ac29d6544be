package mutate

import "github.com/podmeta/podmeta/internal/jsonstr"

// Parts of the injection, as listed in Report.Injected.
const (
	PartEnv        = "env"
	PartVolume     = "volume"
	PartAmbassador = "ambassador"
)

// Reasons of a Skip. They are a closed set (metrics use them as label
// values); Skip's other fields carry the specifics.
const (
	// ReasonUserDefined: the user's env var, volume or container of that
	// name wins.
	ReasonUserDefined = "user-defined"
	// ReasonMountPathInUse: the container already mounts something at the
	// mount path.
	ReasonMountPathInUse = "mount path in use"
	// ReasonNoMount: the volume would be mounted in no container.
	ReasonNoMount = "no container mounts it"
	// ReasonHostNetwork: on the node's network 127.0.0.1 is shared by every
	// hostNetwork pod, so the ambassador would expose this pod's token to them.
	ReasonHostNetwork = "host network"
	// ReasonWindows: the ambassador is a Linux container, and its
	// securityContext (runAsUser, seccomp) is invalid in a Windows pod.
	ReasonWindows = "windows pod"
	// ReasonPortInUse: a container declares the ambassador's port or health port.
	ReasonPortInUse = "port in use"
	// ReasonTokenAutomountOff: the pod turned off the service account token;
	// the ambassador would bring a token back unless asked for explicitly.
	ReasonTokenAutomountOff = "service account token automount disabled"
	// ReasonRestartPolicy: a regular (non-native) sidecar never exits, so a
	// pod that should run to completion would never complete.
	ReasonRestartPolicy = "restartPolicy is not Always"
	// ReasonFileNameClash: a container named like one of the volume's
	// pod-level files (labels, annotations, name, namespace, uid) cannot
	// have a directory of that name for its resource files.
	ReasonFileNameClash = "container name is a pod file name"
)

// Report says what Pod did to one pod. Its JSON form is the
// podmeta.io/status annotation.
type Report struct {
	// OptedIn is false when the pod lacks the label podmeta.io/inject="true":
	// the pod was returned untouched and the rest of the Report is empty.
	OptedIn bool `json:"-"`
	// Changed is true when the returned pod differs from the input.
	Changed bool `json:"-"`
	// Injected lists the parts (env, volume, ambassador) present in the
	// mutated pod, whether added by this pass or by an earlier one.
	Injected []string `json:"injected"`
	// Containers lists the containers (init ones included) that got env vars
	// or the mount.
	Containers []string `json:"containers,omitempty"`
	// Skips lists everything podmeta left out and why.
	Skips []Skip `json:"skips,omitempty"`
}

// Skip is one thing podmeta did not inject.
type Skip struct {
	// What is env, volume, mount or ambassador.
	What string `json:"what"`
	// Container is the container concerned, if any.
	Container string `json:"container,omitempty"`
	// Name is the env var, volume or container name concerned.
	Name string `json:"name,omitempty"`
	// Reason is one of the Reason constants.
	Reason string `json:"reason"`
	// Detail adds specifics, e.g. which container declares a port.
	Detail string `json:"detail,omitempty"`
}

// Status is the report as written to the podmeta.io/status annotation:
// what encoding/json.Marshal gives (TestStatusJSON), written directly as
// it is on every review (by reflection it was 1 % of a review's CPU).
func (r Report) Status() string {
	b := make([]byte, 0, 64+32*(len(r.Injected)+len(r.Containers))+96*len(r.Skips))
	b = append(b, `{"injected":`...)
	b = appendStrings(b, r.Injected)
	if len(r.Containers) > 0 {
		b = append(b, `,"containers":`...)
		b = appendStrings(b, r.Containers)
	}
	if len(r.Skips) > 0 {
		b = append(b, `,"skips":[`...)
		for i, s := range r.Skips {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"what":`...)
			b = jsonstr.Append(b, s.What)
			b = appendOmitEmpty(b, `,"container":`, s.Container)
			b = appendOmitEmpty(b, `,"name":`, s.Name)
			b = append(b, `,"reason":`...)
			b = jsonstr.Append(b, s.Reason)
			b = appendOmitEmpty(b, `,"detail":`, s.Detail)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return string(append(b, '}'))
}

// appendStrings writes a list of strings, nil as [].
func appendStrings(b []byte, list []string) []byte {
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonstr.Append(b, s)
	}
	return append(b, ']')
}

func appendOmitEmpty(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return jsonstr.Append(append(b, key...), v)
}

// String is the skip as one short sentence, e.g. "skipped env POD_NAME in
// container app: user-defined", for admission warnings and CLI output.
func (s Skip) String() string {
	msg := "skipped " + s.What
	if s.Name != "" {
		msg += " " + s.Name
	}
	if s.Container != "" {
		msg += " in container " + s.Container
	}
	msg += ": " + s.Reason
	if s.Detail != "" {
		msg += " (" + s.Detail + ")"
	}
	return msg
}
