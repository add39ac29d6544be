package ambassador

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/podmeta/podmeta/policy"
)

// proxy is the localhost-facing handler: Host check, policy, then a reverse
// proxy to the API server with the pod's token.
type proxy struct {
	upstream *url.URL
	caFile   string
	policy   policy.Policy
	creds    *credentials
	log      *slog.Logger
	m        *metrics
	rp       *httputil.ReverseProxy
}

func newProxy(upstream *url.URL, caFile string, pol policy.Policy, creds *credentials, log *slog.Logger, m *metrics) *proxy {
	p := &proxy{upstream: upstream, caFile: caFile, policy: pol, creds: creds, log: log, m: m}
	p.rp = &httputil.ReverseProxy{
		Rewrite: p.rewrite,
		// FlushInterval 0, not -1: ReverseProxy already flushes every
		// write of a response without Content-Length (every watch,
		// every log follow, any chunked stream), and a response of
		// known length needs no flushing. -1 would add a flush per
		// read of a known-length body.
		FlushInterval: 0,
		// Without a pool every request allocates a 32 KiB copy buffer.
		BufferPool:     bufferPool{},
		Transport:      roundTripper{p},
		ModifyResponse: bufferComplete,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return p
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w}
	p.serve(rec, r)
	code := rec.code
	if code == 0 {
		// Hijacked for an upgrade (101) without a WriteHeader call.
		code = http.StatusSwitchingProtocols
	}
	p.m.requests.WithLabelValues(strconv.Itoa(code), methodLabel(r.Method)).Inc()
}

func (p *proxy) serve(w *recorder, r *http.Request) {
	if !allowedHost(r.Host) {
		p.refuse(w, r, http.StatusForbidden, "host", fmt.Sprintf("Host %q refused: only localhost, 127.0.0.1 and [::1] are served (DNS-rebinding protection)", r.Host))
		return
	}
	d := p.policy.Decide(policy.Request{Method: r.Method, Path: r.URL.Path, Upgrade: isUpgrade(r.Header)})
	if !d.Allowed {
		p.refuse(w, r, http.StatusForbidden, d.Rule, d.Reason)
		return
	}
	if _, err := p.creds.bearer(); err != nil {
		p.upstreamError(w, r, &credentialError{err})
		return
	}
	if p.log.Enabled(r.Context(), slog.LevelDebug) {
		p.log.Debug("proxy", "method", r.Method, "path", r.URL.Path, "rule", d.Rule)
	}
	p.rp.ServeHTTP(w, r)
}

func (p *proxy) refuse(w http.ResponseWriter, r *http.Request, code int, rule, reason string) {
	p.m.refused.WithLabelValues(rule).Inc()
	p.log.Info("refused", "method", r.Method, "path", r.URL.Path, "host", r.Host, "rule", rule)
	writeStatus(w, code, "Forbidden", fmt.Sprintf("podmeta-ambassador: refused by rule %q: %s", rule, reason), rule)
}

// rewrite builds the upstream request. The path forwarded is exactly the
// decoded path the policy matched (RawPath dropped), so an encoded "%2F" can
// neither hide a segment from the policy nor add one upstream.
func (p *proxy) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.RawPath = ""
	pr.SetURL(p.upstream)
	h := pr.Out.Header
	// The app's own credentials never leave the pod; the API server sees
	// only the pod's service account.
	h.Del("Authorization")
	if bearer, err := p.creds.bearer(); err == nil {
		h.Set("Authorization", bearer)
	}
}

func (p *proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	code, reason, msg := classify(err, p.upstream.String(), p.caFile)
	if code == 499 {
		if rec, ok := w.(*recorder); ok {
			rec.code = 499
		}
		p.log.Debug("client went away", "method", r.Method, "path", r.URL.Path)
		return
	}
	p.log.Warn("upstream failed", "method", r.Method, "path", r.URL.Path, "code", code, "error", msg)
	writeStatus(w, code, reason, "podmeta-ambassador: "+msg, "")
}

// roundTripper sends through the current CA-verified transport, times the
// upstream and reloads credentials when the API server rejects the token.
type roundTripper struct{ p *proxy }

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	t, err := rt.p.creds.transport()
	if err != nil {
		return nil, &credentialError{err}
	}
	start := time.Now()
	res, err := t.RoundTrip(req)
	rt.p.m.upstream.Observe(time.Since(start).Seconds())
	if err == nil && res.StatusCode == http.StatusUnauthorized {
		// The token may have rotated before the watcher noticed.
		rt.p.creds.requestReload()
	}
	return res, err
}

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

func bufferComplete(res *http.Response) error {
	if res.ContentLength != -1 || !bufferable(res) {
		return nil
	}
	bp := bodyBuffers.Get().(*[]byte)
	n, err := io.ReadFull(res.Body, *bp)
	switch err {
	case io.EOF, io.ErrUnexpectedEOF: // the whole body fit
		res.Body.Close()
		res.Body = &bufferedBody{Reader: bytes.NewReader((*bp)[:n]), buf: bp}
		res.ContentLength = int64(n)
		res.Header.Set("Content-Length", strconv.Itoa(n))
		res.TransferEncoding = nil
	case nil: // larger: send what we have, then stream the rest
		res.Body = &bufferedBody{Reader: io.MultiReader(bytes.NewReader(*bp), res.Body), buf: bp, rest: res.Body}
	default:
		res.Body.Close()
		bodyBuffers.Put(bp)
		return fmt.Errorf("read response body: %w", err)
	}
	return nil
}

func bufferable(res *http.Response) bool {
	req := res.Request
	if req.Method == http.MethodHead || res.StatusCode < 200 || res.StatusCode == http.StatusNoContent {
		return false
	}
	ct := res.Header.Get("Content-Type")
	if strings.Contains(ct, "stream=") {
		return false
	}
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	switch strings.ToLower(strings.TrimSpace(ct)) {
	case "application/json", "application/yaml", "application/vnd.kubernetes.protobuf":
	default:
		return false
	}
	// Cheap and deliberately broad: any query mentioning watch or follow,
	// any watch path or proxy subresource streams.
	q, path := req.URL.RawQuery, req.URL.Path
	return !strings.Contains(q, "watch") && !strings.Contains(q, "follow") &&
		!strings.Contains(path, "/watch") && !strings.Contains(path, "/proxy")
}

type bufferedBody struct {
	io.Reader
	buf  *[]byte
	rest io.Closer // upstream body still being read, if any
}

func (b *bufferedBody) Close() error {
	var err error
	if b.rest != nil {
		err = b.rest.Close()
		b.rest = nil
	}
	if b.buf != nil {
		bodyBuffers.Put(b.buf)
		b.buf = nil
	}
	return err
}

type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

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

// isUpgrade reports a request asking to switch protocols (SPDY or
// WebSocket exec/attach/portforward, or any other upgrade).
func isUpgrade(h http.Header) bool {
	if h.Get("Upgrade") != "" {
		return true
	}
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// recorder remembers the status code for metrics. Unwrap lets
// http.ResponseController (used by ReverseProxy) reach Flush and Hijack.
type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 && code >= 200 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
