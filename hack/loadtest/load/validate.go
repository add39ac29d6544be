package load

import (
	"bytes"
	"encoding/json"
	"fmt"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
)

// Kinds of invalid response (the keys of Result.Errors).
const (
	ErrDecode  = "decode"     // not an AdmissionReview v1 response
	ErrUID     = "uid"        // response UID is not the request's
	ErrDenied  = "denied"     // allowed: false
	ErrPatch   = "patch"      // patch missing, not JSONPatch, not add-only, or does not apply
	ErrNoPatch = "patch-null" // the null target must not patch
)

type reviewResponse struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   *struct {
		UID       string  `json:"uid"`
		Allowed   bool    `json:"allowed"`
		Patch     []byte  `json:"patch"`
		PatchType *string `json:"patchType"`
		Status    *struct {
			Message string `json:"message"`
			Code    int32  `json:"code"`
		} `json:"status"`
	} `json:"response"`
}

type patchOp struct {
	Op   string `json:"op"`
	Path string `json:"path"`
}

// validator checks responses for one corpus pod. Every response is checked
// in full once per distinct patch: the webhook's patch depends only on the
// pod and its config, never on the request UID, so a patch byte-identical
// to one already proven to apply cleanly is proven too. That keeps full
// validation of every response affordable on the generator's single core
// (applying a patch to the large pod costs far more than the request).
type validator struct {
	review      *corpus.Review
	expectPatch bool
	good        [][]byte // patches already applied and checked
}

// check returns "" for a valid response, else the error kind and detail.
func (v *validator) check(body []byte, uid string) (string, error) {
	var rr reviewResponse
	if err := json.Unmarshal(body, &rr); err != nil {
		return ErrDecode, fmt.Errorf("decode response: %w", err)
	}
	if rr.APIVersion != "admission.k8s.io/v1" || rr.Kind != "AdmissionReview" || rr.Response == nil {
		return ErrDecode, fmt.Errorf("response is %s %s (response set: %t), want an admission.k8s.io/v1 AdmissionReview with a response", rr.APIVersion, rr.Kind, rr.Response != nil)
	}
	r := rr.Response
	if r.UID != uid {
		return ErrUID, fmt.Errorf("response uid %q, want %q", r.UID, uid)
	}
	if !r.Allowed {
		msg := ""
		if r.Status != nil {
			msg = fmt.Sprintf(": %d %s", r.Status.Code, r.Status.Message)
		}
		return ErrDenied, fmt.Errorf("pod denied%s", msg)
	}
	if !v.expectPatch {
		if len(r.Patch) > 0 || r.PatchType != nil {
			return ErrNoPatch, fmt.Errorf("null target returned a patch")
		}
		return "", nil
	}
	if len(r.Patch) == 0 {
		return ErrPatch, fmt.Errorf("no patch for a pod labeled %s=true", corpus.InjectLabel)
	}
	if r.PatchType == nil || *r.PatchType != "JSONPatch" {
		return ErrPatch, fmt.Errorf("patchType %v, want JSONPatch", r.PatchType)
	}
	for _, g := range v.good {
		if bytes.Equal(g, r.Patch) {
			return "", nil
		}
	}
	if err := checkPatch(v.review.Pod, r.Patch); err != nil {
		return ErrPatch, err
	}
	if len(v.good) < 8 { // a bound, in case a server varies its patch per request
		v.good = append(v.good, bytes.Clone(r.Patch))
	}
	return "", nil
}

// applyOptions are stricter than the API server's: no negative indices.
var applyOptions = func() *jsonpatch.ApplyOptions {
	o := jsonpatch.NewApplyOptions()
	o.SupportNegativeIndices = false
	return o
}()

// checkPatch proves a patch is purely additive and yields a valid Pod that
// still carries the opt-in label and differs from the original.
func checkPatch(pod, patch []byte) error {
	var ops []patchOp
	if err := json.Unmarshal(patch, &ops); err != nil {
		return fmt.Errorf("decode patch: %w", err)
	}
	if len(ops) == 0 {
		return fmt.Errorf("empty patch for a pod labeled %s=true", corpus.InjectLabel)
	}
	for i, op := range ops {
		if op.Op != "add" {
			return fmt.Errorf("patch op %d is %q on %s: podmeta patches only add", i, op.Op, op.Path)
		}
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		return fmt.Errorf("decode patch: %w", err)
	}
	out, err := p.ApplyWithOptions(pod, applyOptions)
	if err != nil {
		return fmt.Errorf("apply patch: %w", err)
	}
	var mutated corev1.Pod
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&mutated); err != nil {
		return fmt.Errorf("patched pod is not a valid Pod: %w", err)
	}
	if mutated.Labels[corpus.InjectLabel] != "true" {
		return fmt.Errorf("patched pod lost its %s label", corpus.InjectLabel)
	}
	return nil
}
