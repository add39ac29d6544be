package app

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

func review(t *testing.T, pod string) admissionv1.AdmissionReview {
	t.Helper()
	in := admissionv1.AdmissionReview{Request: &admissionv1.AdmissionRequest{UID: types.UID("u-1"), Object: runtime.RawExtension{Raw: []byte(pod)}}}
	in.APIVersion, in.Kind = "admission.k8s.io/v1", "AdmissionReview"
	body, err := json.Marshal(in)
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	NewLabeler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/label", bytes.NewReader(body)))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var out admissionv1.AdmissionReview
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
	require.NotNil(t, out.Response)
	assert.Equal(t, types.UID("u-1"), out.Response.UID)
	assert.Equal(t, "AdmissionReview", out.Kind)
	return out
}

func TestLabelerAddsLabel(t *testing.T) {
	out := review(t, `{"metadata":{"name":"p","labels":{"a":"b"}}}`)
	assert.True(t, out.Response.Allowed)
	require.NotNil(t, out.Response.PatchType)
	assert.JSONEq(t, `[{"op":"add","path":"/metadata/labels/e2e.podmeta.io~1labeled","value":"true"}]`, string(out.Response.Patch))
}

func TestLabelerCreatesLabels(t *testing.T) {
	out := review(t, `{"metadata":{"name":"p"}}`)
	assert.JSONEq(t, `[{"op":"add","path":"/metadata/labels","value":{"e2e.podmeta.io/labeled":"true"}}]`, string(out.Response.Patch))
}

func TestLabelerSecondPassIsEmpty(t *testing.T) {
	out := review(t, `{"metadata":{"labels":{"e2e.podmeta.io/labeled":"true"}}}`)
	assert.True(t, out.Response.Allowed)
	assert.Nil(t, out.Response.Patch)
	assert.Nil(t, out.Response.PatchType)
}

func TestLabelerRejectsGarbage(t *testing.T) {
	rec := httptest.NewRecorder()
	NewLabeler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/label", bytes.NewReader([]byte("{"))))
	assert.Equal(t, http.StatusBadRequest, rec.Code)
}
