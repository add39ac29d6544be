package admission

import (
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"reflect"
	sigsjson "sigs.k8s.io/json"
)

// podReview is an AdmissionReview whose request.object decodes straight
// into a Pod: one pass over the bytes, where AdmissionReview would validate
// them, copy request.object into a RawExtension, and validate and decode the
// copy again (the pod is most of the body, so this is most of the cost).
type podReview struct {
	metav1.TypeMeta `json:",inline"`
	Request         *podRequest `json:"request"`
}

type podRequest struct {
	admissionv1.AdmissionRequest
	// Object shadows AdmissionRequest.Object: the shallower field wins.
	Object *corev1.Pod `json:"object"`
}

// decode returns the review's type, its request and, for a request whose
// object decodes as a Pod, that pod.
//
// The fast path reads the review with hand decoders (handdecode.go) on a
// scanner that validates as jsontext does (scan.go), for the review's
// common members, and with encoding/json/v2 (github.com/go-json-experiment/
// json, the standard library's from Go 1.27 on) for the rest. It matches
// names case-sensitively like the API server, and refuses duplicate names
// and invalid UTF-8. Anything it refuses (another kind of object, malformed
// or merely unusual input) takes the general path, the API server's own
// decoder (sigs.k8s.io/json), which also yields the precise error.
//
// The fast path also leaves out the parts of a pod that mutate never reads
// (see unread), checking only that they are well-formed JSON.
func decode(body []byte) (metav1.TypeMeta, *admissionv1.AdmissionRequest, *corev1.Pod, error) {
	if pr, err := decodeFast(body); err == nil {
		if pr.Request == nil {
			return pr.TypeMeta, nil, nil, nil
		}
		return pr.TypeMeta, &pr.Request.AdmissionRequest, pr.Request.Object, nil
	}
	var review admissionv1.AdmissionReview
	if err := unmarshal(body, &review); err != nil {
		return metav1.TypeMeta{}, nil, nil, badRequest("decode AdmissionReview: %v", err)
	}
	req := review.Request
	if req == nil || !isPodCreate(req) || len(req.Object.Raw) == 0 {
		return review.TypeMeta, req, nil, nil
	}
	pod := new(corev1.Pod)
	if err := unmarshal(req.Object.Raw, pod); err != nil {
		return metav1.TypeMeta{}, nil, nil, badRequest("decode request object as a Pod: %v", err)
	}
	return review.TypeMeta, req, pod, nil
}

// decodeFast is the fast path: exactly what jsonv2 with unread gives, or
// an error (FuzzHandDecode).
func decodeFast(body []byte) (*podReview, error) {
	d := &scanner{b: body}
	pr := new(podReview)
	if err := handReview(d, pr); err != nil {
		return nil, err
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return pr, nil
}

// unread lists the types in a Pod that mutate.Pod never reads, so the fast
// path leaves them out of the decoded pod: the patch only carries what
// mutate added, so nothing of them can be lost. They were a fifth of the
// decode of the load tool's typical pod (owner references, tolerations,
// resource quantities), and real reviews carry more: managedFields (as
// large as the spec), probes, security contexts. Of the resources, mutate
// reads only CPU and memory (for the QoS class and pod-level budget the
// ambassador must respect): resourcesQoS keeps just those.
//
// If mutate is to read one of these, remove it here first:
// TestDecodeLeavesOutOnlyUnread fails until then (it compares the handler's
// patch with mutate's on the fully decoded pod, with every type below
// filled in).
var unreadTypes = []unreadType{
	leftOut[[]metav1.ManagedFieldsEntry](),
	leftOut[[]metav1.OwnerReference](),
	leftOut[corev1.PodStatus](),
	leftOut[*corev1.Probe](),
	leftOut[*corev1.Lifecycle](),
	leftOut[*corev1.SecurityContext](),
	leftOut[*corev1.PodSecurityContext](),
	leftOut[*corev1.PodAffinity](),
	leftOut[*corev1.PodAntiAffinity](),
	leftOut[[]corev1.PreferredSchedulingTerm](),
	leftOut[[]corev1.Toleration](),
	leftOut[[]corev1.TopologySpreadConstraint](),
}

// unread are the unmarshalers that leave the unread types out, and keep
// only CPU and memory of resources.
var unread = func() *jsonv2.Unmarshalers {
	u := []*jsonv2.Unmarshalers{jsonv2.UnmarshalFromFunc(func(dec *jsontext.Decoder, r *corev1.ResourceRequirements) error {
		raw, err := dec.ReadValue() // validated by jsontext
		if err != nil {
			return err
		}
		s := &scanner{b: raw}
		if err := resourcesQoS(s, r); err != nil {
			return err
		}
		return s.end()
	})}
	for _, t := range unreadTypes {
		u = append(u, t.skip)
	}
	return jsonv2.JoinUnmarshalers(u...)
}()

// withUnread: the options of the hand decoders' calls into jsonv2.
var withUnread = jsonv2.WithUnmarshalers(unread)

// unreadType is a type the fast path leaves out, and its unmarshaler.
type unreadType struct {
	typ  reflect.Type
	skip *jsonv2.Unmarshalers
}

// leftOut returns T as an unread type: its unmarshaler consumes the value
// and leaves T as it is.
func leftOut[T any]() unreadType {
	return unreadType{reflect.TypeFor[T](), jsonv2.UnmarshalFromFunc(func(dec *jsontext.Decoder, _ *T) error { return dec.SkipValue() })}
}

func isUnread(t reflect.Type) bool {
	for _, u := range unreadTypes {
		if u.typ == t {
			return true
		}
	}
	return false
}

// unmarshal decodes like the API server does: field names are case
// sensitive. encoding/json would take "sPec" for "spec", and a patch for
// /spec/... would then not apply to the object the API server holds.
func unmarshal(data []byte, v any) error {
	return sigsjson.UnmarshalCaseSensitivePreserveInts(data, v)
}

func isPodCreate(req *admissionv1.AdmissionRequest) bool {
	return req.Operation == admissionv1.Create && req.SubResource == "" &&
		req.Kind.Group == "" && req.Kind.Version == "v1" && req.Kind.Kind == "Pod"
}
