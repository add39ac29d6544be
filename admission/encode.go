package admission

import (
	"encoding/base64"
	"encoding/json"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// encodeReview encodes the AdmissionReview answer: what
// json.Marshal(admissionv1.AdmissionReview{TypeMeta: typ, Response: resp})
// gives, byte for byte (TestEncodeReview). The common answers (allowed,
// maybe a patch, maybe warnings) are written directly, the patch
// base64-encoded straight into the output: the patch is most of the answer,
// and encoding/json would encode it into a scratch buffer and copy it again.
// Anything else (a denial's status, audit annotations) goes to encoding/json.
func encodeReview(typ metav1.TypeMeta, resp *admissionv1.AdmissionResponse) ([]byte, error) {
	if resp.Result != nil || resp.AuditAnnotations != nil {
		return json.Marshal(admissionv1.AdmissionReview{TypeMeta: typ, Response: resp})
	}
	b := make([]byte, 0, 160+base64.StdEncoding.EncodedLen(len(resp.Patch)))
	b = append(b, '{')
	if typ.Kind != "" {
		b = append(b, `"kind":`...)
		b = appendString(b, typ.Kind)
		b = append(b, ',')
	}
	if typ.APIVersion != "" {
		b = append(b, `"apiVersion":`...)
		b = appendString(b, typ.APIVersion)
		b = append(b, ',')
	}
	b = append(b, `"response":{"uid":`...)
	b = appendString(b, string(resp.UID))
	if resp.Allowed {
		b = append(b, `,"allowed":true`...)
	} else {
		b = append(b, `,"allowed":false`...)
	}
	if len(resp.Patch) > 0 {
		b = append(b, `,"patch":"`...)
		b = base64.StdEncoding.AppendEncode(b, resp.Patch)
		b = append(b, '"')
	}
	if resp.PatchType != nil {
		b = append(b, `,"patchType":`...)
		b = appendString(b, string(*resp.PatchType))
	}
	if len(resp.Warnings) > 0 {
		b = append(b, `,"warnings":[`...)
		for i, w := range resp.Warnings {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, w)
		}
		b = append(b, ']')
	}
	return append(b, "}}"...), nil
}

// appendString quotes s as encoding/json does (it is only ever a few short
// strings per answer, so no fast path).
func appendString(b []byte, s string) []byte {
	enc, _ := json.Marshal(s) // a string always encodes
	return append(b, enc...)
}
