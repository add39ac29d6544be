package admission

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/mutate"
)

const optedInPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default","labels":{"podmeta.io/inject":"true"}},` +
	`"spec":{"containers":[{"name":"app","image":"example.com/app:1","futureField":{"x":1}}],"futureSpecField":true}}`

func review(uid, op, kind, object string) string {
	obj := ""
	if object != "" {
		obj = `,"object":` + object
	}
	return `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"` + uid + `",` +
		`"kind":{"group":"","version":"v1","kind":"` + kind + `"},"resource":{"group":"","version":"v1","resource":"pods"},` +
		`"namespace":"default","operation":"` + op + `"` + obj + `}}`
}

func newTestHandler(t testing.TB) (*handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	h, err := NewHandler(mutate.DefaultConfig(), slog.New(slog.DiscardHandler), reg)
	require.NoError(t, err)
	return h.(*handler), reg
}

func post(h http.Handler, contentType, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestBadRequests: each transport-level problem gets its own status and a
// message saying what is wrong.
func TestBadRequests(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		code        int
		msg         string
	}{
		{"wrong method", http.MethodGet, "application/json", "", 405,
			"method GET not allowed: POST an AdmissionReview"},
		{"no content type", "", "", review("u", "CREATE", "Pod", optedInPod), 415,
			`Content-Type "" not supported: want application/json`},
		{"wrong content type", "", "application/yaml", review("u", "CREATE", "Pod", optedInPod), 415,
			`Content-Type "application/yaml" not supported: want application/json`},
		{"body too large", "", "application/json", `{"x":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, 413,
			"request body larger than 7340032 bytes"},
		{"body too large, chunked", "", "application/json", "chunked:" + `{"x":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, 413,
			"request body larger than 7340032 bytes"},
		{"malformed JSON", "", "application/json", `{"apiVersion":`, 400,
			"decode AdmissionReview: unexpected end of JSON input"},
		{"not JSON at all", "", "application/json", `<xml/>`, 400,
			"decode AdmissionReview: invalid character '<' looking for beginning of value"},
		{"v1beta1", "", "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`, 400,
			`unsupported apiVersion "admission.k8s.io/v1beta1", kind "AdmissionReview": want admission.k8s.io/v1 AdmissionReview`},
		{"wrong kind", "", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}`, 400,
			`unsupported apiVersion "admission.k8s.io/v1", kind "Pod": want admission.k8s.io/v1 AdmissionReview`},
		{"missing request", "", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400,
			"AdmissionReview has no request"},
		{"missing uid", "", "application/json", review("", "CREATE", "Pod", optedInPod), 400,
			"AdmissionReview request has no uid"},
		{"pod create without object", "", "application/json", review("u", "CREATE", "Pod", ""), 400,
			"Pod CREATE request has no object"},
		{"object is not a pod", "", "application/json", review("u", "CREATE", "Pod", `{"spec":{"containers":"app"}}`), 400,
			"decode request object as a Pod: json: cannot unmarshal string into Go struct field PodSpec.spec.containers of type []v1.Container"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, reg := newTestHandler(t)
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			body, chunked := strings.CutPrefix(tt.body, "chunked:")
			req := httptest.NewRequest(method, "/mutate", strings.NewReader(body))
			if chunked {
				// No Content-Length: the limit must hold while reading.
				req.ContentLength = -1
			}
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			assert.Equal(t, tt.code, rec.Code)
			assert.Equal(t, tt.msg+"\n", rec.Body.String())
			assert.Equal(t, 1.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomeBadRequest)))
			assert.Equal(t, 1, testutil.CollectAndCount(reg, "podmeta_admission_duration_seconds"))
		})
	}
}

func decodeResponse(t *testing.T, rec *httptest.ResponseRecorder) *admissionv1.AdmissionReview {
	t.Helper()
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var out admissionv1.AdmissionReview
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
	assert.Equal(t, "admission.k8s.io/v1", out.APIVersion)
	assert.Equal(t, "AdmissionReview", out.Kind)
	require.NotNil(t, out.Response)
	return &out
}

// TestAllowedUnchanged: what podmeta does not handle is allowed without a
// patch.
func TestAllowedUnchanged(t *testing.T) {
	notOptedIn := strings.Replace(optedInPod, `"podmeta.io/inject":"true"`, `"podmeta.io/inject":"false"`, 1)
	tests := []struct {
		name, body, outcome string
	}{
		{"pod update", review("u1", "UPDATE", "Pod", optedInPod), OutcomeIgnored},
		{"pod delete", review("u1", "DELETE", "Pod", ""), OutcomeIgnored},
		{"other kind", review("u1", "CREATE", "ConfigMap", `{"data":{}}`), OutcomeIgnored},
		{"pod subresource", strings.Replace(review("u1", "CREATE", "Pod", optedInPod), `"namespace"`, `"subResource":"binding","namespace"`, 1), OutcomeIgnored},
		{"not opted in", review("u1", "CREATE", "Pod", notOptedIn), OutcomeNotOptedIn},
		{"invalid annotations but not opted in", review("u1", "CREATE", "Pod",
			strings.Replace(notOptedIn, `"labels"`, `"annotations":{"podmeta.io/env":"maybe"},"labels"`, 1)), OutcomeNotOptedIn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newTestHandler(t)
			out := decodeResponse(t, post(h, "application/json", tt.body))
			assert.Equal(t, "u1", string(out.Response.UID))
			assert.True(t, out.Response.Allowed)
			assert.Nil(t, out.Response.Patch)
			assert.Nil(t, out.Response.PatchType)
			assert.Nil(t, out.Response.Result)
			assert.Equal(t, 1.0, testutil.ToFloat64(h.m.requests.WithLabelValues(tt.outcome)))
		})
	}
}

// TestPatched: the patch is add-only, applies to the raw object, gives
// what mutate.Pod gives, and keeps fields our k8s.io/api does not know.
func TestPatched(t *testing.T) {
	h, _ := newTestHandler(t)
	// charset parameter is fine
	rec := post(h, "application/json; charset=utf-8", review("uid-1", "CREATE", "Pod", optedInPod))
	out := decodeResponse(t, rec)
	// The answer (encoded into a pooled buffer) is exactly what
	// encoding/json.Marshal gives, without a trailing newline, and its
	// length is announced.
	exact, err := json.Marshal(out)
	require.NoError(t, err)
	assert.Equal(t, string(exact), rec.Body.String())
	assert.Equal(t, fmt.Sprint(len(exact)), rec.Header().Get("Content-Length"))
	r := out.Response
	assert.Equal(t, "uid-1", string(r.UID))
	assert.True(t, r.Allowed)
	require.NotNil(t, r.PatchType)
	assert.Equal(t, admissionv1.PatchTypeJSONPatch, *r.PatchType)
	assert.Empty(t, r.Warnings)

	var ops []map[string]any
	require.NoError(t, json.Unmarshal(r.Patch, &ops))
	for _, op := range ops {
		assert.Equal(t, "add", op["op"])
	}
	p, err := jsonpatch.DecodePatch(r.Patch)
	require.NoError(t, err)
	patched, err := p.Apply([]byte(optedInPod))
	require.NoError(t, err)
	assert.Contains(t, string(patched), `"futureField":{"x":1}`)
	assert.Contains(t, string(patched), `"futureSpecField":true`)

	var in, got corev1.Pod
	require.NoError(t, json.Unmarshal([]byte(optedInPod), &in))
	require.NoError(t, json.Unmarshal(patched, &got))
	want, report, err := mutate.Pod(&in, mutate.DefaultConfig())
	require.NoError(t, err)
	wantJSON, _ := json.Marshal(want)
	gotJSON, _ := json.Marshal(&got)
	assert.JSONEq(t, string(wantJSON), string(gotJSON))

	assert.Equal(t, 1.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomePatched)))
	for _, part := range report.Injected {
		assert.Equal(t, 1.0, testutil.ToFloat64(h.m.injections.WithLabelValues(part)), part)
	}

	// Reinvocation with the patched pod: allowed, nothing to add.
	out = decodeResponse(t, post(h, "application/json", review("uid-2", "CREATE", "Pod", string(patched))))
	assert.True(t, out.Response.Allowed)
	assert.Nil(t, out.Response.Patch)
	assert.Equal(t, 1.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomeUnchanged)))
}

func TestDeniedNamesAnnotation(t *testing.T) {
	h, _ := newTestHandler(t)
	pod := strings.Replace(optedInPod, `"labels"`, `"annotations":{"podmeta.io/ambassador-port":"0","podmeta.io/colour":"red"},"labels"`, 1)
	out := decodeResponse(t, post(h, "application/json", review("uid-3", "CREATE", "Pod", pod)))
	r := out.Response
	assert.Equal(t, "uid-3", string(r.UID))
	assert.False(t, r.Allowed)
	assert.Nil(t, r.Patch)
	require.NotNil(t, r.Result)
	assert.Equal(t, int32(400), r.Result.Code)
	assert.Equal(t, "Failure", r.Result.Status)
	assert.Equal(t, "BadRequest", string(r.Result.Reason))
	assert.Equal(t, `podmeta: annotation podmeta.io/ambassador-port: invalid value "0": want a port number 1-65534 (port+1 is the health port); `+
		`annotation podmeta.io/colour: unknown podmeta annotation (known: podmeta.io/ambassador, podmeta.io/ambassador-allow, podmeta.io/ambassador-policy, `+
		`podmeta.io/ambassador-port, podmeta.io/ambassador-shutdown-delay, podmeta.io/containers, podmeta.io/env, podmeta.io/env-prefix, podmeta.io/mount-path, podmeta.io/native-sidecar, `+
		`podmeta.io/status, podmeta.io/volume)`, r.Result.Message)
	assert.Equal(t, 1.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomeDenied)))
}

func TestSkipsBecomeWarnings(t *testing.T) {
	h, _ := newTestHandler(t)
	pod := `{"metadata":{"name":"w","labels":{"podmeta.io/inject":"true"}},"spec":{"hostNetwork":true,"containers":[` +
		`{"name":"app","image":"a","env":[{"name":"POD_NAME","value":"mine"}],"volumeMounts":[{"name":"x","mountPath":"/etc/podinfo"}]},` +
		`{"name":"b","image":"b"}]}}`
	out := decodeResponse(t, post(h, "application/json", review("uid-4", "CREATE", "Pod", pod)))
	assert.True(t, out.Response.Allowed)
	assert.NotNil(t, out.Response.Patch)
	assert.Equal(t, []string{
		"podmeta: skipped ambassador podmeta-ambassador: host network",
		"podmeta: skipped mount /etc/podinfo in container app: mount path in use (volume x)",
		"podmeta: skipped env POD_NAME in container app: user-defined",
	}, out.Response.Warnings)
	assert.Equal(t, 1.0, testutil.ToFloat64(h.m.skips.WithLabelValues("env", mutate.ReasonUserDefined)))
	assert.Equal(t, 1.0, testutil.ToFloat64(h.m.skips.WithLabelValues("ambassador", mutate.ReasonHostNetwork)))
}

func TestWarningsAreCapped(t *testing.T) {
	var skips []mutate.Skip
	for range 25 {
		skips = append(skips, mutate.Skip{What: "env", Container: "c", Name: "N", Reason: mutate.ReasonUserDefined})
	}
	w := warnings(skips)
	require.Len(t, w, maxWarnings)
	assert.Equal(t, "podmeta: 16 more skips, see annotation podmeta.io/status", w[maxWarnings-1])
	assert.Len(t, warnings(skips[:maxWarnings]), maxWarnings)
	assert.Nil(t, warnings(nil))
}

// TestDryRunIdentical: no side effects, so a dry run gets the same answer.
func TestDryRunIdentical(t *testing.T) {
	h, _ := newTestHandler(t)
	wet := post(h, "application/json", review("u", "CREATE", "Pod", optedInPod))
	dry := post(h, "application/json", strings.Replace(review("u", "CREATE", "Pod", optedInPod), `"operation"`, `"dryRun":true,"operation"`, 1))
	require.Equal(t, http.StatusOK, dry.Code)
	assert.Equal(t, wet.Body.String(), dry.Body.String())
}

// TestPanicBecomes500: a bug answers 500 and is logged with its stack,
// whether the review runs on the request's goroutine or on a MaxInFlight
// worker (where an unrecovered panic would kill the process), and the
// handler keeps serving.
func TestPanicBecomes500(t *testing.T) {
	for name, opts := range map[string][]Option{"inline": nil, "worker": {MaxInFlight(1)}} {
		t.Run(name, func(t *testing.T) {
			var logs bytes.Buffer
			hh, err := NewHandler(mutate.DefaultConfig(), slog.New(slog.NewJSONHandler(&logs, nil)), prometheus.NewRegistry(), opts...)
			require.NoError(t, err)
			h := hh.(*handler)
			h.mutate = func(*corev1.Pod, mutate.Config) (*corev1.Pod, mutate.Report, error) { panic("boom") }
			for range 2 {
				rec := post(h, "application/json", review("u", "CREATE", "Pod", optedInPod))
				assert.Equal(t, http.StatusInternalServerError, rec.Code)
				assert.Equal(t, "podmeta: internal error: boom\n", rec.Body.String())
			}
			assert.Equal(t, 2.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomeServerError)))
			assert.Contains(t, logs.String(), `"msg":"panic serving admission review","panic":"boom","stack":"goroutine`)
			assert.Contains(t, logs.String(), "TestPanicBecomes500", "the stack is the panic's")

			h.mutate = mutate.Pod
			rec := post(h, "application/json", review("u", "CREATE", "Pod", optedInPod))
			assert.Equal(t, http.StatusOK, rec.Code)
		})
	}
}

func TestNewHandler(t *testing.T) {
	bad := mutate.DefaultConfig()
	bad.Ambassador.Port = 0
	_, err := NewHandler(bad, nil, nil)
	assert.ErrorContains(t, err, "config ambassador.port")

	reg := prometheus.NewRegistry()
	_, err = NewHandler(mutate.DefaultConfig(), nil, reg)
	require.NoError(t, err)
	_, err = NewHandler(mutate.DefaultConfig(), nil, reg)
	assert.ErrorContains(t, err, "register metrics", "a second handler on the same registry")

	h, err := NewHandler(mutate.DefaultConfig(), nil, nil)
	require.NoError(t, err)
	rec := post(h, "application/json", review("u", "CREATE", "Pod", optedInPod))
	assert.Equal(t, http.StatusOK, rec.Code)
}

// TestLogs: at info, a denial is one JSON line and an injection none (the
// pod's status annotation and the metrics record those; a line per pod
// creation costs a write on the hot path); at debug, every decision is a
// line.
func TestLogs(t *testing.T) {
	lines := func(level slog.Level, pod string) []map[string]any {
		var buf bytes.Buffer
		h, err := NewHandler(mutate.DefaultConfig(), slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: level})), nil)
		require.NoError(t, err)
		post(h, "application/json", review("uid-log", "CREATE", "Pod", pod))
		var out []map[string]any
		for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
			if len(l) == 0 {
				continue
			}
			var line map[string]any
			require.NoError(t, json.Unmarshal(l, &line), string(l))
			out = append(out, line)
		}
		return out
	}
	assert.Empty(t, lines(slog.LevelInfo, optedInPod))

	debug := lines(slog.LevelDebug, optedInPod)
	require.Len(t, debug, 2)
	assert.Equal(t, "admission review", debug[1]["msg"])
	assert.Equal(t, OutcomePatched, debug[1]["outcome"])
	assert.Equal(t, "pod injected", debug[0]["msg"])
	assert.Equal(t, "uid-log", debug[0]["uid"])
	assert.Equal(t, "web", debug[0]["name"])

	denied := lines(slog.LevelInfo, `{"metadata":{"name":"bad","labels":{"podmeta.io/inject":"true"},"annotations":{"podmeta.io/env":"maybe"}},"spec":{"containers":[{"name":"app"}]}}`)
	require.Len(t, denied, 1)
	assert.Equal(t, "pod denied", denied[0]["msg"])
	assert.Equal(t, "bad", denied[0]["name"])
	assert.Contains(t, denied[0]["error"], "podmeta.io/env")
}

// TestConcurrentReviews: the handler and the config it shares are safe for
// concurrent use (run with -race), and every answer is for its own request.
// Reviews of two pods of different shapes, concurrently and alternated,
// through one handler: its pooled buffers and operation slices carry
// nothing from one review to the next.
func TestConcurrentReviews(t *testing.T) {
	const otherPod = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"big","namespace":"default","labels":{"podmeta.io/inject":"true","app":"x"}},` +
		`"spec":{"initContainers":[{"name":"init","image":"i","env":[{"name":"A","value":"1"}]}],"containers":[{"name":"a","image":"a","env":[{"name":"B","value":"2"},{"name":"C","value":"3"}]},` +
		`{"name":"b","image":"b","volumeMounts":[{"name":"data","mountPath":"/data"}]},{"name":"c","image":"c"}],"volumes":[{"name":"data","emptyDir":{}}]}}`
	h, _ := newTestHandler(t)
	want := decodeResponse(t, post(h, "application/json", review("w", "CREATE", "Pod", optedInPod))).Response.Patch
	fresh, _ := newTestHandler(t)
	wantOther := decodeResponse(t, post(fresh, "application/json", review("w", "CREATE", "Pod", otherPod))).Response.Patch
	require.NotEqual(t, string(want), string(wantOther))
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				uid := fmt.Sprintf("uid-%d-%d", w, i)
				pod, patch := optedInPod, want
				if (w+i)%2 == 1 {
					pod, patch = otherPod, wantOther
				}
				rec := post(h, "application/json", review(uid, "CREATE", "Pod", pod))
				var out admissionv1.AdmissionReview
				if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
					errs <- fmt.Sprintf("%s: %d %s", uid, rec.Code, rec.Body.String())
					return
				}
				if string(out.Response.UID) != uid || !bytes.Equal(out.Response.Patch, patch) {
					errs <- fmt.Sprintf("%s: got uid %s, same patch %v", uid, out.Response.UID, bytes.Equal(out.Response.Patch, patch))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	assert.Equal(t, 201.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomePatched)))
}

// TestRealisticReview: a review shaped like what kube-apiserver sends for a
// Deployment's pod (after the ServiceAccount plugin, with managedFields,
// userInfo, options, oldObject null).
func TestRealisticReview(t *testing.T) {
	raw, err := os.ReadFile("testdata/review-deployment-pod.json")
	require.NoError(t, err)
	h, _ := newTestHandler(t)
	out := decodeResponse(t, post(h, "application/json", string(raw)))
	r := out.Response
	assert.Equal(t, "705ab4f5-6393-11e8-b7cc-42010a800002", string(r.UID))
	assert.True(t, r.Allowed)
	assert.Empty(t, r.Warnings)

	var in admissionv1.AdmissionReview
	require.NoError(t, json.Unmarshal(raw, &in))
	p, err := jsonpatch.DecodePatch(r.Patch)
	require.NoError(t, err)
	patched, err := p.Apply(in.Request.Object.Raw)
	require.NoError(t, err)
	var pod corev1.Pod
	require.NoError(t, json.Unmarshal(patched, &pod))

	// The sidecar is first, with the canonical allow rule and its own token
	// volume; the app keeps its token mount and gets no second one.
	require.Len(t, pod.Spec.InitContainers, 1)
	amb := pod.Spec.InitContainers[0]
	assert.Equal(t, mutate.AmbassadorName, amb.Name)
	assert.Equal(t, []string{"--listen=127.0.0.1:8001", "--health-listen=:8002", "--policy=allow-list",
		"--allow=GET /api/v1/namespaces/shop/configmaps/**"}, amb.Args)
	web := pod.Spec.Containers[0]
	assert.Equal(t, "POD_NAME", web.Env[0].Name)
	assert.Equal(t, "GREETING", web.Env[len(web.Env)-1].Name, "the user's variable stays last, after what it references")
	assert.Equal(t, []string{"kube-api-access-x7k2p", "podmeta"}, []string{web.VolumeMounts[0].Name, web.VolumeMounts[1].Name})
	var vols []string
	for _, v := range pod.Spec.Volumes {
		vols = append(vols, v.Name)
	}
	assert.Equal(t, []string{"kube-api-access-x7k2p", "podmeta", mutate.APIAccessVolumeName}, vols)
	// managedFields and the rest of the metadata are untouched.
	assert.Len(t, pod.ManagedFields, 1)
	assert.Equal(t, "web-6d4cf56db6-", pod.GenerateName)
	assert.Contains(t, pod.Annotations[mutate.AnnotationStatus], `"injected":["env","volume","ambassador"]`)
}
