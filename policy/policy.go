// Package policy owns the ambassador's access policy: the mode (read-only,
// full, allow-list), the allow-rule syntax shared by the
// podmeta.io/ambassador-allow annotation and the ambassador's --allow flag, and
// the decision for one request. It is pure (no I/O, no net/http) so that
// mutate can validate annotations with exactly the parser the ambassador
// enforces with.
//
// Rule syntax (docs/contract.md): rules are separated by ';' or newlines; each
// is "METHODS PATH". METHODS is '*' or comma-separated HTTP methods; PATH
// starts with '/', a '*' segment matches exactly one segment and a final
// "/**" matches zero or more segments.
package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Mode is the base permission set; allow rules add to it.
type Mode string

const (
	// ReadOnly allows GET and HEAD (get, list, watch) on every path.
	ReadOnly Mode = "read-only"
	// Full allows every method on every path.
	Full Mode = "full"
	// AllowList allows nothing but the allow rules.
	AllowList Mode = "allow-list"
)

// Modes lists the valid modes in the order documented to users.
var Modes = []Mode{ReadOnly, Full, AllowList}

// ParseMode parses a mode name. It is strict (no default for ""): callers that
// have a default apply it before calling.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if s == string(m) {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown policy %q (want read-only, full or allow-list)", s)
}

// Methods accepted in rules. Kubernetes uses only these; refusing anything
// else turns a typo such as "GTE" into an error instead of a dead rule.
var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// Rule is one parsed allow rule.
type Rule struct {
	// Methods holds the upper-case methods the rule allows; nil means any.
	Methods []string
	// Segments are the path pattern's segments without the trailing "**";
	// a "*" element matches exactly one segment.
	Segments []string
	// Rest is true when the pattern ends in "/**" (zero or more segments).
	Rest bool
}

// String renders the rule in canonical syntax; ParseRules(r.String())
// yields r again.
func (r Rule) String() string {
	m := "*"
	if r.Methods != nil {
		m = strings.Join(r.Methods, ",")
	}
	p := "/" + strings.Join(r.Segments, "/")
	if r.Rest {
		if len(r.Segments) == 0 {
			p = "/**"
		} else {
			p += "/**"
		}
	}
	return m + " " + p
}

// Rules is an ordered list of allow rules.
type Rules []Rule

// String renders the rules in canonical syntax, separated by "; ". It is the
// form mutate passes to the ambassador's --allow flag.
func (rs Rules) String() string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.String()
	}
	return strings.Join(parts, "; ")
}

// ParseRules parses allow rules. Empty input and empty rules (a trailing ';',
// blank lines) are fine; any malformed rule is an error naming the rule by
// position and text.
func ParseRules(s string) (Rules, error) {
	var rules Rules
	n := 0
	for _, line := range strings.Split(s, "\n") {
		for _, raw := range strings.Split(line, ";") {
			text := strings.TrimSpace(raw)
			if text == "" {
				continue
			}
			n++
			r, err := parseRule(text)
			if err != nil {
				return nil, fmt.Errorf("allow rule %d %q: %w", n, text, err)
			}
			rules = append(rules, r)
		}
	}
	return rules, nil
}

func parseRule(text string) (Rule, error) {
	fields := strings.Fields(text)
	if len(fields) < 2 {
		return Rule{}, fmt.Errorf(`want "METHODS PATH", e.g. "GET /api/v1/namespaces/*/pods/**"`)
	}
	// The path cannot contain spaces, so it is the last field; whatever
	// precedes it is the method list, which may have spaces after commas.
	path := fields[len(fields)-1]
	methods, err := parseMethods(strings.Join(fields[:len(fields)-1], ""))
	if err != nil {
		return Rule{}, err
	}
	segs, rest, err := parsePath(path)
	if err != nil {
		return Rule{}, err
	}
	return Rule{Methods: methods, Segments: segs, Rest: rest}, nil
}

func parseMethods(s string) ([]string, error) {
	if s == "*" {
		return nil, nil
	}
	var out []string
	for _, m := range strings.Split(s, ",") {
		if m == "" {
			return nil, fmt.Errorf("empty method in %q", s)
		}
		if m == "*" {
			return nil, fmt.Errorf(`"*" must stand alone, not in a method list`)
		}
		up := strings.ToUpper(m)
		if !slices.Contains(knownMethods, up) {
			return nil, fmt.Errorf("unknown method %q (want * or a comma-separated list of %s)", m, strings.Join(knownMethods, ", "))
		}
		if !slices.Contains(out, up) {
			out = append(out, up)
		}
	}
	return out, nil
}

func parsePath(p string) (segs []string, rest bool, err error) {
	if !strings.HasPrefix(p, "/") {
		return nil, false, fmt.Errorf("path %q must start with /", p)
	}
	if strings.ContainsAny(p, "?#") {
		return nil, false, fmt.Errorf("path %q must not contain a query or fragment", p)
	}
	if p == "/" {
		return []string{}, false, nil
	}
	parts := strings.Split(p[1:], "/")
	for i, s := range parts {
		switch {
		case s == "":
			return nil, false, fmt.Errorf("path %q has an empty segment", p)
		case s == "." || s == "..":
			return nil, false, fmt.Errorf("path %q has a %q segment", p, s)
		case s == "**":
			if i != len(parts)-1 {
				return nil, false, fmt.Errorf(`path %q: "**" is only allowed as the final segment`, p)
			}
			rest = true
		case s != "*" && strings.Contains(s, "*"):
			return nil, false, fmt.Errorf(`path %q: "*" must be a whole segment, not part of %q`, p, s)
		}
	}
	if rest {
		parts = parts[:len(parts)-1]
	}
	return parts, rest, nil
}

// matchPath reports whether the request path segments match the rule.
func (r Rule) matchPath(segs []string) bool {
	if len(segs) < len(r.Segments) || (!r.Rest && len(segs) != len(r.Segments)) {
		return false
	}
	for i, p := range r.Segments {
		if p == "*" {
			// A wildcard stands for a name; an empty segment (trailing
			// slash) is not a name.
			if segs[i] == "" {
				return false
			}
			continue
		}
		if segs[i] != p {
			return false
		}
	}
	return true
}

func (r Rule) matchMethod(m string) bool {
	return r.Methods == nil || slices.Contains(r.Methods, m)
}

// explicitFor reports whether the rule names the request's last path segment
// literally. Upgrades (exec, attach, portforward, websockets) hand the caller
// an interactive channel, so a broad rule such as "GET /api/v1/namespaces/*/pods/**"
// written for reading must not silently grant them.
func (r Rule) explicitFor(segs []string) bool {
	if r.Rest || len(r.Segments) == 0 {
		return false
	}
	return r.Segments[len(r.Segments)-1] != "*"
}

// Policy is a mode plus allow rules.
type Policy struct {
	Mode  Mode
	Rules Rules
}

// New parses a mode and allow rules into a Policy.
func New(mode, allow string) (Policy, error) {
	m, err := ParseMode(mode)
	if err != nil {
		return Policy{}, err
	}
	rs, err := ParseRules(allow)
	if err != nil {
		return Policy{}, err
	}
	return Policy{Mode: m, Rules: rs}, nil
}

// Request is what the policy looks at. Path is the decoded URL path the
// ambassador forwards; Upgrade is true for requests asking for a protocol
// upgrade (Connection: Upgrade); Impersonate is true for requests carrying
// Impersonate-* headers.
type Request struct {
	Method      string
	Path        string
	Upgrade     bool
	Impersonate bool
}

// Refusal names why a request was refused. The Rule values are few and fixed
// so they can label metrics.
const (
	RuleReadOnly      = "read-only"
	RuleAllowList     = "allow-list"
	RuleUpgrade       = "upgrade"
	RuleCanonicalPath = "canonical-path"
	RuleImpersonation = "impersonation"
)

// Decision is the outcome for one request.
type Decision struct {
	Allowed bool
	// Rule names what decided: the mode, the matching allow rule in
	// canonical syntax, or one of the Rule* refusal constants.
	Rule string
	// Reason is a human-readable sentence for refusals.
	Reason string
}

// Decide applies the policy to one request.
func (p Policy) Decide(req Request) Decision {
	segs, ok := splitPath(req.Path)
	if !ok {
		return Decision{Rule: RuleCanonicalPath, Reason: fmt.Sprintf("path %q is not canonical (empty, \".\" or \"..\" segments); the ambassador only forwards paths it can match exactly", req.Path)}
	}
	// Impersonation makes the API server act as another user with the
	// service account's impersonate permission: whatever the method and
	// path, that is more than reading or than the rules grant.
	if req.Impersonate && p.Mode != Full {
		return Decision{Rule: RuleImpersonation, Reason: fmt.Sprintf("%s %s carries Impersonate-* headers, which only policy full forwards", req.Method, req.Path)}
	}
	upgrade := req.Upgrade || isStreamingSubresource(segs)
	for _, r := range p.Rules {
		if !r.matchMethod(req.Method) || !r.matchPath(segs) {
			continue
		}
		if upgrade && !r.explicitFor(segs) {
			continue
		}
		return Decision{Allowed: true, Rule: r.String()}
	}
	if upgrade {
		return Decision{Rule: RuleUpgrade, Reason: fmt.Sprintf("%s %s asks for a protocol upgrade (exec, attach, portforward or websocket), which needs an allow rule naming the path's last segment literally", req.Method, req.Path)}
	}
	switch p.Mode {
	case Full:
		return Decision{Allowed: true, Rule: string(Full)}
	case ReadOnly:
		if req.Method == "GET" || req.Method == "HEAD" {
			return Decision{Allowed: true, Rule: string(ReadOnly)}
		}
		return Decision{Rule: RuleReadOnly, Reason: fmt.Sprintf("policy read-only allows only GET and HEAD; %s %s matches no allow rule", req.Method, req.Path)}
	default:
		return Decision{Rule: RuleAllowList, Reason: fmt.Sprintf("policy allow-list: %s %s matches no allow rule", req.Method, req.Path)}
	}
}

// splitPath splits an absolute path into segments. "/" is zero segments; a
// trailing slash yields a final empty segment (which only "/**" matches).
// Empty interior segments and dot segments are refused: the API server or
// something in between may normalise them, which would let a request match
// one rule and reach another path.
func splitPath(p string) ([]string, bool) {
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	if p == "/" {
		return []string{}, true
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		if s == "." || s == ".." || (s == "" && i != len(segs)-1) {
			return nil, false
		}
	}
	return segs, true
}

// isStreamingSubresource reports pod exec/attach/portforward, which are
// upgrades by nature even if a client forgot the header.
func isStreamingSubresource(segs []string) bool {
	n := len(segs)
	if n < 7 || segs[n-3] != "pods" || segs[n-5] != "namespaces" {
		return false
	}
	switch segs[n-1] {
	case "exec", "attach", "portforward":
		return true
	}
	return false
}
