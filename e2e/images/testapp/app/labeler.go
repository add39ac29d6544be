package app

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LabelerLabel is what the labeler adds to every pod it admits.
const LabelerLabel = "e2e.podmeta.io/labeled"

// maxReview bounds an AdmissionReview body (the API server sends at most 3 MiB objects).
const maxReview = 8 << 20

// NewLabeler returns a trivial mutating admission webhook that adds the label
// LabelerLabel="true" to every pod it sees (and nothing when it is already
// there). The e2e tests register it after podmeta so the API server has to
// reinvoke podmeta (reinvocationPolicy IfNeeded): the stored pod must still
// have every injected part exactly once.
func NewLabeler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("POST /label", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxReview))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
			http.Error(w, fmt.Sprintf("want an AdmissionReview with a request: %v", err), http.StatusBadRequest)
			return
		}
		resp, err := labelResponse(review.Request)
		if err != nil {
			resp = &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{Message: err.Error()}}
		}
		resp.UID = review.Request.UID
		review.Request = nil
		review.Response = resp
		writeJSON(w, http.StatusOK, review)
	})
	return mux
}

func labelResponse(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, error) {
	var obj struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		return nil, fmt.Errorf("labeler: decoding the object: %w", err)
	}
	resp := &admissionv1.AdmissionResponse{Allowed: true}
	if obj.Metadata.Labels[LabelerLabel] == "true" {
		return resp, nil
	}
	var op map[string]any
	if obj.Metadata.Labels == nil {
		op = map[string]any{"op": "add", "path": "/metadata/labels", "value": map[string]string{LabelerLabel: "true"}}
	} else {
		// JSON pointer escaping: "~" -> "~0", "/" -> "~1".
		key := strings.NewReplacer("~", "~0", "/", "~1").Replace(LabelerLabel)
		op = map[string]any{"op": "add", "path": "/metadata/labels/" + key, "value": "true"}
	}
	patch, err := json.Marshal([]any{op})
	if err != nil {
		return nil, err
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp, nil
}
