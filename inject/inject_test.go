package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/mutate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden runs every testdata/<case>.yaml through Manifests and compares
// with <case>.golden.yaml, then checks the properties every output must
// have, golden or not.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	require.NoError(t, err)
	cfg := mutate.DefaultConfig()
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden.yaml") {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(in)
			require.NoError(t, err)
			out, res, err := Manifests(input, cfg)
			require.NoError(t, err)
			assert.Positive(t, res.Injected)

			golden := strings.TrimSuffix(in, ".yaml") + ".golden.yaml"
			if *update {
				require.NoError(t, os.WriteFile(golden, out, 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(out), "run go test ./inject -update to accept")

			// Idempotent: injecting the output again changes nothing at all.
			again, res2, err := Manifests(out, cfg)
			require.NoError(t, err)
			assert.Equal(t, string(out), string(again))
			assert.Zero(t, res2.Injected)

			checkDocuments(t, input, out, cfg)
		})
	}
}

// checkDocuments compares input and output document by document: a document
// without an opted-in pod spec is byte-identical, and every pod spec in a
// rewritten one is exactly what mutate.Pod makes of the input's, while the
// rest of the document (fields our API types do not know included) is as
// it was.
func checkDocuments(t *testing.T, input, output []byte, cfg mutate.Config) {
	t.Helper()
	inChunks, err := split(input)
	require.NoError(t, err)
	outChunks, err := split(output)
	require.NoError(t, err)
	require.Len(t, outChunks, len(inChunks))
	for i := range inChunks {
		in, out := inChunks[i], outChunks[i]
		assert.Equal(t, string(in.sep), string(out.sep))
		if !bytes.Contains(in.body, []byte(`podmeta.io/inject: "true"`)) || bytes.Contains(in.body, []byte("example.com/v1")) {
			assert.Equal(t, string(in.body), string(out.body), "chunk %d must pass through", i)
			continue
		}
		var inDoc, outDoc map[string]any
		require.NoError(t, yaml.Unmarshal(in.body, &inDoc))
		require.NoError(t, yaml.Unmarshal(out.body, &outDoc))
		targets := findTemplates(inDoc, "", "doc")
		require.NotEmpty(t, targets)
		for _, tg := range targets {
			inTmpl := lookup(inDoc, tg.path).(map[string]any)
			outTmpl := lookup(outDoc, tg.path).(map[string]any)
			var inPod, outPod corev1.Pod
			require.NoError(t, roundTrip(inTmpl, &inPod))
			require.NoError(t, roundTrip(outTmpl, &outPod))
			want, _, err := mutate.Pod(&inPod, cfg)
			require.NoError(t, err)
			assert.JSONEq(t, mustJSON(t, want), mustJSON(t, &outPod), "%s", tg.where)
			// Blank the pod spec out of both: what is left must be equal.
			setAt(inDoc, tg.path, nil)
			setAt(outDoc, tg.path, nil)
		}
		assert.Equal(t, inDoc, outDoc, "outside the pod specs nothing changes")
	}
}

func roundTrip(v any, into any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, into)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func setAt(doc map[string]any, path string, v any) {
	i := strings.LastIndex(path, "/")
	if i < 0 {
		for k := range doc {
			delete(doc, k)
		}
		return
	}
	switch parent := lookup(doc, path[:i]).(type) {
	case map[string]any:
		parent[path[i+1:]] = v
	case []any:
		n, _ := strconv.Atoi(path[i+1:])
		parent[n] = v
	}
}

func TestUnknownFieldsSurvive(t *testing.T) {
	input, err := os.ReadFile("testdata/workloads.yaml")
	require.NoError(t, err)
	out, _, err := Manifests(input, mutate.DefaultConfig())
	require.NoError(t, err)
	assert.Contains(t, string(out), "futureSpecField: kept")
	assert.Contains(t, string(out), "futureContainerField:\n          also: kept")
	assert.Contains(t, string(out), "big: 12345678901234567890")
}

func TestPassThroughIsByteForByte(t *testing.T) {
	tests := map[string]string{
		"empty":              "",
		"only comments":      "# nothing here\n",
		"no trailing EOL":    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}",
		"CRLF and markers":   "---\r\napiVersion: v1\r\nkind: Pod\r\nmetadata: {name: p}\r\n--- # next\r\nkind: Other\r\n",
		"not opted in":       "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p   # odd   spacing\n  labels: {podmeta.io/inject: \"false\"}\nspec: {containers: [{name: a, image: b}]}\n",
		"scalar document":    "--- \"just a string\"\n",
		"sequence document":  "- a\n- b\n",
		"dashes in a string": "apiVersion: v1\nkind: ConfigMap\ndata:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n----x: y\n",
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			out, res, err := Manifests([]byte(in), mutate.DefaultConfig())
			if name == "scalar document" {
				// content on the marker line is refused, not mangled
				require.ErrorContains(t, err, `line 1: content after the document marker "---" is not supported`)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, in, string(out))
			assert.Zero(t, res.Injected)
		})
	}
}

func TestWarnings(t *testing.T) {
	input, err := os.ReadFile("testdata/skips.yaml")
	require.NoError(t, err)
	_, res, err := Manifests(input, mutate.DefaultConfig())
	require.NoError(t, err)
	assert.Equal(t, 1, res.Injected)
	require.NotEmpty(t, res.Warnings)
	joined := strings.Join(res.Warnings, "\n")
	assert.Contains(t, joined, "document 1 (Pod mine): skipped env POD_NAME in container app: "+mutate.ReasonUserDefined)
	assert.Contains(t, joined, "document 1 (Pod mine): skipped volume podmeta: "+mutate.ReasonUserDefined)
}

func TestErrors(t *testing.T) {
	pod := func(name, annotations string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name +
			"\n  labels: {podmeta.io/inject: \"true\"}\n  annotations: {" + annotations + "}\n" +
			"spec:\n  containers: [{name: app, image: x}]\n"
	}
	deploy := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: team-a}\nspec:\n  template:\n" +
		"    metadata:\n      labels: {podmeta.io/inject: \"true\"}\n      annotations: {podmeta.io/env: maybe}\n" +
		"    spec:\n      containers: [{name: app, image: x}]\n"
	tests := []struct {
		name, input string
		want        []string
	}{
		{
			name:  "bad annotation in a later document",
			input: "# header\n---\n" + pod("ok", "") + "---\n" + "kind: Service\napiVersion: v1\n---\n" + deploy,
			want:  []string{"document 3 (Deployment team-a/web) spec.template: ", "podmeta.io/env", `"maybe"`},
		},
		{
			name:  "unknown podmeta annotation",
			input: pod("typo", "podmeta.io/evn: \"false\""),
			want:  []string{"document 1 (Pod typo): ", "podmeta.io/evn"},
		},
		{
			name:  "bad annotation in a List item",
			input: "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, labels: {podmeta.io/inject: \"true\"}, annotations: {podmeta.io/ambassador-port: \"0\"}}\n  spec: {containers: [{name: a, image: b}]}\n",
			want:  []string{"document 1 item 2 (Pod p): ", "podmeta.io/ambassador-port"},
		},
		{
			name:  "invalid YAML",
			input: pod("ok", "") + "---\nkind: [unclosed\n",
			want:  []string{"document 2: "},
		},
		{
			name:  "pod spec of the wrong shape",
			input: "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {podmeta.io/inject: \"true\"}}\nspec: {containers: notalist}\n",
			want:  []string{"document 1 (Pod p): decode pod spec: "},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := Manifests([]byte(tc.input), mutate.DefaultConfig())
			require.Error(t, err)
			assert.Nil(t, out, "no partial output")
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestSplitKeepsEveryByte(t *testing.T) {
	tests := []struct {
		in   string
		docs int
	}{
		{"", 1},
		{"a: 1\n", 1},
		{"---\na: 1\n", 2},
		{"a: 1\n---\nb: 2\n---\n", 3},
		{"a: 1\n--- # c\nb: 2", 2},
		{"a: |\n  ---\n----\n---x\n", 1},
		{"---\t\n---\r\n", 3},
	}
	for _, tc := range tests {
		chunks, err := split([]byte(tc.in))
		require.NoError(t, err)
		assert.Len(t, chunks, tc.docs, "%q", tc.in)
		var b []byte
		for _, c := range chunks {
			b = append(append(b, c.sep...), c.body...)
		}
		assert.Equal(t, tc.in, string(b))
	}
}

func FuzzManifests(f *testing.F) {
	for _, name := range []string{"pod", "workloads", "list", "skips"} {
		b, err := os.ReadFile("testdata/" + name + ".yaml")
		require.NoError(f, err)
		f.Add(b)
	}
	cfg := mutate.DefaultConfig()
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, err := Manifests(in, cfg)
		if err != nil {
			return
		}
		again, res, err := Manifests(out, cfg)
		if err != nil {
			t.Fatalf("output does not inject again: %v\n%s", err, out)
		}
		if res.Injected != 0 || !bytes.Equal(out, again) {
			t.Fatalf("not idempotent:\n%s\n---- second pass ----\n%s", out, again)
		}
	})
}
