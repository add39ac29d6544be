package policy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Mode
		wantErr string
	}{
		{in: "read-only", want: ReadOnly},
		{in: "full", want: Full},
		{in: "allow-list", want: AllowList},
		{in: "", wantErr: `unknown policy "" (want read-only, full or allow-list)`},
		{in: "readonly", wantErr: `unknown policy "readonly"`},
		{in: "Full", wantErr: `unknown policy "Full"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseMode(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseRules(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    Rules
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "only separators", in: " ;\n; \n", want: nil},
		{
			name: "contract example",
			in:   "GET /api/v1/namespaces/*/pods/**; PATCH,PUT /api/v1/namespaces/team-a/configmaps/app-state",
			want: Rules{
				{Methods: []string{"GET"}, Segments: []string{"api", "v1", "namespaces", "*", "pods"}, Rest: true},
				{Methods: []string{"PATCH", "PUT"}, Segments: []string{"api", "v1", "namespaces", "team-a", "configmaps", "app-state"}},
			},
		},
		{
			name: "newlines, tabs, lower case, spaces after commas, duplicates",
			in:   "\n  get, head,GET\t/apis/apps/v1/deployments\n* /**\n",
			want: Rules{
				{Methods: []string{"GET", "HEAD"}, Segments: []string{"apis", "apps", "v1", "deployments"}},
				{Segments: []string{}, Rest: true},
			},
		},
		{name: "root", in: "GET /", want: Rules{{Methods: []string{"GET"}, Segments: []string{}}}},
		{name: "missing path", in: "GET", wantErr: `allow rule 1 "GET": want "METHODS PATH"`},
		{name: "missing methods", in: "/api", wantErr: `allow rule 1 "/api": want "METHODS PATH"`},
		{name: "position counts non-empty rules", in: "GET /a;;\nGTE /b", wantErr: `allow rule 2 "GTE /b": unknown method "GTE" (want * or a comma-separated list of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)`},
		{name: "empty method", in: "GET,,PUT /a", wantErr: `empty method in "GET,,PUT"`},
		{name: "star in list", in: "GET,* /a", wantErr: `"*" must stand alone`},
		{name: "relative path", in: "GET api/v1", wantErr: `path "api/v1" must start with /`},
		{name: "query", in: "GET /api?watch=1", wantErr: "must not contain a query or fragment"},
		{name: "empty segment", in: "GET /api//v1", wantErr: `path "/api//v1" has an empty segment`},
		{name: "trailing slash", in: "GET /api/", wantErr: "has an empty segment"},
		{name: "dot dot", in: "GET /api/../secrets", wantErr: `has a ".." segment`},
		{name: "inner double star", in: "GET /api/**/pods", wantErr: `"**" is only allowed as the final segment`},
		{name: "partial star", in: "GET /api/v1/pods-*", wantErr: `"*" must be a whole segment, not part of "pods-*"`},
		{name: "three paths", in: "GET /a /b", wantErr: `unknown method "GET/a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRules(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestRulesStringRoundTrip(t *testing.T) {
	in := "get,put /api/v1/namespaces/*/configmaps/x\n* /**;HEAD /"
	rs, err := ParseRules(in)
	require.NoError(t, err)
	assert.Equal(t, "GET,PUT /api/v1/namespaces/*/configmaps/x; * /**; HEAD /", rs.String())
	again, err := ParseRules(rs.String())
	require.NoError(t, err)
	assert.Equal(t, rs, again)
}

func TestNew(t *testing.T) {
	p, err := New("allow-list", "GET /healthz")
	require.NoError(t, err)
	assert.Equal(t, AllowList, p.Mode)
	assert.Len(t, p.Rules, 1)

	_, err = New("open", "")
	require.ErrorContains(t, err, `unknown policy "open"`)
	_, err = New("full", "FETCH /x")
	require.ErrorContains(t, err, `allow rule 1 "FETCH /x": unknown method "FETCH"`)
}

func TestDecide(t *testing.T) {
	const rules = "GET /api/v1/namespaces/*/pods/**; PATCH,PUT /api/v1/namespaces/team-a/configmaps/app-state; " +
		"* /api/v1/namespaces/team-a/pods/debug/exec; GET /api/v1/namespaces/team-a/pods/*/portforward"
	type want struct {
		allowed bool
		rule    string
	}
	for _, tc := range []struct {
		name  string
		mode  Mode
		rules string
		req   Request
		want  want
	}{
		// read-only
		{"ro get", ReadOnly, "", Request{Method: "GET", Path: "/api/v1/pods"}, want{true, "read-only"}},
		{"ro head", ReadOnly, "", Request{Method: "HEAD", Path: "/"}, want{true, "read-only"}},
		{"ro watch is a get", ReadOnly, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/pods"}, want{true, "read-only"}},
		{"ro post", ReadOnly, "", Request{Method: "POST", Path: "/api/v1/namespaces/a/pods"}, want{false, RuleReadOnly}},
		{"ro delete", ReadOnly, "", Request{Method: "DELETE", Path: "/api/v1/namespaces/a/pods/x"}, want{false, RuleReadOnly}},
		{"ro lower-case get is not GET", ReadOnly, "", Request{Method: "get", Path: "/api"}, want{false, RuleReadOnly}},
		{"ro rule adds put", ReadOnly, rules, Request{Method: "PUT", Path: "/api/v1/namespaces/team-a/configmaps/app-state"}, want{true, "PATCH,PUT /api/v1/namespaces/team-a/configmaps/app-state"}},
		{"ro rule other name", ReadOnly, rules, Request{Method: "PUT", Path: "/api/v1/namespaces/team-a/configmaps/other"}, want{false, RuleReadOnly}},
		{"ro get exec refused", ReadOnly, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/pods/x/exec", Upgrade: true}, want{false, RuleUpgrade}},
		{"ro websocket upgrade on any path refused", ReadOnly, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/services/s/proxy/ws", Upgrade: true}, want{false, RuleUpgrade}},

		// full
		{"full post", Full, "", Request{Method: "POST", Path: "/api/v1/namespaces/a/configmaps"}, want{true, "full"}},
		{"full delete", Full, "", Request{Method: "DELETE", Path: "/apis/apps/v1/namespaces/a/deployments/d"}, want{true, "full"}},
		{"full exec refused", Full, "", Request{Method: "POST", Path: "/api/v1/namespaces/a/pods/x/exec", Upgrade: true}, want{false, RuleUpgrade}},
		{"full exec without upgrade header still refused", Full, "", Request{Method: "POST", Path: "/api/v1/namespaces/a/pods/x/exec"}, want{false, RuleUpgrade}},
		{"full attach refused", Full, "", Request{Method: "POST", Path: "/api/v1/namespaces/a/pods/x/attach"}, want{false, RuleUpgrade}},
		{"full portforward refused", Full, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/pods/x/portforward"}, want{false, RuleUpgrade}},
		{"full pod named exec is no subresource", Full, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/pods/exec"}, want{true, "full"}},

		// allow-list
		{"al nothing without rules", AllowList, "", Request{Method: "GET", Path: "/api/v1/pods"}, want{false, RuleAllowList}},
		{"al glob one segment", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b/pods"}, want{true, "GET /api/v1/namespaces/*/pods/**"}},
		{"al double star zero segments", AllowList, "GET /api/v1/namespaces/*/pods/**", Request{Method: "GET", Path: "/api/v1/namespaces/b/pods"}, want{true, "GET /api/v1/namespaces/*/pods/**"}},
		{"al double star many segments", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b/pods/p/log"}, want{true, "GET /api/v1/namespaces/*/pods/**"}},
		{"al trailing slash under double star", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b/pods/"}, want{true, "GET /api/v1/namespaces/*/pods/**"}},
		{"al star needs a name", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces//pods"}, want{false, RuleCanonicalPath}},
		{"al star does not match empty last segment", AllowList, "GET /api/*", Request{Method: "GET", Path: "/api/"}, want{false, RuleAllowList}},
		{"al method mismatch", AllowList, rules, Request{Method: "DELETE", Path: "/api/v1/namespaces/b/pods/p"}, want{false, RuleAllowList}},
		{"al other prefix", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b/secrets"}, want{false, RuleAllowList}},
		{"al exact path only", AllowList, rules, Request{Method: "PATCH", Path: "/api/v1/namespaces/team-a/configmaps/app-state/extra"}, want{false, RuleAllowList}},
		{"al shorter path", AllowList, rules, Request{Method: "PATCH", Path: "/api/v1/namespaces/team-a/configmaps"}, want{false, RuleAllowList}},
		{"al head not implied by get", AllowList, rules, Request{Method: "HEAD", Path: "/api/v1/namespaces/b/pods"}, want{false, RuleAllowList}},
		{"al root rule", AllowList, "GET /", Request{Method: "GET", Path: "/"}, want{true, "GET /"}},
		{"al root rule is not a prefix", AllowList, "GET /", Request{Method: "GET", Path: "/api"}, want{false, RuleAllowList}},
		{"al star star everything", AllowList, "* /**", Request{Method: "DELETE", Path: "/"}, want{true, "* /**"}},
		{"al first matching rule wins", AllowList, "GET /a/**; GET /a/b", Request{Method: "GET", Path: "/a/b"}, want{true, "GET /a/**"}},

		// upgrades need a literal last segment
		{"exec allowed by explicit rule", AllowList, rules, Request{Method: "POST", Path: "/api/v1/namespaces/team-a/pods/debug/exec", Upgrade: true}, want{true, "* /api/v1/namespaces/team-a/pods/debug/exec"}},
		{"exec explicit rule in read-only too", ReadOnly, rules, Request{Method: "GET", Path: "/api/v1/namespaces/team-a/pods/debug/exec", Upgrade: true}, want{true, "* /api/v1/namespaces/team-a/pods/debug/exec"}},
		{"exec other pod", Full, rules, Request{Method: "POST", Path: "/api/v1/namespaces/team-a/pods/web/exec", Upgrade: true}, want{false, RuleUpgrade}},
		{"exec not granted by double star", ReadOnly, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b/pods/p/exec", Upgrade: true}, want{false, RuleUpgrade}},
		{"exec not granted by star star everything", AllowList, "* /**", Request{Method: "POST", Path: "/api/v1/namespaces/b/pods/p/exec"}, want{false, RuleUpgrade}},
		{"upgrade not granted by final star", AllowList, "* /api/v1/namespaces/b/pods/p/*", Request{Method: "POST", Path: "/api/v1/namespaces/b/pods/p/attach", Upgrade: true}, want{false, RuleUpgrade}},
		{"portforward with star pod name", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/team-a/pods/db/portforward", Upgrade: true}, want{true, "GET /api/v1/namespaces/team-a/pods/*/portforward"}},
		{"portforward method must match", AllowList, rules, Request{Method: "POST", Path: "/api/v1/namespaces/team-a/pods/db/portforward", Upgrade: true}, want{false, RuleUpgrade}},

		// impersonation: only full forwards it, whatever the rules allow
		{"ro impersonating get refused", ReadOnly, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/secrets", Impersonate: true}, want{false, RuleImpersonation}},
		{"ro rule does not grant impersonation", ReadOnly, rules, Request{Method: "PUT", Path: "/api/v1/namespaces/team-a/configmaps/app-state", Impersonate: true}, want{false, RuleImpersonation}},
		{"al rule does not grant impersonation", AllowList, "* /**", Request{Method: "GET", Path: "/api/v1/pods", Impersonate: true}, want{false, RuleImpersonation}},
		{"full impersonation forwarded", Full, "", Request{Method: "DELETE", Path: "/api/v1/namespaces/a/pods/p", Impersonate: true}, want{true, "full"}},
		{"full impersonating exec still needs its rule", Full, "", Request{Method: "POST", Path: "/api/v1/namespaces/a/pods/x/exec", Upgrade: true, Impersonate: true}, want{false, RuleUpgrade}},

		// canonical paths
		{"dot dot refused even in full", Full, "", Request{Method: "GET", Path: "/api/v1/namespaces/a/pods/../secrets"}, want{false, RuleCanonicalPath}},
		{"dot refused", ReadOnly, "", Request{Method: "GET", Path: "/api/./v1"}, want{false, RuleCanonicalPath}},
		{"double slash refused", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b//pods"}, want{false, RuleCanonicalPath}},
		{"relative refused", Full, "", Request{Method: "GET", Path: "api"}, want{false, RuleCanonicalPath}},
		{"empty refused", Full, "", Request{Method: "GET", Path: ""}, want{false, RuleCanonicalPath}},
		{"dot dot bypass of allow-list", AllowList, rules, Request{Method: "GET", Path: "/api/v1/namespaces/b/pods/../../../secrets"}, want{false, RuleCanonicalPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := ParseRules(tc.rules)
			require.NoError(t, err)
			d := Policy{Mode: tc.mode, Rules: rs}.Decide(tc.req)
			assert.Equal(t, tc.want.allowed, d.Allowed, "allowed: %+v", d)
			assert.Equal(t, tc.want.rule, d.Rule)
			if d.Allowed {
				assert.Empty(t, d.Reason)
			} else {
				assert.Contains(t, d.Reason, tc.req.Path, "a refusal names the request")
			}
		})
	}
}

func TestDecideReasons(t *testing.T) {
	d := Policy{Mode: ReadOnly}.Decide(Request{Method: "POST", Path: "/api/v1/namespaces/a/pods"})
	assert.Equal(t, "policy read-only allows only GET and HEAD; POST /api/v1/namespaces/a/pods matches no allow rule", d.Reason)
	d = Policy{Mode: AllowList}.Decide(Request{Method: "GET", Path: "/api"})
	assert.Equal(t, "policy allow-list: GET /api matches no allow rule", d.Reason)
	d = Policy{Mode: Full}.Decide(Request{Method: "POST", Path: "/api/v1/namespaces/a/pods/p/exec"})
	assert.Contains(t, d.Reason, "POST /api/v1/namespaces/a/pods/p/exec asks for a protocol upgrade")
}
