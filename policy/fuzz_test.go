package policy

import (
	"strings"
	"testing"
)

// FuzzParseRules checks that any annotation value either fails to parse or
// yields rules whose canonical form parses back to the same rules, and that
// deciding a request with them never panics.
func FuzzParseRules(f *testing.F) {
	for _, s := range []string{
		"",
		"GET /api/v1/namespaces/*/pods/**; PATCH,PUT /api/v1/namespaces/team-a/configmaps/app-state",
		"* /**\nget, head /",
		"POST /api/v1/namespaces/a/pods/p/exec",
		"GET /a/**/b",
		"GET,* /x",
		";;\n\t",
		"GET /a/b*",
	} {
		f.Add(s, "GET", "/api/v1/namespaces/a/pods/p/exec", false, false)
	}
	f.Fuzz(func(t *testing.T, rules, method, path string, upgrade, impersonate bool) {
		rs, err := ParseRules(rules)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "allow rule ") {
				t.Fatalf("error does not name the rule: %v", err)
			}
			return
		}
		again, err := ParseRules(rs.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", rs.String(), rules, err)
		}
		if again.String() != rs.String() {
			t.Fatalf("round trip changed %q to %q", rs.String(), again.String())
		}
		for _, m := range Modes {
			d := Policy{Mode: m, Rules: rs}.Decide(Request{Method: method, Path: path, Upgrade: upgrade, Impersonate: impersonate})
			if d.Rule == "" {
				t.Fatalf("decision without a rule: %+v", d)
			}
			if d.Allowed == (d.Reason != "") {
				t.Fatalf("allowed decisions have no reason, refusals have one: %+v", d)
			}
		}
	})
}
