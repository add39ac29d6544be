package mutate_test

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	gomodpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/mutate"
	"github.com/podmeta/podmeta/patch"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// unknownField is added to the raw JSON of every object the patch must not
// rewrite; a field our k8s.io/api does not know has to survive the patch.
const unknownField = "x-podmeta-future-field"

// TestGolden runs every testdata/<case>.pod.yaml through mutate.Pod and
// compares with <case>.golden.yaml (the mutated pod) and <case>.patch.json
// (the webhook's patch), or <case>.golden.err (the expected error). An optional <case>.config.yaml is merged onto
// DefaultConfig. For every successful case it also checks the invariants
// the webhook relies on: input untouched, idempotence, add-only patch that
// reproduces the mutated pod from the raw request and keeps unknown fields.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.pod.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, inputs)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".pod.yaml")
		t.Run(name, func(t *testing.T) {
			base := filepath.Join("testdata", name)
			cfg := mutate.DefaultConfig()
			if b, err := os.ReadFile(base + ".config.yaml"); err == nil {
				cfg, err = mutate.ParseConfig(b)
				require.NoError(t, err)
			}
			rawYAML, err := os.ReadFile(in)
			require.NoError(t, err)
			raw, err := yaml.YAMLToJSON(rawYAML)
			require.NoError(t, err)
			pod := decodePod(t, raw)
			before := mustJSON(t, pod)

			mutated, report, err := mutate.Pod(pod, cfg)
			assert.JSONEq(t, string(before), string(mustJSON(t, pod)), "mutate.Pod modified its input")
			if err != nil {
				checkGolden(t, base+".golden.err", []byte(err.Error()+"\n"))
				assert.NoFileExists(t, base+".golden.yaml")
				return
			}
			assert.NoFileExists(t, base+".golden.err")
			out, err := yaml.Marshal(mutated)
			require.NoError(t, err)
			checkGolden(t, base+".golden.yaml", out)

			if !report.OptedIn {
				assert.Same(t, pod, mutated, "a pod that did not opt in is returned as is")
			} else {
				assert.Equal(t, report.Status(), mutated.Annotations[mutate.AnnotationStatus])
			}

			// Idempotent: a second pass changes nothing and says the same.
			again, report2, err := mutate.Pod(mutated, cfg)
			require.NoError(t, err)
			assert.Same(t, mutated, again, "second pass changed the pod")
			assert.False(t, report2.Changed)
			assert.Equal(t, report.Injected, report2.Injected)
			assert.Equal(t, report.Skips, report2.Skips)
			ops2, err := patch.Pod(mutated, again)
			require.NoError(t, err)
			assert.Empty(t, ops2, "second pass produced a patch")

			checkPatch(t, base, raw, pod, mutated)
		})
	}
}

// checkPatch applies the add-only patch to the raw request (with unknown
// fields added) and requires exactly the mutated pod plus those fields.
func checkPatch(t *testing.T, base string, raw []byte, pod, mutated *corev1.Pod) {
	t.Helper()
	ops, err := patch.Pod(pod, mutated)
	require.NoError(t, err)
	for _, op := range ops {
		assert.Equal(t, "add", op.Op, "op at %s", op.Path)
	}
	p := marshalPatch(t, ops)
	if ops == nil {
		ops = []patch.Operation{}
	}
	pretty, err := json.MarshalIndent(ops, "", "  ")
	require.NoError(t, err)
	checkGolden(t, base+".patch.json", append(pretty, '\n'))
	decoded, err := jsonpatch.DecodePatch(p)
	require.NoError(t, err)

	withUnknown := addUnknownFields(t, raw)
	patched, err := decoded.Apply(withUnknown)
	require.NoError(t, err, "patch: %s", p)

	// Decoding the result gives exactly the mutated pod.
	got := decodePod(t, patched)
	assert.JSONEq(t, string(mustJSON(t, mutated)), string(mustJSON(t, got)))

	// And every unknown field is still where it was.
	var doc map[string]any
	require.NoError(t, json.Unmarshal(patched, &doc))
	assert.Equal(t, "metadata", doc["metadata"].(map[string]any)[unknownField])
	assert.Equal(t, "spec", doc["spec"].(map[string]any)[unknownField])
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := doc["spec"].(map[string]any)[list].([]any)
		for _, c := range cs {
			c := c.(map[string]any)
			if c["name"] == mutate.AmbassadorName && c[unknownField] == nil {
				continue // injected by us
			}
			assert.Equal(t, c["name"], c[unknownField], "%s %v lost its unknown field", list, c["name"])
		}
	}

	// Cross-check with a generic diff of the re-encoded pods: both must
	// describe the same change (the generic one by replace/remove ops that
	// would lose unknown fields, which is why the webhook does not use it).
	generic, err := gomodpatch.CreatePatch(mustJSON(t, pod), mustJSON(t, mutated))
	require.NoError(t, err)
	gp, err := json.Marshal(generic)
	require.NoError(t, err)
	gdecoded, err := jsonpatch.DecodePatch(gp)
	require.NoError(t, err)
	viaGeneric, err := gdecoded.Apply(mustJSON(t, pod))
	require.NoError(t, err)
	viaOurs, err := decoded.Apply(raw)
	require.NoError(t, err)
	assert.JSONEq(t, string(mustJSON(t, decodePod(t, viaGeneric))), string(mustJSON(t, decodePod(t, viaOurs))))
}

// addUnknownFields puts unknownField into metadata, spec and every container.
func addUnknownFields(t *testing.T, raw []byte) []byte {
	t.Helper()
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	doc["metadata"].(map[string]any)[unknownField] = "metadata"
	spec := doc["spec"].(map[string]any)
	spec[unknownField] = "spec"
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := spec[list].([]any)
		for _, c := range cs {
			c := c.(map[string]any)
			c[unknownField] = c["name"]
		}
	}
	b, err := json.Marshal(doc)
	require.NoError(t, err)
	return b
}

func decodePod(t *testing.T, raw []byte) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	require.NoError(t, json.Unmarshal(raw, &pod))
	return &pod
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file; run go test ./mutate -update")
	assert.Equal(t, string(want), string(got), "%s differs; run go test ./mutate -update and review the diff", path)
}

// marshalPatch encodes ops as the webhook does (patch.Marshal) and holds it
// to encoding/json's bytes, so every golden and fuzzed pod also checks the
// hand-written encoder.
func marshalPatch(t testing.TB, ops []patch.Operation) []byte {
	t.Helper()
	p, err := patch.Marshal(ops)
	if err != nil {
		t.Fatalf("patch.Marshal: %v", err)
	}
	want, err := json.Marshal(ops)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	if len(ops) == 0 {
		want = []byte("[]") // a patch document, where encoding/json writes null for nil
	}
	if string(p) != string(want) {
		t.Fatalf("patch.Marshal differs from encoding/json:\n got: %s\nwant: %s", p, want)
	}
	return p
}
