package ambassador

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/podmeta/podmeta/policy"
)

// proxy is the localhost-facing handler: Host check, policy, then the API
// server with the pod's token. Plain requests (a get, a list, a patch) are
// served by forward over a pool of HTTP/1.1 keep-alive connections, which
// costs a fraction of a net/http round trip per request; streams (watch, log
// follow, proxy subresources) and upgrades (exec, attach, port-forward) take
// over the client connection and go through net/http's HTTP/2 transport in
// stream.
type proxy struct {
	upstream *url.URL
	caFile   string
	policy   policy.Policy
	creds    *credentials
	log      *slog.Logger
	m        *metrics
	// conns are the app's open connections, hijacked streams included,
	// for the shutdown.
	conns *connSet
}

func newProxy(upstream *url.URL, caFile string, pol policy.Policy, creds *credentials, log *slog.Logger, m *metrics) *proxy {
	return &proxy{upstream: upstream, caFile: caFile, policy: pol, creds: creds, log: log, m: m, conns: newConnSet()}
}

// handle is the fasthttp handler. Requests handed to stream are counted
// there, when their outcome is known.
func (p *proxy) handle(ctx *fasthttp.RequestCtx) {
	if code := p.serve(ctx); code != 0 {
		p.count(code, string(ctx.Method()))
	}
}

func (p *proxy) count(code int, method string) {
	p.m.requests.WithLabelValues(strconv.Itoa(code), methodLabel(method)).Inc()
}

// serve answers or forwards one request and returns the status code for
// the metrics, or 0 when stream took the connection over.
func (p *proxy) serve(ctx *fasthttp.RequestCtx) int {
	method := string(ctx.Method())
	// The body has been read whole, chunked trailer fields too: from here
	// on they are headers like the others, for the checks below and
	// upstream (fasthttp would merge them on the plain path anyway).
	ctx.Request.Header.Del(fasthttp.HeaderTrailer)
	// The raw request URI is parsed the way net/http parses it, so the
	// policy sees the same decoded path as before the switch to fasthttp,
	// "." and ".." segments and double slashes included. (fasthttp's own
	// ctx.Path() is normalized: it would let
	// /api/v1/namespaces/a/pods/../secrets through as .../secrets.)
	u, err := url.ParseRequestURI(string(ctx.Request.Header.RequestURI()))
	if err != nil {
		return writeStatusCtx(ctx, 400, "BadRequest", fmt.Sprintf("podmeta-ambassador: malformed request URI: %v", err), "")
	}
	host := u.Host // absolute-form request line, as net/http does
	if host == "" {
		host = string(ctx.Request.Header.Host())
	}
	if !allowedHost(host) {
		return p.refuse(ctx, method, u.Path, host, "host", fmt.Sprintf("Host %q refused: only localhost, 127.0.0.1 and [::1] are served (DNS-rebinding protection)", host))
	}
	if reason := crossSite(&ctx.Request.Header); reason != "" {
		return p.refuse(ctx, method, u.Path, host, "origin", reason)
	}
	upgrade, upType := upgradeType(&ctx.Request.Header)
	d := p.policy.Decide(policy.Request{Method: method, Path: u.Path, Upgrade: upgrade, Impersonate: impersonates(&ctx.Request.Header)})
	if !d.Allowed {
		return p.refuse(ctx, method, u.Path, host, d.Rule, d.Reason)
	}
	bearer, err := p.creds.bearer()
	if err != nil {
		return p.upstreamError(ctx, method, u.Path, &credentialError{err})
	}
	if p.log.Enabled(context.Background(), slog.LevelDebug) {
		p.log.Debug("proxy", "method", method, "path", u.Path, "rule", d.Rule)
	}
	// kube-apiserver also takes a bearer token from a WebSocket
	// subprotocol: the app's own must not go up that way either.
	dropBearerProtocols(&ctx.Request.Header)
	out := p.outURL(u)
	if upgrade || streaming(u.RawQuery, u.Path) {
		p.hijack(ctx, method, out, bearer, upType)
		return 0
	}
	return p.forward(ctx, method, out, bearer)
}

// requestError answers a request fasthttp could not read. Only an empty or
// missing Host is a refusal (net/http let it through to the Host check, so
// it stays a 403 of rule "host"); the rest are the client's errors. The
// error text is not echoed: it quotes the request head.
func (p *proxy) requestError(ctx *fasthttp.RequestCtx, err error) {
	var code int
	var small *fasthttp.ErrSmallBuffer
	var netErr net.Error
	switch {
	case strings.Contains(err.Error(), "missing required host header"):
		code = p.refuse(ctx, string(ctx.Method()), "", "", "host", `Host "" refused: only localhost, 127.0.0.1 and [::1] are served (DNS-rebinding protection)`)
	case errors.As(err, &small):
		code = writeStatusCtx(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, "RequestHeaderFieldsTooLarge", "podmeta-ambassador: request head larger than the read buffer", "")
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		code = writeStatusCtx(ctx, fasthttp.StatusRequestEntityTooLarge, "RequestEntityTooLarge", fmt.Sprintf("podmeta-ambassador: request body larger than %d bytes", maxRequestBody), "")
	case errors.As(err, &netErr) && netErr.Timeout():
		code = writeStatusCtx(ctx, fasthttp.StatusRequestTimeout, "Timeout", "podmeta-ambassador: request not received in time", "")
	default:
		code = writeStatusCtx(ctx, fasthttp.StatusBadRequest, "BadRequest", "podmeta-ambassador: malformed request", "")
	}
	p.count(code, string(ctx.Method()))
}

func (p *proxy) refuse(ctx *fasthttp.RequestCtx, method, path, host string, rule, reason string) int {
	p.m.refused.WithLabelValues(rule).Inc()
	p.log.Info("refused", "method", method, "path", path, "host", host, "rule", rule)
	return writeStatusCtx(ctx, fasthttp.StatusForbidden, "Forbidden", fmt.Sprintf("podmeta-ambassador: refused by rule %q: %s", rule, reason), rule)
}

// upstreamError answers a failed upstream round trip, or nothing when the
// client went away first (499, counted only).
func (p *proxy) upstreamError(ctx *fasthttp.RequestCtx, method, path string, err error) int {
	code, reason, msg := classify(err, p.upstream.String(), p.caFile)
	if code == 499 {
		p.log.Debug("client went away", "method", method, "path", path)
		return 499
	}
	p.log.Warn("upstream failed", "method", method, "path", path, "code", code, "error", msg)
	return writeStatusCtx(ctx, code, reason, "podmeta-ambassador: "+msg, "")
}

// outURL is the upstream URL: the API server's address, then exactly the
// decoded path the policy matched (re-encoded canonically, any raw
// encoding the client sent dropped), so an encoded "%2F" can neither hide
// a segment from the policy nor add one upstream, and the query without
// parameters that do not parse (what httputil.ReverseProxy sends).
func (p *proxy) outURL(u *url.URL) *url.URL {
	return &url.URL{
		Scheme:   p.upstream.Scheme,
		Host:     p.upstream.Host,
		Path:     singleJoiningSlash(p.upstream.Path, u.Path),
		RawQuery: cleanQueryParams(u.RawQuery),
	}
}

// forward sends a plain request over the HTTP/1.1 pool. The request is
// rewritten in place (it is ours until the handler returns).
func (p *proxy) forward(ctx *fasthttp.RequestCtx, method string, out *url.URL, bearer string) int {
	hc, err := p.creds.client()
	if err != nil {
		return p.upstreamError(ctx, method, out.Path, &credentialError{err})
	}
	req := &ctx.Request
	clientClose := req.Header.ConnectionClose()
	req.SetRequestURI(out.String())
	req.URI().DisablePathNormalizing = true
	req.Header.SetHost(out.Host)
	dropHopHeaders(&req.Header)
	// No Content-Type of fasthttp's own (application/octet-stream, which
	// kube-apiserver answers with 415): without one it assumes JSON, as
	// for a direct call.
	req.Header.SetNoDefaultContentType(true)
	// The app's own credentials never leave the pod; the API server sees
	// only the pod's service account. Del takes every Authorization
	// value, Set would replace only the first.
	req.Header.Del(fasthttp.HeaderAuthorization)
	req.Header.Set(fasthttp.HeaderAuthorization, bearer)

	c := newCall(ctx.Conn())
	req.SetUserValue(callKey{}, c)
	res := fasthttp.AcquireResponse()
	start := time.Now()
	err = hc.Do(req, res)
	c.stop()
	req.RemoveUserValue(callKey{})
	p.m.upstream.Observe(time.Since(start).Seconds())
	if err != nil {
		fasthttp.ReleaseResponse(res)
		if errors.Is(err, errHungUp) {
			// Counted as 499. The app usually is gone; one that only
			// closed its sending side (which net/http's server takes
			// for a hang-up too) reads a 502, never a made-up answer.
			p.log.Debug("client went away", "method", method, "path", out.Path)
			writeStatusCtx(ctx, fasthttp.StatusBadGateway, "ServiceUnavailable", "podmeta-ambassador: "+err.Error(), "")
			ctx.SetConnectionClose()
			return 499
		}
		return p.upstreamError(ctx, method, out.Path, err)
	}
	code := res.StatusCode()
	if code == fasthttp.StatusUnauthorized {
		// The token may have rotated before the watcher noticed.
		p.creds.requestReload()
	}
	res.Header.CopyTo(&ctx.Response.Header)
	dropResponseHopHeaders(&ctx.Response.Header)
	if clientClose {
		ctx.SetConnectionClose()
	}
	body := res.BodyStream()
	if body == nil { // HEAD, 204, 304: no body, the connection is back
		fasthttp.ReleaseResponse(res)
		return code
	}
	up := &upstreamBody{body: body, res: res, release: c.release}
	up.Reader = readerFunc(up.readBody)
	if n := res.Header.ContentLength(); n >= 0 {
		ctx.Response.SetBodyStream(up, n)
		return code
	}
	if !bufferable(method, code, string(res.Header.ContentType())) {
		ctx.Response.SetBodyStream(up, -1)
		return code
	}
	bp := bodyBuffers.Get().(*[]byte)
	// Not io.ReadFull: a connection cut mid-body reads as
	// io.ErrUnexpectedEOF, which must not pass for a complete body.
	n := 0
	for n < len(*bp) && err == nil {
		var m int
		m, err = up.Read((*bp)[n:])
		n += m
	}
	switch err {
	case io.EOF: // the whole body fit
		ctx.Response.SetBody((*bp)[:n])
		bodyBuffers.Put(bp)
		up.Close()
	case nil: // larger: send what we have, then stream the rest
		up.Reader = io.MultiReader(bytes.NewReader(*bp), readerFunc(up.readBody))
		up.buf = bp
		ctx.Response.SetBodyStream(up, -1)
	default:
		bodyBuffers.Put(bp)
		up.closeWithError(err)
		ctx.Response.Reset()
		if clientClose {
			ctx.SetConnectionClose()
		}
		return p.upstreamError(ctx, method, out.Path, fmt.Errorf("read response body: %w", err))
	}
	return code
}

// upstreamBody is a response body being streamed from the HTTP/1.1 pool to
// the client; fasthttp closes it when the response is written (or fails),
// which hands the upstream connection back to the pool, or closes it if
// the body was not read to its end.
type upstreamBody struct {
	io.Reader           // what the client gets: body, or a buffered start then body
	body      io.Reader // the upstream body
	eof       bool      // body was read to its end
	res       *fasthttp.Response
	release   func(discard bool)
	buf       *[]byte
	once      sync.Once
}

func (b *upstreamBody) readBody(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *upstreamBody) Close() error { return b.closeWithError(nil) }

func (b *upstreamBody) closeWithError(cause error) error {
	var err error
	b.once.Do(func() {
		err = b.res.CloseBodyStream()
		b.release(cause != nil || !b.eof)
		fasthttp.ReleaseResponse(b.res)
		if b.buf != nil {
			bodyBuffers.Put(b.buf)
		}
	})
	return err
}

// readerFunc adapts a read method to io.Reader.
type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// Small complete responses (a get, a list of a few dozen objects) are read
// whole before the first byte goes to the client, so the client gets a
// Content-Length and the response leaves in one or two writes instead of a
// chunked write per upstream read plus a terminating chunk. Streams (watch,
// log follow, anything through a proxy subresource, and any response
// labelled stream=...) are never held back; bodies above bufferLimit stream
// after their first bufferLimit bytes. The limit holds a typical get or
// a list of a few dozen objects while keeping the pool small: every
// concurrent request holds one buffer.
const bufferLimit = 32 << 10

var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, bufferLimit); return &b }}

// streaming reports a request whose response may stream for as long as the
// client wants. Cheap and deliberately broad: any query mentioning watch or
// follow, any watch path or proxy subresource.
func streaming(rawQuery, path string) bool {
	return strings.Contains(rawQuery, "watch") || strings.Contains(rawQuery, "follow") ||
		strings.Contains(path, "/watch") || strings.Contains(path, "/proxy")
}

// bufferable reports a response worth reading whole before answering: a
// body (not HEAD, 1xx or 204) of a Kubernetes API type, not a stream.
func bufferable(method string, code int, contentType string) bool {
	if method == fasthttp.MethodHead || code < 200 || code == fasthttp.StatusNoContent {
		return false
	}
	ct := contentType
	if strings.Contains(ct, "stream=") {
		return false
	}
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	switch strings.ToLower(strings.TrimSpace(ct)) {
	case "application/json", "application/yaml", "application/vnd.kubernetes.protobuf":
		return true
	}
	return false
}

// hopHeaders are the hop-by-hop headers (RFC 9110 7.6.1) that a proxy must
// not pass on, the list httputil.ReverseProxy drops.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection", // non-standard but still sent by libcurl and rejected by e.g. google
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",      // canonicalized version of "TE"
	"Trailer", // not Trailers per URL above; https://www.rfc-editor.org/errata_search.php?eid=4522
	"Transfer-Encoding",
	"Upgrade",
}

// forwardingHeaders are client-supplied claims about earlier hops that
// httputil.ReverseProxy strips (with Rewrite): the app could spoof them.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

// connectionTokens are the header names a Connection header lists, which
// are hop-by-hop too.
func connectionTokens(values [][]byte) []string {
	var names []string
	for _, v := range values {
		for _, f := range strings.Split(string(v), ",") {
			if f = strings.TrimSpace(f); f != "" && !strings.EqualFold(f, "close") && !strings.EqualFold(f, "keep-alive") {
				names = append(names, f)
			}
		}
	}
	return names
}

func dropHopHeaders(h *fasthttp.RequestHeader) {
	if conn := h.PeekAll(fasthttp.HeaderConnection); len(conn) > 0 {
		for _, name := range connectionTokens(conn) {
			h.Del(name)
		}
	}
	// "Te: trailers" is end to end in practice (gRPC); ReverseProxy
	// keeps it too.
	te := strings.Contains(strings.ToLower(string(h.Peek("Te"))), "trailers")
	for _, name := range hopHeaders {
		h.Del(name)
	}
	for _, name := range forwardingHeaders {
		h.Del(name)
	}
	// The body has been read whole already; the API server must not
	// wait for a go-ahead that nobody will relay.
	h.Del("Expect")
	if te {
		h.Set("Te", "trailers")
	}
}

func dropResponseHopHeaders(h *fasthttp.ResponseHeader) {
	if conn := h.PeekAll(fasthttp.HeaderConnection); len(conn) > 0 {
		for _, name := range connectionTokens(conn) {
			h.Del(name)
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// singleJoiningSlash joins the upstream's base path and the request path
// the way httputil.ReverseProxy does.
func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

// cleanQueryParams removes query parameters that net/url cannot parse (a
// ';' separator, a bad escape), re-encoding the rest, as
// httputil.ReverseProxy does: the API server must not read the query
// differently from the policy and the streaming check.
func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// allowedHost is the DNS-rebinding defence of kubectl proxy's default
// --accept-hosts: a browser tricked into resolving evil.example to
// 127.0.0.1 still sends Host: evil.example.
func allowedHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return strings.EqualFold(host, "localhost") || host == "127.0.0.1" || host == "::1"
}

// crossSite explains why a request comes from a web page that is not served
// from this loopback host, or returns "". A browser in the pod reaches
// 127.0.0.1 without any DNS rebinding (the Host check does not help) and
// can open a WebSocket or fire no-cors GETs; API clients send neither
// Origin nor Sec-Fetch-Site.
func crossSite(h *fasthttp.RequestHeader) string {
	origins := h.PeekAll("Origin")
	for _, v := range origins {
		if !loopbackOrigin(string(v)) {
			return fmt.Sprintf("Origin %q refused: only pages on http(s)://localhost, 127.0.0.1 or [::1] (any port) are served", v)
		}
	}
	if len(origins) > 0 {
		// A page on another loopback port or name (localhost:3000 calling
		// 127.0.0.1:8001 is cross-site to the browser) is the pod's own.
		return ""
	}
	// No Origin: a navigation or a no-cors GET (an image, a link).
	for _, v := range h.PeekAll("Sec-Fetch-Site") {
		if strings.EqualFold(strings.TrimSpace(string(v)), "cross-site") {
			return "Sec-Fetch-Site cross-site refused: a page of another site sent the request"
		}
	}
	return ""
}

// loopbackOrigin reports an http or https origin on a loopback host; "null"
// (a sandboxed page, a file, a redirect) is not one.
func loopbackOrigin(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Opaque == "" && u.User == nil &&
		u.Path == "" && u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" && allowedHost(u.Host)
}

// bearerProtocolPrefix starts a WebSocket subprotocol that kube-apiserver's
// websocket authenticator reads as a bearer token.
const bearerProtocolPrefix = "base64url.bearer.authorization.k8s.io."

// dropBearerProtocols takes the bearer-token subprotocols out of
// Sec-WebSocket-Protocol (a comma-separated list, maybe on several lines),
// keeping the others in order; no protocol left, no header.
func dropBearerProtocols(h *fasthttp.RequestHeader) {
	vs := h.PeekAll(fasthttp.HeaderSecWebSocketProtocol)
	if len(vs) == 0 {
		return
	}
	var kept []string
	dropped := false
	for _, v := range vs {
		for _, p := range strings.Split(string(v), ",") {
			p = strings.TrimSpace(p)
			switch {
			case len(p) >= len(bearerProtocolPrefix) && strings.EqualFold(p[:len(bearerProtocolPrefix)], bearerProtocolPrefix):
				dropped = true
			case p != "":
				kept = append(kept, p)
			}
		}
	}
	if !dropped {
		return
	}
	h.Del(fasthttp.HeaderSecWebSocketProtocol)
	if len(kept) > 0 {
		h.Set(fasthttp.HeaderSecWebSocketProtocol, strings.Join(kept, ", "))
	}
}

var impersonatePrefix = []byte("impersonate-")

// impersonates reports an Impersonate-User, -Group, -Uid or -Extra-* header
// (any Impersonate-* name, so that a future one is caught too).
func impersonates(h *fasthttp.RequestHeader) bool {
	for k := range h.All() {
		if len(k) > len(impersonatePrefix) && bytes.EqualFold(k[:len(impersonatePrefix)], impersonatePrefix) {
			return true
		}
	}
	return false
}

// upgradeType reports a request asking to switch protocols (SPDY or
// WebSocket exec/attach/portforward, or any other upgrade): an Upgrade
// header or an "upgrade" Connection token, either one, is an upgrade for
// the policy. typ is what is asked for upstream, as httputil.ReverseProxy
// does it: the Upgrade header when Connection names it, else "" (the
// request goes up as an ordinary one, its hop-by-hop headers dropped).
func upgradeType(h *fasthttp.RequestHeader) (upgrade bool, typ string) {
	up := h.Peek("Upgrade")
	for _, v := range h.PeekAll(fasthttp.HeaderConnection) {
		for _, tok := range strings.Split(string(v), ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true, string(up)
			}
		}
	}
	return len(up) > 0, ""
}
