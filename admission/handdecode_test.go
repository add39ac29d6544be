package admission

import (
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unsafe"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// handDecodeSeeds are reviews whose pods have every member the hand
// decoders name, in the shapes they must take or refuse: null, escapes,
// the wrong type, numbers that are no int32, duplicates, members they
// leave to jsonv2 (other env sources, a container's restart policy) and
// members no type has.
var handDecodeSeeds = []string{
	review("u", "CREATE", "Pod", optedInPod),
	review("u", "CREATE", "Pod", `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","generateName":"a-","namespace":"n","uid":"1","labels":{"x":"y","z":null},"annotations":{},"resourceVersion":"7","generation":2,"creationTimestamp":"2026-11-28T04:00:00Z","finalizers":["f"],"ownerReferences":[{"apiVersion":"v1","kind":"K","name":"o","uid":"2"}]},`+
		`"spec":{"restartPolicy":"Always","dnsPolicy":"ClusterFirst","serviceAccountName":"sa","nodeName":"n1","schedulerName":"s","terminationGracePeriodSeconds":30,"hostNetwork":true,"volumes":[{"name":"v","emptyDir":{}}],`+
		`"initContainers":[{"name":"i","restartPolicy":"Always","image":"img","command":["sh","-c"],"args":[],"workingDir":"/w","stdin":true}],`+
		`"containers":[{"name":"a","image":"img","imagePullPolicy":"IfNotPresent","terminationMessagePath":"/t","terminationMessagePolicy":"File","ports":[{"name":"http","containerPort":8080,"protocol":"TCP","hostPort":80,"hostIP":"1.2.3.4"}],`+
		`"volumeMounts":[{"name":"v","mountPath":"/v","readOnly":true,"subPath":"s","subPathExpr":"$(X)","mountPropagation":"None","recursiveReadOnly":"Disabled"}],"volumeDevices":[{"name":"d","devicePath":"/dev/d"}],`+
		`"resources":{"requests":{"cpu":"100m","memory":"1Gi","nvidia.com/gpu":"1"},"limits":{"cpu":"1"},"claims":[{"name":"c"}]},"envFrom":[{"configMapRef":{"name":"c"}}],`+
		`"livenessProbe":{"httpGet":{"port":8080}},"securityContext":{"privileged":false},`+
		`"env":[{"name":"A","value":"x"},{"name":"B","valueFrom":{"configMapKeyRef":{"name":"c","key":"k","optional":true}}},{"name":"C","valueFrom":{"secretKeyRef":{"name":"s","key":"k","optional":null}}},`+
		`{"name":"D","valueFrom":{"fieldRef":{"apiVersion":"v1","fieldPath":"metadata.name"}}},{"name":"E","valueFrom":{"resourceFieldRef":{"containerName":"a","resource":"limits.cpu","divisor":"1m"}}},`+
		`{"name":"F","valueFrom":{"fileKeyRef":{"volumeName":"v","path":"p","key":"k"}}},{"name":"G","value":null,"valueFrom":null},{"name":"H","future":1}]}]},"status":{"phase":"Pending"}}`),
	review("u", "CREATE", "Pod", `{"metadata":null,"spec":{"containers":null,"initContainers":[],"volumes":null}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":null,"annotations":null},"spec":{"containers":[null,{"name":null,"env":null,"ports":null,"volumeMounts":null,"command":null,"resources":null}]}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"na\u006de":"a\u00e9\n","labels":{"k\"":"v\\"}},"spec":{"containers":[{"name":"\ud83d\ude00","env":[{"n\u0061me":"X","value":"\u0041"}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":-1},{"containerPort":2147483647}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":2147483648}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":80.0}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":1e3}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":"80"}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","volumeMounts":[{"name":"v","readOnly":"true"}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","env":[{"name":1}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","env":{"name":"x"}}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","name":"b"}]}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"a":"1","a":"2"}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"a":1}}}`),
	review("u", "CREATE", "Pod", "{\"metadata\":{\"name\":\"\xff\"}}"),
	review("u", "UPDATE", "Deployment", `{"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"a"}]}}}}`),
	review("u", "CREATE", "Pod", `null`),
	review("u", "CREATE", "Pod", `[]`),
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null,"response":{"uid":"x"}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod","extra":1},"requestKind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"requestResource":{"group":"","version":"v1","resource":"pods"},"requestSubResource":"","subResource":"","name":"p","namespace":"n","operation":"CREATE","userInfo":{"username":"u","groups":["g"]},"dryRun":true,"options":{"kind":"CreateOptions"},"oldObject":null,"object":{}}}`,
	`{"kind":"AdmissionReview","kind":"AdmissionReview"}`,
	`[]`,
	// The scanner's own validation (scan.go) against jsontext's: names
	// equal once unescaped, objects with more names than it compares one
	// by one, the grammar around separators and numbers, strings, UTF-8,
	// whitespace, and the nesting limit counted over the whole document.
	review("u", "CREATE", "Pod", `{"metadata":{"name":"a","n\u0061me":"b"}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"k1":"","k2":"","k3":"","k4":"","k5":"","k6":"","k7":"","k8":"","k9":"","k10":"","k11":"","k12":"","k13":"","k14":"","k15":"","k16":"","k17":"","k18":""}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"k1":"","k2":"","k3":"","k4":"","k5":"","k6":"","k7":"","k8":"","k9":"","k10":"","k11":"","k12":"","k13":"","k14":"","k15":"","k16":"","k17":"","k2":""}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"k1":"","k2":"","k3":"","k4":"","k5":"","k6":"","k7":"","k8":"","k9":"","k10":"","k11":"","k12":"","k13":"","k14":"","k15":"","k16":"","k17":"","k18":"","k17":""}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"a":"1",}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"a":"1" "b":"2"}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{"a" "1"}}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"labels":{,"a":"1"}}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a"},]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[,{"name":"a"}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a"} {"name":"b"}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":01}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":-0}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":-}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":+1}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":1.}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":1e}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","ports":[{"containerPort":80x}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"hostNetwork":tru,"containers":[]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"hostNetwork":truex,"containers":[]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"containers":[{"name":"a","volumeMounts":[{"name":"v","readOnly":nul}]}]}}`),
	review("u", "CREATE", "Pod", `{"spec":{"priority":1.5e+3,"overhead":{"cpu":"1"},"containers":[{"name":"a","stdin":false}]}}`),
	review("u", "CREATE", "Pod", "{\"metadata\":{\"name\":\"a\tb\"}}"),
	review("u", "CREATE", "Pod", "{\"metadata\":{\"name\":\"a\x7fb\"}}"),
	review("u", "CREATE", "Pod", "{\"metadata\":{\"labels\":{\"\xc3\":\"v\"}}}"),
	review("u", "CREATE", "Pod", "{\"metadata\":{\"name\":\"\xed\xa0\x80\"}}"),
	review("u", "CREATE", "Pod", "{\"metadata\":{\"name\":\"\xef\xbf\xbd\xf0\x9f\x98\x80\"}}"),
	review("u", "CREATE", "Pod", "{\"spec\":{\"affinity\":{\"x\":\"\xff\"}}}"),
	review("u", "CREATE", "Pod", `{"metadata":{"name":"\ud800"}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"name":"\ud83d\ude00\u00e9\/\b\f\n\r\t"}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"name":"\x"}}`),
	review("u", "CREATE", "Pod", `{"metadata":{"name":"\u12"}}`),
	review("u", "CREATE", "Pod", `{"spec":{"affinity":{"a":"\"}","b":"\\"}}}`),
	review("u", "CREATE", "Pod", `{"spec":{"affinity":{"a":"x","a":"y"}}}`),
	review("u", "CREATE", "Pod", `{"spec":{"tolerations":[{"key":"k"},]}}`),
	review("u", "CREATE", "Pod", "\t{ \"metadata\" :\r\n{ \"name\" : \"a\" , \"labels\" : { } } , \"spec\" : { \"containers\" : [ ] } }\n"),
	review("u", "CREATE", "Pod", `{"metadata":{}}x`),
	review("u", "CREATE", "Pod", "\ufeff{}"),
	review("u", "CREATE", "Pod", `{"spec":{"unknownMember":`+strings.Repeat(`[`, 9996)+strings.Repeat(`]`, 9996)+`}}`),
	review("u", "CREATE", "Pod", `{"spec":{"unknownMember":`+strings.Repeat(`[`, 9997)+strings.Repeat(`]`, 9997)+`}}`),
	review("u", "CREATE", "Pod", `{"spec":{"unknownMember":`+strings.Repeat(`{"a":`, 9997)+`1`+strings.Repeat(`}`, 9997)+`}}`),
	`{"kind":"AdmissionReview"}  `,
	`{"kind":"AdmissionReview"}}`,
	`{"kind":"AdmissionReview"`,
	` `,
	`{"kind":"Adm`,
	`{"request":{"uid":"u","dryRun":true,"options":{"a":[1,{"b":[]}]}}}`,
	``,
}

// FuzzHandDecode: for any body, the fast path with its hand decoders gives
// exactly the review jsonv2 gives with unread alone, and refuses exactly
// what that refuses.
//
// Longer run: go test ./admission -run '^$' -fuzz FuzzHandDecode -fuzztime 10m
func FuzzHandDecode(f *testing.F) {
	for _, s := range handDecodeSeeds {
		f.Add([]byte(s))
	}
	for _, b := range realPodReviews(f) {
		f.Add(b)
	}
	reference := jsonv2.WithUnmarshalers(unread)
	f.Fuzz(func(t *testing.T, body []byte) {
		var want podReview
		got, gotErr := decodeFast(body)
		wantErr := jsonv2.Unmarshal(body, &want, reference)
		if wantErr != nil || gotErr != nil {
			require.Equal(t, wantErr != nil, gotErr != nil, "hand decoders: %v\njsonv2: %v", gotErr, wantErr)
			return
		}
		require.Equal(t, want, *got)
	})
}

// realPodReviews are reviews of the mutate golden pods and of the
// realistic review's pod.
func realPodReviews(t testing.TB) [][]byte {
	inputs, err := filepath.Glob("../mutate/testdata/*.pod.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, inputs)
	var out [][]byte
	for _, in := range inputs {
		y, err := os.ReadFile(in)
		require.NoError(t, err)
		obj, err := yaml.YAMLToJSON(y)
		require.NoError(t, err)
		out = append(out, []byte(review("u", "CREATE", "Pod", string(obj))))
	}
	realistic, err := os.ReadFile("testdata/review-deployment-pod.json")
	require.NoError(t, err)
	return append(out, realistic)
}

// The seeds take the hand decoders' paths: the fast path accepts the
// realistic ones (a refusal would send them to the slow general path).
func TestHandDecodeAcceptsRealReviews(t *testing.T) {
	for _, b := range append(realPodReviews(t), []byte(handDecodeSeeds[0]), []byte(handDecodeSeeds[1])) {
		r, err := decodeFast(b)
		require.NoError(t, err, "%s", b)
		require.NotNil(t, r.Request)
		require.NotNil(t, r.Request.Object)
	}
}

// Every field of the types with hand decoders is in their field index (so
// a member the hand decoder does not name still decodes), at its path; of
// two fields with one name, the shallower wins.
func TestFieldIndex(t *testing.T) {
	for _, tc := range []struct {
		typ reflect.Type
		idx fieldIndex
	}{
		{reflect.TypeFor[corev1.Pod](), podFields},
		{reflect.TypeFor[corev1.PodSpec](), specFields},
		{reflect.TypeFor[corev1.Container](), containerFields},
		{reflect.TypeFor[corev1.EnvVar](), envFields},
		{reflect.TypeFor[corev1.EnvVarSource](), sourceFields},
		{reflect.TypeFor[corev1.VolumeMount](), mountFields},
		{reflect.TypeFor[corev1.ContainerPort](), portFields},
		{reflect.TypeFor[corev1.ConfigMapKeySelector](), configMapKeyFields},
		{reflect.TypeFor[corev1.Volume](), volumeFields},
		{reflect.TypeFor[authenticationv1.UserInfo](), userFields},
		{reflect.TypeFor[podReview](), reviewFields},
		{reflect.TypeFor[metav1.ObjectMeta](), metaFields},
		{reflect.TypeFor[metav1.GroupVersionKind](), gvkFields},
		{reflect.TypeFor[metav1.GroupVersionResource](), gvrFields},
		{reflect.TypeFor[corev1.SecretKeySelector](), secretKeyFields},
		{reflect.TypeFor[corev1.ObjectFieldSelector](), fieldRefFields},
	} {
		n := 0
		for _, f := range reflect.VisibleFields(tc.typ) {
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); f.Anonymous && name == "" || !inlined(tc.typ, f.Index) {
				continue // inlined, or promoted from a member
			}
			n++
			found := false
			for _, idx := range tc.idx {
				if reflect.DeepEqual(idx.index, f.Index) {
					found = true
				}
			}
			assert.True(t, found, "%v.%s", tc.typ, f.Name)
		}
		assert.Len(t, tc.idx, n, "%v", tc.typ)
	}
	assert.Equal(t, []int{0, 1}, podFields["apiVersion"].index, "TypeMeta is inlined")
	assert.Equal(t, []int{1, 18}, volumeFields["configMap"].index, "VolumeSource is inlined")
	// Unread types are skipped right there.
	assert.True(t, podFields["status"].skip)
	assert.True(t, metaFields["ownerReferences"].skip)
	assert.True(t, containerFields["livenessProbe"].skip)
	assert.False(t, containerFields["envFrom"].skip)
	assert.Equal(t, []int{1}, requestFields["object"].index, "podRequest.Object shadows AdmissionRequest.Object")
	// jsonv2's rules for fields of one name.
	type in1 struct{ A, Z, W int }
	type in2 struct {
		Z int `json:"Z"`
		W int
	}
	type ties struct {
		in1
		in2
		A int // shallower than in1.A: wins
		D int `json:"-"`
	}
	tf := fieldsOf[ties]()
	assert.Equal(t, []int{2}, tf["A"].index)
	assert.Equal(t, []int{1, 0}, tf["Z"].index, "at one depth, the tagged one")
	assert.NotContains(t, tf, "W", "two at one depth, neither tagged: neither")
	assert.NotContains(t, tf, "D")
	assert.Len(t, tf, 2, "what jsonv2 decodes into ties: A and Z")
	assert.Equal(t, []int{0, 0}, requestFields["uid"].index)
	assert.Equal(t, []int{1}, configMapKeyFields["key"].index)
	assert.Equal(t, []int{0, 0}, configMapKeyFields["name"].index, "LocalObjectReference is inlined")
}

// inlined: the field at index is a JSON member of t: every embedded struct
// on the way has no JSON name of its own.
func inlined(t reflect.Type, index []int) bool {
	for i := range len(index) - 1 {
		f := t.FieldByIndex(index[:i+1])
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" {
			return false
		}
	}
	return true
}

// intern returns the string of its bytes, the same string (no new
// allocation) for short strings seen before, whatever other strings
// share the slot, from any number of goroutines.
func TestIntern(t *testing.T) {
	words := make([][]byte, 5000) // more than the table's slots: collisions
	for i := range words {
		words[i] = []byte(fmt.Sprintf("value-%d", i))
	}
	long := []byte(strings.Repeat("x", maxInterned+1))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20000 {
				w := words[(i*7+g)%len(words)]
				if got := intern(w); got != string(w) {
					t.Errorf("intern(%q) = %q", w, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, "", intern(nil))
	assert.Equal(t, string(long), intern(long))

	b := []byte("IfNotPresent")
	first := intern(b)
	b[0] = 'X' // the string must not share the caller's bytes
	assert.Equal(t, "IfNotPresent", first)
	b[0] = 'I'
	assert.Same(t, unsafe.StringData(first), unsafe.StringData(intern(b)), "seen before: the same string")
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = intern(b) }))
	assert.NotSame(t, unsafe.StringData(intern(long)), unsafe.StringData(intern(long)), "long strings are not kept")
}

// parseQuantity gives what resource.ParseQuantity gives, from the table or
// not, and keeps only quantities held in an int64.
func TestParseQuantity(t *testing.T) {
	for _, s := range []string{"500m", "512Mi", "1", "0", "1.5", "100M", "2Ti", "999999Ti", "1e3", "123456789012345678", "0.000000000001", "12345678901234567890123"} {
		want, wantErr := resource.ParseQuantity(s)
		for range 2 { // the second from the table, if kept
			got, err := parseQuantity([]byte(s))
			if wantErr != nil {
				require.Error(t, err, s)
				continue
			}
			require.NoError(t, err, s)
			assert.True(t, want.Equal(got), "%s: %v", s, got)
			assert.Equal(t, want.String(), got.String(), s)
		}
	}
	_, err := parseQuantity([]byte("12x"))
	require.Error(t, err)

	int64Backed := resource.MustParse("500m")
	assert.True(t, isInt64Quantity(&int64Backed))
	decBacked := resource.MustParse("0.000000000001")
	assert.False(t, isInt64Quantity(&decBacked), "a quantity below nano scale is an inf.Dec")
	slot := &quantityTable[maphash.Bytes(internSeed, []byte("0.000000000001"))%uint64(len(quantityTable))]
	if p := slot.Load(); p != nil {
		assert.NotEqual(t, "0.000000000001", p.raw, "an inf.Dec quantity was kept")
	}
}

// isInt64Quantity reads Quantity's private layout: it must still be the
// one whose only reference is d.Dec (an *inf.Dec), or a kept copy could
// share something else mutable. Fails when apimachinery changes it.
func TestQuantityLayout(t *testing.T) {
	var refs []string
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		switch typ.Kind() {
		case reflect.Struct:
			for i := range typ.NumField() {
				walk(typ.Field(i).Type, path+"."+typ.Field(i).Name)
			}
		case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface, reflect.UnsafePointer:
			refs = append(refs, path+" "+typ.String())
		}
	}
	walk(reflect.TypeFor[resource.Quantity](), "Quantity")
	assert.Equal(t, []string{"Quantity.d.Dec *inf.Dec"}, refs)
}
