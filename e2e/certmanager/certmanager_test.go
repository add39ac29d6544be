package certmanager

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

func certificate(conds ...map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
		"metadata": map[string]any{"name": "serving", "namespace": "ns", "generation": int64(3)},
	}}
	var cs []any
	for _, c := range conds {
		cs = append(cs, c)
	}
	if cs != nil {
		_ = unstructured.SetNestedSlice(u.Object, cs, "status", "conditions")
	}
	return u
}

func TestReady(t *testing.T) {
	for _, tc := range []struct {
		name string
		cert *unstructured.Unstructured
		want bool
	}{
		{"no status", certificate(), false},
		{"ready", certificate(map[string]any{"type": "Ready", "status": "True"}), true},
		{"not ready", certificate(map[string]any{"type": "Ready", "status": "False"}), false},
		{"issuing only", certificate(map[string]any{"type": "Issuing", "status": "True"}), false},
	} {
		assert.Equal(t, tc.want, Ready(tc.cert), tc.name)
	}
}

// Renew sets Issuing=True with the Certificate's generation, replaces an
// earlier Issuing condition, keeps the others, and retries a conflict (the
// controller writing the status at the same moment).
func TestRenew(t *testing.T) {
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{CertificateGVR: "CertificateList"},
		certificate(
			map[string]any{"type": "Ready", "status": "True", "reason": "Ready"},
			map[string]any{"type": "Issuing", "status": "False", "reason": "Done"},
		))
	conflicts := 0
	dyn.PrependReactor("update", "certificates", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() == "status" && conflicts == 0 {
			conflicts++
			return true, nil, apierrors.NewConflict(CertificateGVR.GroupResource(), "serving", nil)
		}
		return false, nil, nil
	})
	require.NoError(t, Renew(context.Background(), dyn, "ns", "serving"))
	assert.Equal(t, 1, conflicts)

	got, err := dyn.Resource(CertificateGVR).Namespace("ns").Get(context.Background(), "serving", metav1.GetOptions{})
	require.NoError(t, err)
	conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
	require.Len(t, conds, 2)
	assert.Equal(t, "Ready", conds[0].(map[string]any)["type"])
	issuing := conds[1].(map[string]any)
	assert.Equal(t, "Issuing", issuing["type"])
	assert.Equal(t, "True", issuing["status"])
	assert.Equal(t, "ManuallyTriggered", issuing["reason"])
	assert.EqualValues(t, 3, issuing["observedGeneration"])
	assert.NotEmpty(t, issuing["lastTransitionTime"])
}

func TestRenewMissingCertificate(t *testing.T) {
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{CertificateGVR: "CertificateList"})
	err := Renew(context.Background(), dyn, "ns", "absent")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Certificate ns/absent")
}

func TestCRDNames(t *testing.T) {
	data := []byte(`# a comment
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: issuers.cert-manager.io}
`)
	assert.Equal(t, []string{"certificates.cert-manager.io", "issuers.cert-manager.io"}, crdNames(data))
}
