package admission

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/mutate"
)

// FuzzHandler feeds arbitrary bodies to the handler. Whatever comes in, it
// must answer with a client error or a well-formed review, never a 500 (a
// recovered panic or a patch failure), and a returned patch must be add-only
// and apply to the request's object.
//
// Longer run: go test ./admission -run '^$' -fuzz FuzzHandler -fuzztime 10m
func FuzzHandler(f *testing.F) {
	f.Add(review("u", "CREATE", "Pod", optedInPod))
	f.Add(review("u", "CREATE", "Pod", strings.Replace(optedInPod, `"labels"`, `"annotations":{"podmeta.io/containers":"app","podmeta.io/env-prefix":"X_"},"labels"`, 1)))
	f.Add(review("u", "CREATE", "Pod", `{"metadata":{"labels":{"podmeta.io/inject":"true"},"annotations":{}},"spec":{"initContainers":[],"containers":[{"name":"a","env":[],"volumeMounts":[]}],"volumes":[]}}`))
	f.Add(review("u", "CREATE", "Pod", `{"metadata":{"labels":{"podmeta.io/inject":"true"}},"spec":{"containers":[{"name":"podmeta-ambassador"},{"name":"b","ports":[{"containerPort":8001}]}],"volumes":[{"name":"podmeta"}]}}`))
	f.Add(review("u", "CREATE", "Pod", `{"metadata":{"labels":{"podmeta.io/inject":"true"},"annotations":null},"spec":{"initContainers":null,"containers":[{"name":"a","env":null,"volumeMounts":null}],"volumes":null}}`))
	f.Add(review("u", "CREATE", "Pod", `{"metadata":{"labels":{"podmeta.io/inject":"true"},"annotations":{"podmeta.io/status":"stale","a~b/c":"x"}},"spec":{"containers":[{"name":"a","env":[{"name":"POD_NAME"},{"name":"POD_NAME","value":"dup"}]},{"name":"a"}]}}`))
	f.Add(review("u", "CREATE", "Pod", `{"metadata":{"labels":{"podmeta.io/inject":"true"},"annotations":{"podmeta.io/native-sidecar":"false","podmeta.io/env":"false"}},"spec":{"restartPolicy":"Always","initContainers":[{"name":"i"}],"containers":[{"name":"a"}]}}`))
	f.Add(review("u", "UPDATE", "Pod", optedInPod))
	f.Add(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`)
	f.Add(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":null}}`)
	f.Add(`[]`)
	realistic, err := os.ReadFile("testdata/review-deployment-pod.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(realistic))
	h, _ := newTestHandler(f)
	f.Fuzz(func(t *testing.T, body string) {
		rec := post(h, "application/json", body)
		switch rec.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return
		case http.StatusOK:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("bad response %q: %v", rec.Body.String(), err)
		}
		var in admissionv1.AdmissionReview
		if err := unmarshal([]byte(body), &in); err != nil {
			t.Fatalf("200 for a body that does not decode: %v", err)
		}
		if out.Response.UID != in.Request.UID {
			t.Fatalf("uid %q, want %q", out.Response.UID, in.Request.UID)
		}
		if out.Response.Patch == nil {
			return
		}
		var ops []map[string]any
		if err := json.Unmarshal(out.Response.Patch, &ops); err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			if op["op"] != "add" {
				t.Fatalf("non-add op %v", op)
			}
		}
		p, err := jsonpatch.DecodePatch(out.Response.Patch)
		if err != nil {
			t.Fatal(err)
		}
		patched, err := p.Apply(in.Request.Object.Raw)
		if err != nil {
			t.Fatalf("patch does not apply: %v\npatch: %s\nobject: %s", err, out.Response.Patch, in.Request.Object.Raw)
		}
		// The patched object is exactly what mutate.Pod returns...
		var orig, got corev1.Pod
		if err := unmarshal(in.Request.Object.Raw, &orig); err != nil {
			t.Fatal(err)
		}
		if err := unmarshal(patched, &got); err != nil {
			t.Fatalf("patched object does not decode: %v", err)
		}
		want, _, err := mutate.Pod(&orig, h.cfg)
		if err != nil {
			t.Fatal(err)
		}
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(&got)
		if string(wj) != string(gj) {
			t.Fatalf("patched pod differs from mutate.Pod:\ngot:  %s\nwant: %s", gj, wj)
		}
		// ...and reviewing it again (reinvocation) adds nothing.
		again := post(h, "application/json", review("again", "CREATE", "Pod", string(patched)))
		var out2 admissionv1.AdmissionReview
		if err := json.Unmarshal(again.Body.Bytes(), &out2); err != nil || out2.Response == nil {
			t.Fatalf("reinvocation: %d %s", again.Code, again.Body.String())
		}
		if out2.Response.Patch != nil {
			t.Fatalf("reinvocation patched again: %s", out2.Response.Patch)
		}
	})
}
