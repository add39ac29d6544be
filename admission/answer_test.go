package admission

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

var reviewType = metav1.TypeMeta{APIVersion: admissionV1, Kind: "AdmissionReview"}

func checkAnswer(t *testing.T, typ metav1.TypeMeta, resp *admissionv1.AdmissionResponse) {
	t.Helper()
	want, err := json.Marshal(&admissionv1.AdmissionReview{TypeMeta: typ, Response: resp})
	require.NoError(t, err)
	prefix := []byte("kept ")
	got, err := appendAnswer(append([]byte(nil), prefix...), typ, resp)
	require.NoError(t, err)
	assert.Equal(t, string(prefix)+string(want), string(got))
}

// TestAnswerMatchesEncodingJSON holds appendAnswer to encoding/json's bytes.
func TestAnswerMatchesEncodingJSON(t *testing.T) {
	jp := admissionv1.PatchTypeJSONPatch
	patchBytes := []byte(`[{"op":"add","path":"/metadata/annotations","value":{"a":"<&>"}}]`)
	for name, c := range map[string]struct {
		typ  metav1.TypeMeta
		resp admissionv1.AdmissionResponse
	}{
		"allowed":            {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true}},
		"not allowed":        {reviewType, admissionv1.AdmissionResponse{UID: "u"}},
		"patched":            {reviewType, admissionv1.AdmissionResponse{UID: "705ab4f5-6393-11e8-b7cc-42010a800002", Allowed: true, Patch: patchBytes, PatchType: &jp}},
		"patch of every len": {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true, Patch: []byte("a"), PatchType: &jp}},
		"empty patch":        {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true, Patch: []byte{}, PatchType: &jp}},
		"warnings":           {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true, Patch: patchBytes, PatchType: &jp, Warnings: []string{"podmeta: a \"quoted\" <skip> & more", "é\u2028\x01"}}},
		"empty warnings":     {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true, Warnings: []string{}}},
		"escaped uid":        {reviewType, admissionv1.AdmissionResponse{UID: "<\"\\\xff>", Allowed: true}},
		"no type":            {metav1.TypeMeta{}, admissionv1.AdmissionResponse{UID: "u", Allowed: true}},
		"only kind":          {metav1.TypeMeta{Kind: "AdmissionReview"}, admissionv1.AdmissionResponse{UID: "u", Allowed: true}},
		"only apiVersion":    {metav1.TypeMeta{APIVersion: "x"}, admissionv1.AdmissionResponse{UID: "u", Allowed: true}},
		"denied":             {reviewType, admissionv1.AdmissionResponse{UID: "u", Result: &metav1.Status{Code: 400, Reason: metav1.StatusReasonBadRequest, Message: "podmeta: <bad>"}}},
		"audit annotations":  {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true, AuditAnnotations: map[string]string{"b": "1", "a": "2"}}},
		"odd patch type":     {reviewType, admissionv1.AdmissionResponse{UID: "u", Allowed: true, PatchType: ptr.To(admissionv1.PatchType("<x>"))}},
	} {
		t.Run(name, func(t *testing.T) { checkAnswer(t, c.typ, &c.resp) })
	}
	for n := range 70 { // every base64 padding case and the SIMD block boundaries
		t.Run("patch length", func(t *testing.T) {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(i * 37)
			}
			checkAnswer(t, reviewType, &admissionv1.AdmissionResponse{UID: "u", Allowed: true, Patch: p, PatchType: &jp})
		})
	}
}

// TestAnswerKnowsEveryField fails when a k8s.io/api upgrade adds a field to
// a type appendAnswer writes: teach it the field, then update the count.
func TestAnswerKnowsEveryField(t *testing.T) {
	for typ, n := range map[reflect.Type]int{
		reflect.TypeFor[admissionv1.AdmissionReview]():   3,
		reflect.TypeFor[admissionv1.AdmissionResponse](): 7,
		reflect.TypeFor[metav1.TypeMeta]():               2,
	} {
		assert.Equal(t, n, typ.NumField(), "%s has a new field: admission/answer.go must write it", typ)
	}
}

// FuzzAnswer: any UID, patch and warnings encode exactly as encoding/json
// encodes them.
func FuzzAnswer(f *testing.F) {
	f.Add("u", []byte(`[{"op":"add"}]`), "podmeta: skip", true)
	f.Add("<\xff>", []byte{0, 1, 2, 255}, "\u2028&", false)
	f.Fuzz(func(t *testing.T, uid string, p []byte, warning string, allowed bool) {
		jp := admissionv1.PatchTypeJSONPatch
		resp := &admissionv1.AdmissionResponse{Allowed: allowed, Patch: p, PatchType: &jp}
		resp.UID = types.UID(uid)
		if warning != "" {
			resp.Warnings = []string{warning, uid}
		}
		checkAnswer(t, reviewType, resp)
	})
}
