package ambassador

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/policy"
)

func TestTokenSentRotatedAndClientAuthorizationDropped(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "token-1", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	code, body := h.do(t, "GET", "/api/v1/namespaces/a/pods", http.Header{"Authorization": {"Bearer app-own-token"}})
	require.Equal(t, http.StatusOK, code, body)
	assert.JSONEq(t, `{"kind":"PodList","path":"/api/v1/namespaces/a/pods"}`, body)
	got := api.last(t)
	assert.Equal(t, []string{"Bearer token-1"}, got.Header.Values("Authorization"), "pod token sent, app's dropped")
	assert.Equal(t, 1, got.ProtoMajor, "plain requests go over the HTTP/1.1 keep-alive pool")
	code, _ = h.do(t, "GET", "/api/v1/namespaces/a/pods?watch=1", http.Header{"Authorization": {"Bearer app-own-token"}})
	require.Equal(t, http.StatusOK, code)
	got = api.last(t)
	assert.Equal(t, []string{"Bearer token-1"}, got.Header.Values("Authorization"), "pod token sent on streams too, app's dropped")
	assert.Equal(t, 2, got.ProtoMajor, "streams go over HTTP/2")

	// Kubelet rotates the projected token by swapping "..data".
	vol.write("token-2", api.caPEM())
	require.Eventually(t, func() bool {
		b, err := h.srv.creds.bearer()
		return err == nil && b == "Bearer token-2"
	}, 5*time.Second, 5*time.Millisecond, "token reloaded after rotation")

	code, _ = h.do(t, "GET", "/api/v1/namespaces/a/pods", nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "Bearer token-2", api.last(t).Header.Get("Authorization"))
	assert.Equal(t, 2.0, testutil.ToFloat64(h.srv.proxy.m.tokenReloads.WithLabelValues("success")), "initial load + one rotation")
}

// TestAppCredentialsDropped: the app's own token never reaches the API
// server, however it is sent: every Authorization header goes, not just
// the first, and a WebSocket subprotocol carrying a bearer token (which
// kube-apiserver authenticates) is taken out of Sec-WebSocket-Protocol,
// the other protocols kept in order, on plain requests, watches and
// upgrades alike.
func TestAppCredentialsDropped(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.ReadOnly, "GET /api/v1/namespaces/a/pods/p/exec"))
	const token = "base64url.bearer.authorization.k8s.io.QVBQLVRPS0VO"
	for _, path := range []string{"/api/v1/namespaces/a/pods", "/api/v1/namespaces/a/pods?watch=1", "/api/v1/namespaces/a/pods/p/exec?command=sh"} {
		for _, tc := range []struct {
			name            string
			protocols, want []string
		}{
			{"no protocols", nil, nil},
			{"token first", []string{token + ", v5.channel.k8s.io"}, []string{"v5.channel.k8s.io"}},
			{"token between lines", []string{"v5.channel.k8s.io, " + token, "v4.channel.k8s.io"}, []string{"v5.channel.k8s.io, v4.channel.k8s.io"}},
			{"token alone", []string{token}, nil},
			{"token in other case", []string{"v5.channel.k8s.io,BASE64URL.bearer.authorization.K8S.IO.QVBQ"}, []string{"v5.channel.k8s.io"}},
			{"no token, untouched", []string{"v5.channel.k8s.io,v4.channel.k8s.io"}, []string{"v5.channel.k8s.io,v4.channel.k8s.io"}},
		} {
			t.Run(path+" "+tc.name, func(t *testing.T) {
				hdr := http.Header{"Authorization": {"Bearer app-1", "Bearer app-2"}, "Sec-Websocket-Protocol": tc.protocols}
				if strings.Contains(path, "/exec") {
					hdr.Set("Connection", "Upgrade")
					hdr.Set("Upgrade", "websocket")
				}
				code, body := h.do(t, "GET", path, hdr)
				require.Equal(t, http.StatusOK, code, body)
				got := api.last(t)
				assert.Equal(t, []string{"Bearer tok"}, got.Header.Values("Authorization"), "only the pod's token")
				assert.Equal(t, tc.want, got.Header.Values("Sec-Websocket-Protocol"))
			})
		}
	}
}

func TestTokenRereadWhenAPIServerSays401(t *testing.T) {
	// With no file events and no poll in reach, only the API server's 401
	// for the expired token can make the ambassador re-read it.
	var want atomic.Value
	want.Store("Bearer old")
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != want.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "{}")
	})
	vol := newSAVolume(t, "old", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), func(c *Config) { c.noWatch = true })
	code, _ := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusOK, code)

	vol.write("new", api.caPEM())
	want.Store("Bearer new")
	code, _ = h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusUnauthorized, code, "the API server's answer is passed through")
	require.Eventually(t, func() bool {
		code, _ := h.do(t, "GET", "/api", nil)
		return code == http.StatusOK
	}, 5*time.Second, 10*time.Millisecond)
}

func TestWrongCA(t *testing.T) {
	api := newAPIServer(t, nil)
	other := newAPIServer(t, nil) // its certificate is a different CA
	vol := newSAVolume(t, "tok", other.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	code, body := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusBadGateway, code)
	s := decodeStatus(t, http.StatusBadGateway, body)
	assert.Contains(t, s.Message, "API server certificate not trusted by ca.crt ("+vol.ca()+")")
	assert.Empty(t, api.requests(), "nothing reached the API server")

	// CA rotation: the right bundle arrives, requests succeed.
	vol.write("tok", api.caPEM())
	require.Eventually(t, func() bool {
		code, _ := h.do(t, "GET", "/api", nil)
		return code == http.StatusOK
	}, 5*time.Second, 10*time.Millisecond)
}

func TestMissingFiles(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "", api.caPEM()) // no token yet
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	code, body := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusBadGateway, code)
	s := decodeStatus(t, http.StatusBadGateway, body)
	assert.Equal(t, "podmeta-ambassador: token file missing: "+vol.token(), s.Message)

	res, err := http.Get(h.health + "/readyz")
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Contains(t, string(b), "token file missing")

	vol.write("tok", api.caPEM())
	require.Eventually(t, func() bool {
		res, err := http.Get(h.health + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, 5*time.Second, 10*time.Millisecond)
	code, _ = h.do(t, "GET", "/api", nil)
	assert.Equal(t, http.StatusOK, code)

	// The CA going missing keeps the loaded one in use but turns unready.
	vol.write("tok", nil)
	require.Eventually(t, func() bool { return h.srv.creds.ready() != nil }, 5*time.Second, 10*time.Millisecond)
	assert.ErrorContains(t, h.srv.creds.ready(), "CA file missing: "+vol.ca())
	code, _ = h.do(t, "GET", "/api", nil)
	assert.Equal(t, http.StatusOK, code)
}

func TestMissingCAAtStart(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", nil)
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	code, body := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusBadGateway, code)
	assert.Equal(t, "podmeta-ambassador: CA file missing: "+vol.ca(), decodeStatus(t, code, body).Message)
}

func TestUnreachableAndTimeout(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close() // nothing listens here now
	h := startAmbassador(t, "https://"+addr, vol.token(), vol.ca())
	code, body := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusBadGateway, code)
	assert.Contains(t, decodeStatus(t, code, body).Message, "API server https://"+addr+" unreachable")
}

func TestHostCheck(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	for host, ok := range map[string]bool{
		"localhost":                true,
		"localhost:8001":           true,
		"LocalHost:1":              true,
		"127.0.0.1":                true,
		"127.0.0.1:8001":           true,
		"[::1]":                    true,
		"[::1]:8001":               true,
		"evil.example":             false,
		"evil.example:8001":        false,
		"127.0.0.1.nip.io":         false,
		"localhost.evil.example":   false,
		"127.0.0.2:8001":           false,
		"[::ffff:127.0.0.1]:8001":  false,
		"10.0.0.1:8001":            false,
		"localhost@evil.example:1": false,
	} {
		t.Run(host, func(t *testing.T) {
			n := len(api.requests())
			code, body := h.do(t, "GET", "/api", http.Header{"Host": {host}})
			if ok {
				assert.Equal(t, http.StatusOK, code, body)
				return
			}
			require.Equal(t, http.StatusForbidden, code, body)
			s := decodeStatus(t, code, body)
			assert.Contains(t, s.Message, `refused by rule "host"`)
			assert.Len(t, api.requests(), n, "refused request never reaches the API server")
		})
	}
}

// TestOriginCheck: a web page in the pod's browser reaches 127.0.0.1 with
// a Host the Host check accepts; its Origin and Sec-Fetch-Site give it
// away. Only pages on a loopback host pass, on plain requests, watches and
// upgrades alike.
func TestOriginCheck(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.ReadOnly, "GET /api/v1/namespaces/a/pods/p/exec"))
	const (
		list  = "/api/v1/namespaces/a/pods"
		watch = "/api/v1/namespaces/a/pods?watch=1"
		exec  = "/api/v1/namespaces/a/pods/p/exec?command=sh"
	)
	ws := func(origin string) http.Header {
		return http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"},
			"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Origin": {origin}}
	}
	refused := 0
	for _, tc := range []struct {
		name, path string
		hdr        http.Header
		ok         bool
	}{
		{"no origin", list, nil, true},
		{"localhost", list, http.Header{"Origin": {"http://localhost"}}, true},
		{"localhost with port", watch, http.Header{"Origin": {"http://localhost:3000"}}, true},
		{"https 127.0.0.1", list, http.Header{"Origin": {"https://127.0.0.1:8443"}}, true},
		{"ipv6 loopback", list, http.Header{"Origin": {"http://[::1]:8001"}}, true},
		{"upper case", list, http.Header{"Origin": {"HTTP://LocalHost:1"}}, true},
		{"same-origin fetch", list, http.Header{"Sec-Fetch-Site": {"same-origin"}}, true},
		{"typed url", list, http.Header{"Sec-Fetch-Site": {"none"}}, true},
		{"websocket from localhost", exec, ws("http://localhost:3000"), true},
		// localhost:3000 calling 127.0.0.1:8001 is cross-site to the
		// browser, but the page is the pod's own.
		{"page on another loopback name", list, http.Header{"Origin": {"http://localhost:3000"}, "Sec-Fetch-Site": {"Cross-Site"}}, true},

		{"other site", list, http.Header{"Origin": {"https://evil.example"}}, false},
		{"other site on a watch", watch, http.Header{"Origin": {"https://evil.example"}}, false},
		{"websocket from other site", exec, ws("https://evil.example"), false},
		{"null", list, http.Header{"Origin": {"null"}}, false},
		{"empty", list, http.Header{"Origin": {""}}, false},
		{"localhost prefix", list, http.Header{"Origin": {"http://localhost.evil.example"}}, false},
		{"loopback name", list, http.Header{"Origin": {"http://127.0.0.1.nip.io"}}, false},
		{"other loopback address", list, http.Header{"Origin": {"http://127.0.0.2"}}, false},
		{"user info", list, http.Header{"Origin": {"http://evil.example@localhost"}}, false},
		{"path", list, http.Header{"Origin": {"http://localhost/x"}}, false},
		{"websocket scheme", list, http.Header{"Origin": {"ws://localhost"}}, false},
		{"file", list, http.Header{"Origin": {"file://"}}, false},
		{"extension", list, http.Header{"Origin": {"chrome-extension://abcdef"}}, false},
		{"second origin", list, http.Header{"Origin": {"http://localhost", "https://evil.example"}}, false},
		{"no-cors get from another site", list, http.Header{"Sec-Fetch-Site": {"cross-site"}}, false},
		{"other site claiming same-site", list, http.Header{"Origin": {"https://evil.example"}, "Sec-Fetch-Site": {"same-site"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(api.requests())
			code, body := h.do(t, "GET", tc.path, tc.hdr)
			if tc.ok {
				require.Equal(t, http.StatusOK, code, body)
				assert.Len(t, api.requests(), n+1)
				return
			}
			refused++
			require.Equal(t, http.StatusForbidden, code, body)
			s := decodeStatus(t, code, body)
			assert.Contains(t, s.Message, `podmeta-ambassador: refused by rule "origin"`)
			require.NotNil(t, s.Details)
			assert.Equal(t, "origin", s.Details.Causes[0].Message)
			assert.Len(t, api.requests(), n, "refused request never reaches the API server")
		})
	}
	assert.Equal(t, float64(refused), testutil.ToFloat64(h.srv.proxy.m.refused.WithLabelValues("origin")))
}

func TestPolicyModes(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	const rules = "GET /api/v1/namespaces/*/pods/**; PATCH,PUT /api/v1/namespaces/team-a/configmaps/app-state"
	servers := map[string]*harness{
		"read-only":  startAmbassador(t, api.URL, vol.token(), vol.ca()),
		"ro+rules":   startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.ReadOnly, rules)),
		"full":       startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, "")),
		"allow-list": startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.AllowList, rules)),
	}
	for _, tc := range []struct {
		server, method, path string
		refusedBy            string // "" means forwarded
	}{
		{"read-only", "GET", "/api/v1/namespaces/a/pods?watch=true", ""},
		{"read-only", "HEAD", "/api/v1/namespaces/a/pods", ""},
		{"read-only", "POST", "/api/v1/namespaces/a/pods", "read-only"},
		{"read-only", "DELETE", "/api/v1/namespaces/a/pods/p", "read-only"},
		{"read-only", "GET", "/api/v1/namespaces/a/pods/../secrets", "canonical-path"},
		{"ro+rules", "PUT", "/api/v1/namespaces/team-a/configmaps/app-state", ""},
		{"ro+rules", "PUT", "/api/v1/namespaces/team-a/configmaps/other", "read-only"},
		{"full", "POST", "/api/v1/namespaces/a/configmaps", ""},
		{"full", "DELETE", "/api/v1/namespaces/a/pods/p", ""},
		{"full", "POST", "/api/v1/namespaces/a/pods/p/exec?command=sh", "upgrade"},
		{"allow-list", "GET", "/api/v1/namespaces/b/pods/p/log", ""},
		{"allow-list", "PATCH", "/api/v1/namespaces/team-a/configmaps/app-state", ""},
		{"allow-list", "GET", "/api/v1/namespaces/b/secrets", "allow-list"},
		{"allow-list", "DELETE", "/api/v1/namespaces/b/pods/p", "allow-list"},
		// %2F decodes to a real slash: four segments after "namespaces",
		// so "*" cannot match "a%2Fb" as one name.
		{"allow-list", "GET", "/api/v1/namespaces/x%2F..%2Fb/pods", "canonical-path"},
		{"allow-list", "GET", "/api/v1/namespaces/b%2Fc/secrets", "allow-list"},
	} {
		t.Run(tc.server+" "+tc.method+" "+tc.path, func(t *testing.T) {
			n := len(api.requests())
			code, body := servers[tc.server].do(t, tc.method, tc.path, nil)
			if tc.refusedBy == "" {
				require.Equal(t, http.StatusOK, code, body)
				got := api.last(t)
				assert.Equal(t, tc.method, got.Method)
				assert.Equal(t, tc.path, got.URL.RequestURI(), "path and query forwarded unchanged")
				return
			}
			require.Equal(t, http.StatusForbidden, code, body)
			s := decodeStatus(t, code, body)
			assert.Equal(t, "Forbidden", s.Reason)
			assert.Contains(t, s.Message, fmt.Sprintf("podmeta-ambassador: refused by rule %q", tc.refusedBy))
			require.NotNil(t, s.Details)
			assert.Equal(t, tc.refusedBy, s.Details.Causes[0].Message)
			assert.Len(t, api.requests(), n, "refused request never reaches the API server")
		})
	}
	assert.Equal(t, 2.0, testutil.ToFloat64(servers["read-only"].srv.proxy.m.refused.WithLabelValues("read-only")))
}

// TestImpersonation: Impersonate-* headers make the API server act as
// another user with the service account's impersonate permission. Policy
// full forwards them (kubectl proxy does); read-only and allow-list refuse
// them whatever the rules allow, on plain requests, streams and upgrades,
// however the name is spelled, and in a chunked body's trailer too.
func TestImpersonation(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	// Every request below is allowed in every mode without its
	// Impersonate-* headers.
	const rules = "GET /api/v1/namespaces/*/pods/**; GET /api/v1/namespaces/a/pods/p/exec"
	servers := map[policy.Mode]*harness{}
	for _, m := range policy.Modes {
		servers[m] = startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(m, rules))
	}
	const (
		list  = "/api/v1/namespaces/a/pods"
		watch = "/api/v1/namespaces/a/pods?watch=1"
		exec  = "/api/v1/namespaces/a/pods/p/exec?command=sh"
	)
	chunked := "Transfer-Encoding: chunked\r\n\r\n0\r\n" // the trailer section follows
	for _, tc := range []struct {
		name, path string
		rest       string   // header lines, the blank line and any body
		sent       []string // Impersonate-* headers the API server sees under full
	}{
		{"none", list, "X-Other: 1\r\n\r\n", nil},
		{"user", list, "Impersonate-User: system:admin\r\n\r\n", []string{"Impersonate-User"}},
		{"all four on a watch", watch, "Impersonate-User: u\r\nImpersonate-Group: system:masters\r\nImpersonate-Uid: 1\r\nImpersonate-Extra-Scopes: x\r\n\r\n",
			[]string{"Impersonate-User", "Impersonate-Group", "Impersonate-Uid", "Impersonate-Extra-Scopes"}},
		{"lower case", list, "impersonate-uid: 1\r\n\r\n", []string{"Impersonate-Uid"}},
		{"upper case", list, "IMPERSONATE-EXTRA-SCOPES: x\r\n\r\n", []string{"Impersonate-Extra-Scopes"}},
		{"exec upgrade", exec, "Connection: Upgrade\r\nUpgrade: websocket\r\nImpersonate-User: u\r\n\r\n", []string{"Impersonate-User"}},
		{"chunked trailer", list, chunked + "Impersonate-User: u\r\n\r\n", []string{"Impersonate-User"}},
		{"chunked trailer on a watch", watch, chunked + "Impersonate-Group: g\r\n\r\n", []string{"Impersonate-Group"}},
	} {
		for _, m := range policy.Modes {
			t.Run(tc.name+" "+string(m), func(t *testing.T) {
				n := len(api.requests())
				res, body := servers[m].raw(t, "GET "+tc.path+" HTTP/1.1\r\nHost: localhost\r\n"+tc.rest)
				if m == policy.Full || tc.sent == nil {
					require.Equal(t, http.StatusOK, res.StatusCode, body)
					got := api.last(t)
					for _, name := range tc.sent {
						assert.NotEmpty(t, got.Header.Values(name), "%s forwarded", name)
					}
					return
				}
				require.Equal(t, http.StatusForbidden, res.StatusCode, body)
				s := decodeStatus(t, res.StatusCode, body)
				assert.Contains(t, s.Message, `podmeta-ambassador: refused by rule "impersonation"`)
				require.NotNil(t, s.Details)
				assert.Equal(t, policy.RuleImpersonation, s.Details.Causes[0].Message)
				assert.Len(t, api.requests(), n, "refused request never reaches the API server")
			})
		}
	}
	assert.Equal(t, 7.0, testutil.ToFloat64(servers[policy.ReadOnly].srv.proxy.m.refused.WithLabelValues("impersonation")))
	assert.Equal(t, 7.0, testutil.ToFloat64(servers[policy.AllowList].srv.proxy.m.refused.WithLabelValues("impersonation")))
}

func TestUpgrade(t *testing.T) {
	// The stand-in answers an upgrade by echoing lines over the raw
	// connection, like an exec stream.
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			_, _ = io.WriteString(w, "{}")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", r.Header.Get("Upgrade"))
		brw.Flush()
		line, _ := brw.ReadString('\n')
		fmt.Fprintf(brw, "echo %s auth=%s", line, r.Header.Get("Authorization"))
		brw.Flush()
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	const execPath = "/api/v1/namespaces/a/pods/p/exec?command=sh"
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}

	for _, h := range []*harness{
		startAmbassador(t, api.URL, vol.token(), vol.ca()),
		startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, "GET /api/v1/namespaces/*/pods/**")),
	} {
		code, body := h.do(t, "GET", execPath, upgrade)
		require.Equal(t, http.StatusForbidden, code)
		assert.Contains(t, decodeStatus(t, code, body).Message, `refused by rule "upgrade"`)
		// Any path, not just exec.
		code, _ = h.do(t, "GET", "/api/v1/namespaces/a/services/s/proxy/ws", upgrade)
		assert.Equal(t, http.StatusForbidden, code)
	}
	assert.Empty(t, api.requests())

	// An explicit rule lets the upgrade through end to end.
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.ReadOnly, "GET /api/v1/namespaces/a/pods/p/exec"))
	conn, err := net.Dial("tcp", h.srv.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAuthorization: Bearer app\r\n\r\n", execPath)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, res.StatusCode)
	_, err = io.WriteString(conn, "hello\n")
	require.NoError(t, err)
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, "echo hello\n auth=Bearer tok", string(rest))
}

// TestUpgradeHangupCancels: an app that hangs up while its upgrade (exec)
// waits for the API server's answer cancels it there, and its connection
// is forgotten at once instead of at shutdown; the answer the API server
// may still send is not counted as served. One that stays gets the 101
// and its pipe as usual (TestUpgrade).
func TestUpgradeHangupCancels(t *testing.T) {
	api := newBlockingAPI(t, nil, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.ReadOnly, "GET /api/v1/namespaces/a/pods/p/exec"))
	conn := sendUpgrade(t, h.srv.Addr().String())
	<-api.arrived
	require.Equal(t, 1, h.srv.proxy.conns.open())
	conn.Close()
	api.waitCanceled(t, "the upgrade, after the app hung up,")
	assert.Eventually(t, func() bool { return h.srv.proxy.conns.open() == 0 }, 5*time.Second, 10*time.Millisecond,
		"the hung-up connection is forgotten")
	assert.Eventually(t, func() bool {
		return testutil.ToFloat64(h.srv.proxy.m.requests.WithLabelValues("499", "GET")) == 1
	}, 5*time.Second, 10*time.Millisecond, "counted as 499")
}

// sendUpgrade opens a connection to the ambassador at addr and sends an
// exec upgrade request on it.
func sendUpgrade(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = io.WriteString(conn, "GET /api/v1/namespaces/a/pods/p/exec?command=sh HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	require.NoError(t, err)
	return conn
}

// TestShutdownCancelsPendingUpgrade: an upgrade still waiting for its 101
// when the drain period ends is canceled at the API server, not left
// running past Run.
func TestShutdownCancelsPendingUpgrade(t *testing.T) {
	api := newBlockingAPI(t, nil, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	rules, err := policy.ParseRules("GET /api/v1/namespaces/a/pods/p/exec")
	require.NoError(t, err)
	srv, err := New(Config{Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", Upstream: api.URL,
		TokenFile: vol.token(), CAFile: vol.ca(), Policy: policy.Policy{Mode: policy.ReadOnly, Rules: rules},
		ShutdownTimeout: 200 * time.Millisecond}, nil, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	sendUpgrade(t, srv.Addr().String())
	<-api.arrived
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	api.waitCanceled(t, "the upgrade pending at shutdown")
}

func TestWatchStreams(t *testing.T) {
	release := make(chan struct{})
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for i := range 2 {
			fmt.Fprintf(w, `{"type":"ADDED","object":{"n":%d}}`+"\n", i)
			http.NewResponseController(w).Flush()
		}
		// The response stays open until the test has seen both events.
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	res, err := h.client.Get(h.url + "/api/v1/namespaces/a/pods?watch=true")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for i := range 2 {
		select {
		case l := <-lines:
			assert.Equal(t, fmt.Sprintf(`{"type":"ADDED","object":{"n":%d}}`, i), l)
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d not delivered while the watch is open", i)
		}
	}
	close(release)
	_, open := <-lines
	assert.False(t, open, "stream ends when the API server ends it")
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	api := newBlockingAPI(t, nil, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	hangUp(t, h, api, "/api/v1/pods?watch=true", 0)
}

func TestMetricsAndHealth(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	h.do(t, "GET", "/api", nil)
	h.do(t, "POST", "/api", nil)
	h.do(t, "GET", "/api", http.Header{"Host": {"evil.example"}})

	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ok\n"} {
		res, err := http.Get(h.health + path)
		require.NoError(t, err)
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode, path)
		assert.Equal(t, want, string(b))
	}
	res, err := http.Get(h.health + "/metrics")
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	m := string(b)
	for _, want := range []string{
		`podmeta_ambassador_requests_total{code="200",method="GET"} 1`,
		`podmeta_ambassador_requests_total{code="403",method="GET"} 1`,
		`podmeta_ambassador_requests_total{code="403",method="POST"} 1`,
		`podmeta_ambassador_refused_total{rule="host"} 1`,
		`podmeta_ambassador_refused_total{rule="read-only"} 1`,
		`podmeta_ambassador_upstream_duration_seconds_count 1`,
		`podmeta_ambassador_token_reloads_total{result="success"} 1`,
		`podmeta_ambassador_ca_reloads_total{result="success"} 1`,
	} {
		assert.Contains(t, m, want)
	}
	// The proxy port serves no health or metrics: those paths go upstream.
	code, _ := h.do(t, "GET", "/metrics", nil)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "/metrics", api.last(t).URL.Path)
}

func TestConfigChecks(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8001": "",
		"[::1]:8001":     "",
		"localhost:8001": "",
		"127.0.0.5:8001": "",
		":8001":          "is not a loopback address",
		"0.0.0.0:8001":   "is not a loopback address",
		"10.1.2.3:8001":  "--allow-non-loopback",
		"127.0.0.1":      "missing port",
	} {
		err := checkLoopback(addr, false)
		if want == "" {
			assert.NoError(t, err, addr)
		} else {
			assert.ErrorContains(t, err, want, addr)
		}
	}
	assert.NoError(t, checkLoopback("0.0.0.0:8001", true))

	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	assert.Equal(t, "https://10.96.0.1:443", UpstreamFromEnv(env(map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})))
	assert.Equal(t, "https://[fd00::1]:6443", UpstreamFromEnv(env(map[string]string{"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})))
	assert.Equal(t, "", UpstreamFromEnv(env(map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"})))

	for up, want := range map[string]string{
		"https://10.96.0.1:443":    "",
		"https://[fd00::1]:6443":   "",
		"":                         "KUBERNETES_SERVICE_HOST",
		"http://10.96.0.1":         "want https://host:port",
		"https://":                 "want https://host:port",
		"https://u:p@10.96.0.1":    "no user, query or fragment",
		"https://10.96.0.1/?x=1":   "no user, query or fragment",
		"https://10.96.0.1:99999x": "--upstream",
	} {
		_, err := ParseUpstream(up)
		if want == "" {
			assert.NoError(t, err, up)
		} else {
			assert.ErrorContains(t, err, want, up)
		}
	}
}

func TestNewFailsOnBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	dir := t.TempDir()
	_, err = New(Config{Listen: ln.Addr().String(), HealthListen: "127.0.0.1:0", Upstream: "https://127.0.0.1:1",
		TokenFile: dir + "/t", CAFile: dir + "/c"}, nil, nil, nil)
	assert.ErrorContains(t, err, "--listen")
}

func TestCompleteResponsesGetContentLength(t *testing.T) {
	small := strings.Repeat("a", 21*1024)
	large := strings.Repeat("b", bufferLimit*3+17)
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		ct := "application/json"
		if r.URL.Query().Get("ct") != "" {
			ct = r.URL.Query().Get("ct")
		}
		w.Header().Set("Content-Type", ct)
		body := small
		if r.URL.Query().Get("size") == "large" {
			body = large
		}
		// Two writes with a flush between: no Content-Length upstream.
		_, _ = io.WriteString(w, body[:len(body)/2])
		http.NewResponseController(w).Flush()
		if r.URL.Query().Get("fail") != "" {
			panic(http.ErrAbortHandler) // resets the stream mid-body
		}
		_, _ = io.WriteString(w, body[len(body)/2:])
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	get := func(query string) (*http.Response, string) {
		res, err := h.client.Get(h.url + "/api/v1/pods?" + query)
		require.NoError(t, err)
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return res, string(b)
	}
	res, body := get("")
	assert.Equal(t, small, body)
	assert.Equal(t, int64(len(small)), res.ContentLength, "small JSON is sent with Content-Length")

	res, body = get("size=large")
	assert.Equal(t, len(large), len(body))
	assert.Equal(t, large, body, "a body above the limit arrives intact")
	assert.Equal(t, int64(-1), res.ContentLength, "and is streamed")

	for _, q := range []string{"watch=1", "ct=application%2Fjson%3Bstream%3Dlines", "ct=text/plain", "follow=true"} {
		res, body = get(q)
		assert.Equal(t, small, body, q)
		assert.Equal(t, int64(-1), res.ContentLength, "%s is never held back", q)
	}

	res, body = get("fail=1")
	assert.Equal(t, http.StatusBadGateway, res.StatusCode, "an upstream reset inside the buffered part is a 502")
	assert.Contains(t, decodeStatus(t, res.StatusCode, body).Message, "read response body")
}

func TestRequestBodyAndHeadersForwarded(t *testing.T) {
	var got atomic.Value
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(fmt.Sprintf("%s %s %s %s", r.Method, r.Header.Get("Content-Type"), r.Header.Get("X-Forwarded-For"), b))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"kind":"ConfigMap"}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, ""))

	body := `[{"op":"add","path":"/data/a","value":"b"}]`
	req, err := http.NewRequest("PATCH", h.url+"/api/v1/namespaces/a/configmaps/c", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json-patch+json")
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	res, err := h.client.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusCreated, res.StatusCode)
	assert.Equal(t, `{"kind":"ConfigMap"}`, string(b))
	assert.Equal(t, "PATCH application/json-patch+json  "+body, got.Load(), "body and content type forwarded, spoofable forwarding headers dropped")
}

// TestBodyWithoutContentType: a body the app sends without a Content-Type
// goes up without one, on the plain path and the streaming one (a proxy
// subresource), as in a direct call: kube-apiserver then assumes JSON,
// where the application/octet-stream fasthttp would add gets a 415.
func TestBodyWithoutContentType(t *testing.T) {
	var got atomic.Value
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(fmt.Sprintf("%s %q %s", r.Method, r.Header.Values("Content-Type"), b))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"kind":"ConfigMap"}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, ""))
	const body = `{"kind":"ConfigMap","metadata":{"name":"c"}}`
	for _, path := range []string{"/api/v1/namespaces/a/configmaps", "/api/v1/namespaces/a/services/s/proxy/x"} {
		req, err := http.NewRequest("POST", h.url+path, strings.NewReader(body))
		require.NoError(t, err)
		require.Empty(t, req.Header.Values("Content-Type"))
		res, err := h.client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusCreated, res.StatusCode, path)
		assert.Equal(t, "POST [] "+body, got.Load(), "%s: no Content-Type upstream", path)
	}
}

// TestUserAgentPassedThrough: the API server (and its audit log) sees the
// app's User-Agent, or none when the app sent none, on the plain path and
// on streams, never one of the ambassador's HTTP clients.
func TestUserAgentPassedThrough(t *testing.T) {
	var got atomic.Value
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Values("User-Agent"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	for _, path := range []string{"/api/v1/namespaces/a/pods", "/api/v1/namespaces/a/pods?watch=true"} {
		for _, ua := range []string{"", "my-app/1.0"} {
			req, err := http.NewRequest("GET", h.url+path, nil)
			require.NoError(t, err)
			req.Header["User-Agent"] = []string{ua} // "": Go's client sends none
			res, err := h.client.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			require.Equal(t, http.StatusOK, res.StatusCode, path)
			want := []string(nil)
			if ua != "" {
				want = []string{ua}
			}
			assert.Equal(t, want, got.Load(), "%s with User-Agent %q", path, ua)
		}
	}
}

func TestShutdownEndsLongWatches(t *testing.T) {
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}\n")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	srv, err := New(Config{Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", Upstream: api.URL,
		TokenFile: vol.token(), CAFile: vol.ca(), Policy: policy.Policy{Mode: policy.ReadOnly},
		ShutdownTimeout: 200 * time.Millisecond}, nil, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	res, err := http.Get("http://" + srv.Addr().String() + "/api/v1/pods?watch=1")
	require.NoError(t, err)
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "{}\n", line)

	// An idle connection is closed at once; the open watch gets the drain
	// period, then is cut so the pod can terminate.
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the shutdown timeout")
	}
	_, err = http.Get("http://" + srv.Addr().String() + "/api")
	assert.Error(t, err, "listener closed")
	// The watch was cut, not left running.
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, res.Body); ended <- err }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch's connection is still open after Run returned")
	}
	// The stream forgets its connection once its goroutine has wound
	// down, which may come after the client has seen the end.
	assert.Eventually(t, func() bool { return srv.proxy.conns.open() == 0 }, 5*time.Second, 10*time.Millisecond)
}

// TestConnectionsTracked: the shutdown knows every open connection of the
// app, streams included, from fasthttp's ConnState (the listener stays a
// bare *net.TCPListener: fasthttp sends a response's head and body in one
// writev only on a *net.TCPConn).
func TestConnectionsTracked(t *testing.T) {
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}\n")
		if r.URL.Query().Get("watch") != "" {
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	srv := startAmbassador(t, api.URL, vol.token(), vol.ca()).srv
	assert.IsType(t, &net.TCPListener{}, srv.ln)

	plain := &http.Client{Transport: &http.Transport{}}
	res, err := plain.Get("http://" + srv.Addr().String() + "/api/v1/pods")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	watch, err := http.Get("http://" + srv.Addr().String() + "/api/v1/pods?watch=1")
	require.NoError(t, err)
	_, err = bufio.NewReader(watch.Body).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, 2, srv.proxy.conns.open(), "a keep-alive connection and a hijacked stream")

	plain.CloseIdleConnections()
	watch.Body.Close()
	assert.Eventually(t, func() bool { return srv.proxy.conns.open() == 0 }, 5*time.Second, 10*time.Millisecond,
		"both forgotten once closed")
}

// TestShutdownDelayKeepsServing: a sidecar placed as a regular container
// gets SIGTERM together with the app; during --shutdown-delay it keeps
// proxying (the app's own shutdown may still call the API server), new
// connections included, with /readyz failing; then it drains and exits.
func TestShutdownDelayKeepsServing(t *testing.T) {
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"Lease"}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	const delay = 2 * time.Second
	srv, err := New(Config{Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", Upstream: api.URL,
		TokenFile: vol.token(), CAFile: vol.ca(), Policy: policy.Policy{Mode: policy.Full},
		ShutdownDelay: delay}, nil, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	base := "http://" + srv.Addr().String()
	readyz := func() int {
		res, err := http.Get("http://" + srv.HealthAddr().String() + "/readyz")
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	require.Eventually(t, func() bool { return readyz() == http.StatusOK }, 5*time.Second, 10*time.Millisecond)

	signalled := time.Now()
	cancel()
	// Once /readyz fails, the shutdown has begun.
	require.Eventually(t, func() bool { return readyz() == http.StatusServiceUnavailable }, 5*time.Second, 10*time.Millisecond)
	// Each request on a new connection: the listener is still open.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		req, err := http.NewRequest(method, base+"/apis/coordination.k8s.io/v1/namespaces/a/leases/b", nil)
		require.NoError(t, err)
		res, err := fresh.Do(req)
		require.NoError(t, err, "%s during the shutdown delay", method)
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode, method)
		assert.Equal(t, `{"kind":"Lease"}`, string(b), method)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned during the shutdown delay (%v after the signal): %v", time.Since(signalled), err)
	default:
	}

	select {
	case err := <-done:
		require.NoError(t, err)
		assert.GreaterOrEqual(t, time.Since(signalled), delay, "Run returned before the delay was over")
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the shutdown delay")
	}
	_, err = fresh.Get(base + "/api")
	assert.Error(t, err, "listener closed after the delay")
}

func TestNegativeShutdownDelayRefused(t *testing.T) {
	_, err := New(Config{Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", Upstream: "https://127.0.0.1:6443",
		TokenFile: "t", CAFile: "c", ShutdownDelay: -time.Second}, nil, nil, nil)
	require.ErrorContains(t, err, "--shutdown-delay must not be negative")
}
