// Package inject applies podmeta's injection to Kubernetes manifests offline,
// the way `istioctl kube-inject` does for Istio: a GitOps pipeline can commit
// the injected YAML instead of relying on the webhook. It uses the same
// mutate.Pod as the webhook, so the opt-in label, the annotations and their
// errors are exactly the webhook's.
//
// Only documents that change are rewritten; every other document, separator
// line and comment is copied through byte for byte. A rewritten document is
// patched with the same additive operations the webhook sends (package patch)
// applied to the document's own JSON, so fields our Kubernetes API version
// does not know survive; its comments and key order do not (it is
// re-serialised with sorted keys, as kubectl does).
package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/mutate"
	"github.com/podmeta/podmeta/patch"
)

// Result summarises an injection run.
type Result struct {
	// Injected counts the pod specs (pods and pod templates) that changed.
	Injected int
	// Warnings has one line per skip (what podmeta left out and why),
	// naming the document and object, for the CLI to print on stderr.
	Warnings []string
}

type groupKind struct{ group, kind string }

// templatePaths maps the workload kinds podmeta knows to the JSON pointer of
// their pod spec ("" for a Pod itself). Matching on the API group too keeps a
// custom resource that happens to be called "Deployment" untouched.
var templatePaths = map[groupKind]string{
	{"", "Pod"}:                   "",
	{"", "PodTemplate"}:           "/template",
	{"", "ReplicationController"}: "/spec/template",
	{"apps", "Deployment"}:        "/spec/template",
	{"apps", "StatefulSet"}:       "/spec/template",
	{"apps", "DaemonSet"}:         "/spec/template",
	{"apps", "ReplicaSet"}:        "/spec/template",
	{"batch", "Job"}:              "/spec/template",
	{"batch", "CronJob"}:          "/spec/jobTemplate/spec/template",
}

// Manifests injects every opted-in pod and pod template in a multi-document
// YAML stream and returns the whole output, or an error naming the document
// at fault and no output at all (so `inject | kubectl apply -f -` never
// applies half a set).
func Manifests(in []byte, cfg mutate.Config) ([]byte, Result, error) {
	var res Result
	chunks, err := split(in)
	if err != nil {
		return nil, res, err
	}
	var out bytes.Buffer
	out.Grow(len(in) + len(in)/2)
	doc := 0
	for _, c := range chunks {
		out.Write(c.sep)
		body, isDoc, err := document(c.body, &doc, cfg, &res)
		if err != nil {
			return nil, res, err
		}
		if !isDoc {
			body = c.body
		}
		out.Write(body)
	}
	return out.Bytes(), res, nil
}

// document injects one document. It returns isDoc false (and no body) for a
// chunk that holds no YAML object worth touching, which is copied verbatim.
func document(body []byte, doc *int, cfg mutate.Config, res *Result) ([]byte, bool, error) {
	js, err := yaml.YAMLToJSON(body)
	if err != nil {
		return nil, false, fmt.Errorf("document %d: %w", *doc+1, err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, false, nil // only comments or blank lines: not a document
	}
	*doc++
	// UseNumber: integers too large for a float64 survive re-encoding.
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if dec.Decode(&obj) != nil {
		return nil, false, nil // a scalar or a list: nothing of ours
	}
	targets := findTemplates(obj, "", fmt.Sprintf("document %d", *doc))
	var ops []patch.Operation
	for _, t := range targets {
		tops, err := injectOne(obj, t, cfg, res)
		if err != nil {
			return nil, false, err
		}
		ops = append(ops, tops...)
	}
	if len(ops) == 0 {
		return nil, false, nil
	}
	raw, err := patch.Marshal(ops)
	if err != nil {
		return nil, false, fmt.Errorf("%s: encode patch: %w", targets[0].where, err)
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		return nil, false, fmt.Errorf("document %d: decode patch: %w", *doc, err)
	}
	patched, err := p.Apply(js)
	if err != nil {
		return nil, false, fmt.Errorf("document %d: apply patch: %w", *doc, err)
	}
	y, err := yaml.JSONToYAML(patched)
	if err != nil {
		return nil, false, fmt.Errorf("document %d: encode YAML: %w", *doc, err)
	}
	return append(leadingComments(body), y...), true, nil
}

// leadingComments returns the comment and blank lines that open body: they
// usually describe the document, so they survive its rewrite.
func leadingComments(body []byte) []byte {
	n := 0
	for n < len(body) {
		end := len(body)
		if i := bytes.IndexByte(body[n:], '\n'); i >= 0 {
			end = n + i + 1
		}
		if t := bytes.TrimSpace(body[n:end]); len(t) > 0 && t[0] != '#' {
			break
		}
		n = end
	}
	return body[:n:n]
}

// target is one pod spec inside a document.
type target struct {
	path  string // JSON pointer of the object holding metadata and spec
	where string // for messages: `document 2 (Deployment team-a/web)`
}

func findTemplates(obj map[string]any, prefix, doc string) []target {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	group := ""
	if i := strings.Index(apiVersion, "/"); i >= 0 {
		group = apiVersion[:i]
	}
	if group == "" && kind == "List" {
		// What `kubectl get -o yaml` prints: inject each item.
		items, _ := obj["items"].([]any)
		var out []target
		for i, it := range items {
			if m, ok := it.(map[string]any); ok {
				out = append(out, findTemplates(m, prefix+"/items/"+strconv.Itoa(i), fmt.Sprintf("%s item %d", doc, i+1))...)
			}
		}
		return out
	}
	path, ok := templatePaths[groupKind{group, kind}]
	if !ok {
		return nil
	}
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	if ns, _ := meta["namespace"].(string); ns != "" {
		name = ns + "/" + name
	}
	where := fmt.Sprintf("%s (%s %s)", doc, kind, name)
	if path != "" {
		where += " " + strings.ReplaceAll(strings.TrimPrefix(path, "/"), "/", ".")
	}
	return []target{{path: prefix + path, where: where}}
}

// injectOne runs mutate.Pod on the pod spec at t.path of the document and
// returns the patch operations, rooted at the document.
func injectOne(doc map[string]any, t target, cfg mutate.Config, res *Result) ([]patch.Operation, error) {
	tmpl, ok := lookup(doc, t.path).(map[string]any)
	if !ok {
		return nil, nil // no template: not ours to complain about
	}
	raw, err := json.Marshal(tmpl)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.where, err)
	}
	// A pod template has the same metadata and spec keys as a Pod, so both
	// decode into a Pod; patch paths (/metadata/..., /spec/...) then apply to
	// either once prefixed with the template's path.
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		return nil, fmt.Errorf("%s: decode pod spec: %w", t.where, err)
	}
	mutated, report, err := mutate.Pod(&pod, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.where, err)
	}
	if !report.Changed {
		return nil, nil
	}
	ops, err := patch.Pod(&pod, mutated)
	if err != nil {
		return nil, fmt.Errorf("%s: build patch: %w", t.where, err)
	}
	for i := range ops {
		ops[i].Path = t.path + ops[i].Path
	}
	res.Injected++
	for _, s := range report.Skips {
		res.Warnings = append(res.Warnings, t.where+": "+s.String())
	}
	return ops, nil
}

// lookup returns the value at JSON pointer path inside v (decoded JSON), or
// nil when a step is missing. Our paths never need ~ escapes.
func lookup(v any, path string) any {
	if path == "" {
		return v
	}
	for _, s := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		switch c := v.(type) {
		case map[string]any:
			v = c[s]
		case []any:
			i, err := strconv.Atoi(s)
			if err != nil || i < 0 || i >= len(c) {
				return nil
			}
			v = c[i]
		default:
			return nil
		}
	}
	return v
}
