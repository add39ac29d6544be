package corpus

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"

	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// uidPlaceholder marks where the per-request UID goes in the encoded review.
// It has the length of a UUID so templates and real bodies match in size.
const uidPlaceholder = "00000000-0000-0000-0000-0000deadbeef"

// Review is an AdmissionReview v1 request for one corpus pod, pre-encoded
// around its UID so that a request with a fresh UID costs the load generator
// one copy instead of a JSON encode: the generator has one core, and every
// cycle it spends is a cycle not spent loading the server.
type Review struct {
	Size   string
	Pod    []byte // the pod exactly as sent in request.object
	prefix []byte
	suffix []byte
}

// NewReview encodes a CREATE review of the named corpus pod, as
// kube-apiserver sends it to a mutating webhook.
func NewReview(size string) (*Review, error) {
	p, err := Pod(size)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode %s pod: %w", size, err)
	}
	opts, err := json.Marshal(&metav1.CreateOptions{TypeMeta: metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "CreateOptions"}})
	if err != nil {
		return nil, fmt.Errorf("encode create options: %w", err)
	}
	dryRun := false
	ar := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:             types.UID(uidPlaceholder),
			Kind:            metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:        metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			RequestKind:     &metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			RequestResource: &metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace:       p.Namespace,
			Operation:       admissionv1.Create,
			UserInfo:        authnv1.UserInfo{Username: "system:serviceaccount:kube-system:replicaset-controller", UID: "0b0c7b6e-3a52-4c43-9d7b-1a1f6a1d2e3f", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}},
			Object:          runtime.RawExtension{Raw: raw},
			DryRun:          &dryRun,
			Options:         runtime.RawExtension{Raw: opts},
		},
	}
	enc, err := json.Marshal(&ar)
	if err != nil {
		return nil, fmt.Errorf("encode admission review: %w", err)
	}
	i := bytes.Index(enc, []byte(uidPlaceholder))
	if i < 0 || bytes.Count(enc, []byte(uidPlaceholder)) != 1 {
		return nil, fmt.Errorf("encode admission review: UID placeholder not found exactly once")
	}
	return &Review{Size: size, Pod: raw, prefix: enc[:i], suffix: enc[i+len(uidPlaceholder):]}, nil
}

// Len is the encoded size of every request built from r.
func (r *Review) Len() int { return len(r.prefix) + len(uidPlaceholder) + len(r.suffix) }

// AppendBody appends the encoded review with the given UID to dst.
// uid must be JSON-safe (NewUID's output is).
func (r *Review) AppendBody(dst []byte, uid string) []byte {
	dst = append(dst, r.prefix...)
	dst = append(dst, uid...)
	return append(dst, r.suffix...)
}

// NewUID returns a random version-4 UUID from rng. The load generator uses
// a per-worker math/rand source: UIDs must be unique, not unpredictable.
func NewUID(rng *rand.Rand) string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
