package admission

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestEncodeReview holds encodeReview to encoding/json's exact bytes.
func TestEncodeReview(t *testing.T) {
	jsonPatch := admissionv1.PatchTypeJSONPatch
	typ := metav1.TypeMeta{APIVersion: admissionV1, Kind: "AdmissionReview"}
	for name, tt := range map[string]struct {
		typ  metav1.TypeMeta
		resp admissionv1.AdmissionResponse
	}{
		"allowed":          {typ, admissionv1.AdmissionResponse{UID: "u-1", Allowed: true}},
		"patch":            {typ, admissionv1.AdmissionResponse{UID: "u-2", Allowed: true, Patch: []byte(`[{"op":"add","path":"/x","value":"é<>&"}]`), PatchType: &jsonPatch}},
		"patch, warnings":  {typ, admissionv1.AdmissionResponse{UID: "u-3", Allowed: true, Patch: []byte("[]"), PatchType: &jsonPatch, Warnings: []string{"podmeta: skipped env X", "<&> \"q\" \u2028 \xff"}}},
		"empty warnings":   {typ, admissionv1.AdmissionResponse{UID: "u", Allowed: true, Warnings: []string{}, Patch: []byte{}}},
		"not allowed":      {typ, admissionv1.AdmissionResponse{UID: "u"}},
		"odd uid":          {typ, admissionv1.AdmissionResponse{UID: "<\"\\\n>", Allowed: true}},
		"no type":          {metav1.TypeMeta{}, admissionv1.AdmissionResponse{UID: "u", Allowed: true}},
		"only apiVersion":  {metav1.TypeMeta{APIVersion: admissionV1}, admissionv1.AdmissionResponse{UID: "u", Allowed: true}},
		"denied":           {typ, admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{Status: metav1.StatusFailure, Code: 400, Message: "podmeta: bad"}}},
		"audit annotation": {typ, admissionv1.AdmissionResponse{UID: "u", Allowed: true, AuditAnnotations: map[string]string{"a": "b"}}},
	} {
		t.Run(name, func(t *testing.T) {
			want, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: tt.typ, Response: &tt.resp})
			require.NoError(t, err)
			got, err := encodeReview(tt.typ, &tt.resp)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got))
		})
	}
}
