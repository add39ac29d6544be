package admission

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
	"github.com/podmeta/podmeta/mutate"
	"github.com/podmeta/podmeta/patch"
)

// Benchmarks of the hot path, each against baselines measured in the same
// run (see BENCHMARKS.md, section "Injection engine"):
//
//	go test ./admission -run '^$' -bench . -benchmem
//
// Pods: small (one container), medium (hack/loadtest's typical pod: 2 init +
// 2 containers, 10 env vars each), large (4 init + 8 containers, 40 env vars
// and 4 mounts each, probes, resources), env-1500 (2 containers x 750 env
// vars).

func benchPods(b *testing.B) map[string][]byte {
	b.Helper()
	small, err := os.ReadFile("../mutate/testdata/minimal.pod.yaml")
	if err != nil {
		b.Fatal(err)
	}
	env1500, err := os.ReadFile("../mutate/testdata/env-1500.pod.yaml")
	if err != nil {
		b.Fatal(err)
	}
	out := map[string][]byte{}
	for name, y := range map[string][]byte{"small": small, "env-1500": env1500} {
		j, err := yaml.YAMLToJSON(y)
		if err != nil {
			b.Fatal(err)
		}
		out[name] = j
	}
	out["large"] = largePod(b)
	// The load tool's typical application pod, so that this section and
	// the end-to-end load numbers talk about the same pod.
	medium, err := corpus.Pod("medium")
	if err != nil {
		b.Fatal(err)
	}
	if out["medium"], err = json.Marshal(medium); err != nil {
		b.Fatal(err)
	}
	return out
}

func largePod(b *testing.B) []byte {
	b.Helper()
	var sb strings.Builder
	container := func(name string) string {
		var env, mounts []string
		for i := range 40 {
			env = append(env, fmt.Sprintf(`{"name":"%s_VAR_%d","value":"value %d"}`, strings.ToUpper(name), i, i))
		}
		for i := range 4 {
			mounts = append(mounts, fmt.Sprintf(`{"name":"vol-%d","mountPath":"/mnt/%s/%d"}`, i, name, i))
		}
		return fmt.Sprintf(`{"name":"%s","image":"example.com/%s:1.2.3","args":["--port=8080","--verbose"],`+
			`"ports":[{"containerPort":8080,"name":"http"}],"env":[%s],"volumeMounts":[%s],`+
			`"resources":{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"cpu":"1","memory":"512Mi"}},`+
			`"readinessProbe":{"httpGet":{"path":"/ready","port":8080},"periodSeconds":5},`+
			`"livenessProbe":{"httpGet":{"path":"/live","port":8080},"periodSeconds":10},`+
			`"securityContext":{"runAsNonRoot":true,"readOnlyRootFilesystem":true}}`,
			name, name, strings.Join(env, ","), strings.Join(mounts, ","))
	}
	var inits, cs, vols []string
	for i := range 4 {
		inits = append(inits, container(fmt.Sprintf("init-%d", i)))
	}
	for i := range 8 {
		cs = append(cs, container(fmt.Sprintf("app-%d", i)))
	}
	for i := range 4 {
		vols = append(vols, fmt.Sprintf(`{"name":"vol-%d","emptyDir":{}}`, i))
	}
	fmt.Fprintf(&sb, `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"large","namespace":"default",`+
		`"labels":{"podmeta.io/inject":"true","app":"large","tier":"backend"},"annotations":{"example.com/a":"1","example.com/b":"2"}},`+
		`"spec":{"serviceAccountName":"large","initContainers":[%s],"containers":[%s],"volumes":[%s]}}`,
		strings.Join(inits, ","), strings.Join(cs, ","), strings.Join(vols, ","))
	return []byte(sb.String())
}

// loop runs f b.N times and reports the CPU time per op as cpu-ns/op.
func loop(b *testing.B, f func()) {
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		f()
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkMutatePatch: mutate.Pod + patch.Pod + encoding the patch, against
// decoding the same pod (json.Unmarshal), the unavoidable work per review.
func BenchmarkMutatePatch(b *testing.B) {
	cfg := mutate.DefaultConfig()
	for name, raw := range benchPods(b) {
		var pod corev1.Pod
		if err := json.Unmarshal(raw, &pod); err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/baseline-decode", func(b *testing.B) {
			loop(b, func() {
				var p corev1.Pod
				if err := json.Unmarshal(raw, &p); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(name+"/mutate+patch", func(b *testing.B) {
			loop(b, func() {
				m, _, err := mutate.Pod(&pod, cfg)
				if err != nil {
					b.Fatal(err)
				}
				ops, err := patch.Pod(&pod, m)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := patch.Marshal(ops); err != nil {
					b.Fatal(err)
				}
			})
		})
		// Encoding the patch alone: patch.Marshal against encoding/json.
		m, _, err := mutate.Pod(&pod, cfg)
		if err != nil {
			b.Fatal(err)
		}
		ops, err := patch.Pod(&pod, m)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/encode-patch/encoding-json", func(b *testing.B) {
			loop(b, func() {
				if _, err := json.Marshal(ops); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(name+"/encode-patch/patch.Marshal", func(b *testing.B) {
			loop(b, func() {
				if _, err := patch.Marshal(ops); err != nil {
					b.Fatal(err)
				}
			})
		})
		// What a generic diff of the re-encoded pods costs instead of
		// patch.Pod (kubebuilder style), for comparison only.
		b.Run(name+"/mutate+generic-diff", func(b *testing.B) {
			loop(b, func() {
				m, _, err := mutate.Pod(&pod, cfg)
				if err != nil {
					b.Fatal(err)
				}
				mj, err := json.Marshal(m)
				if err != nil {
					b.Fatal(err)
				}
				ops, err := jsonpatch.CreatePatch(raw, mj)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := json.Marshal(ops); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkHandler: a whole review through ServeHTTP (body read, decode,
// mutate, patch, encode), against only decoding the same AdmissionReview
// and then its pod the classic way (two steps; the handler does one pass).
func BenchmarkHandler(b *testing.B) {
	h, _ := newTestHandler(b)
	for name, raw := range benchPods(b) {
		body := []byte(review("0b7a3c9e-6d1f-4b8a-9c2e-1f5d8e7a6b4c", "CREATE", "Pod", string(raw)))
		b.Run(name+"/baseline-decode", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			loop(b, func() {
				var r admissionv1.AdmissionReview
				if err := json.Unmarshal(body, &r); err != nil {
					b.Fatal(err)
				}
				var p corev1.Pod
				if err := json.Unmarshal(r.Request.Object.Raw, &p); err != nil {
					b.Fatal(err)
				}
			})
		})
		// The fast path's decode alone (what handler does first).
		b.Run(name+"/decode", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			loop(b, func() {
				if _, _, pod, err := decode(body); err != nil || pod == nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(name+"/handler", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			// A bare request and writer: httptest's parse the request line
			// and buffer the answer, which would be the benchmark's cost,
			// not the handler's.
			header := http.Header{"Content-Type": {"application/json"}}
			w := &discardWriter{header: http.Header{}}
			loop(b, func() {
				req := &http.Request{Method: http.MethodPost, Header: header,
					Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
				w.code = 0
				h.ServeHTTP(w, req)
				if w.code != 0 && w.code != http.StatusOK {
					b.Fatalf("status %d", w.code)
				}
			})
		})
	}
}

// discardWriter is the cheapest http.ResponseWriter: it keeps the status.
type discardWriter struct {
	header http.Header
	code   int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
