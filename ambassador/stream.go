package ambassador

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// hijack hands a stream or an upgrade to stream, which runs on the client
// connection once the handler has returned. Everything stream needs is
// copied out of ctx first: fasthttp reuses it.
func (p *proxy) hijack(ctx *fasthttp.RequestCtx, method string, out *url.URL, bearer, upType string) {
	req := &http.Request{
		Method:     method,
		URL:        out,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header),
		Host:       out.Host,
	}
	for k, v := range ctx.Request.Header.All() {
		switch key := http.CanonicalHeaderKey(string(k)); key {
		case "Host", "Content-Length":
		default:
			req.Header.Add(key, string(v))
		}
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		// Go's client would send its own; the API server's audit log
		// should show the app's (here: none), as on the plain path.
		req.Header["User-Agent"] = []string{""}
	}
	te := strings.Contains(strings.ToLower(req.Header.Get("Te")), "trailers")
	removeHopByHop(req.Header)
	for _, name := range forwardingHeaders {
		req.Header.Del(name)
	}
	req.Header.Del("Expect") // the body has been read whole already
	if te {
		req.Header.Set("Te", "trailers")
	}
	if upType != "" {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", upType)
	}
	// The app's own credentials never leave the pod.
	req.Header.Set("Authorization", bearer)
	if b := ctx.Request.Body(); len(b) > 0 {
		body := bytes.Clone(b)
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
	}
	http11 := ctx.Request.Header.IsHTTP11()

	ctx.HijackSetNoResponse(true)
	// fasthttp forgets a connection once it is hijacked (StateHijacked
	// is final); it stays in p.conns, for the shutdown, until the stream
	// is over.
	raw := ctx.Conn()
	ctx.Hijack(func(c net.Conn) {
		defer p.conns.remove(raw)
		p.count(p.stream(c, raw, req, upType, http11), method)
	})
}

// stream does for one hijacked connection what httputil.ReverseProxy did:
// the request goes up over the HTTP/2 transport with a context that ends
// when the client hangs up (or shutdown cuts the connection), the response
// comes back flushed per upstream read, and a 101 becomes a two-way pipe. It
// returns the status code for the metrics. The connection is not reused.
// raw is the connection under c (fasthttp wraps a hijacked one), for the
// upgrade's hang-up watch.
func (p *proxy) stream(c, raw net.Conn, req *http.Request, upType string, http11 bool) int {
	defer c.Close()
	t, err := p.creds.transport()
	if err != nil {
		return p.streamError(c, req, &credentialError{err})
	}
	rctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch := func() {}
	if upType != "" {
		// An upgrade's connection carries the client's side of the new
		// protocol, which the client sends only after the 101: until
		// the API server answers, the socket is watched, not read, and
		// a hang-up cancels the request (the pipe notices one later).
		if w := newHangupWatch(raw); w != nil {
			go w.run(cancel)
			stopWatch = w.stop
		}
	} else {
		// The client sends nothing more on this connection; a read
		// ending means it went away.
		gone := make(chan struct{})
		go func() {
			defer close(gone)
			_, _ = io.Copy(io.Discard, c)
			cancel()
		}()
		defer func() {
			c.Close()
			<-gone
		}()
	}

	start := time.Now()
	res, err := t.RoundTrip(req.WithContext(rctx))
	stopWatch()
	if err == nil && rctx.Err() != nil {
		// The answer raced the client's hang-up (the API server saw the
		// cancel and answered anyway): nobody is there to take it, and
		// a 101 would start a pipe to a closed connection.
		res.Body.Close()
		err = rctx.Err()
	}
	p.m.upstream.Observe(time.Since(start).Seconds())
	if err != nil {
		return p.streamError(c, req, err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusUnauthorized {
		// The token may have rotated before the watcher noticed.
		p.creds.requestReload()
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		return p.upgrade(c, req, res, upType)
	}

	w := newConnResponseWriter(c)
	h := w.Header()
	for k, vs := range res.Header {
		h[k] = vs
	}
	removeHopByHop(h)
	h.Del("Content-Length")
	body := req.Method != http.MethodHead && res.StatusCode >= 200 &&
		res.StatusCode != http.StatusNoContent && res.StatusCode != http.StatusNotModified
	chunked := false
	switch {
	case res.ContentLength >= 0:
		h.Set("Content-Length", strconv.FormatInt(res.ContentLength, 10))
	case body && http11:
		h.Set("Transfer-Encoding", "chunked")
		chunked = true
	}
	h.Set("Connection", "close")
	w.WriteHeader(res.StatusCode)
	// The head goes out at once: a watch may send its first event much
	// later.
	if err := w.bw.Flush(); err != nil || !body {
		return res.StatusCode
	}
	var dst io.Writer = w.bw
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(w.bw)
		dst = cw
	}
	bp := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(bp)
	for {
		n, rerr := res.Body.Read(*bp)
		if n > 0 {
			if _, err := dst.Write((*bp)[:n]); err != nil {
				return res.StatusCode
			}
			// Every upstream read reaches the client at once: a watch
			// event must not wait for the next one.
			if err := w.bw.Flush(); err != nil {
				return res.StatusCode
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// Cut mid-body: the client sees a truncated response,
			// never a clean end.
			if !errors.Is(rerr, context.Canceled) {
				p.log.Warn("upstream stream failed", "method", req.Method, "path", req.URL.Path, "error", rerr.Error())
			}
			return res.StatusCode
		}
	}
	if cw != nil {
		_ = cw.Close()
		_, _ = w.bw.WriteString("\r\n") // no trailers
	}
	_ = w.bw.Flush()
	return res.StatusCode
}

// upgrade relays a 101 and pipes both ways until either side closes.
func (p *proxy) upgrade(c net.Conn, req *http.Request, res *http.Response, upType string) int {
	resUpType := ""
	if headerHasToken(res.Header, "Connection", "upgrade") {
		resUpType = res.Header.Get("Upgrade")
	}
	if !strings.EqualFold(upType, resUpType) {
		return p.streamError(c, req, fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUpType, upType))
	}
	back, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		return p.streamError(c, req, errors.New("101 switching protocols response with non-writable body"))
	}
	w := newConnResponseWriter(c)
	h := w.Header()
	for k, vs := range res.Header {
		h[k] = vs
	}
	removeHopByHop(h)
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", resUpType)
	w.WriteHeader(http.StatusSwitchingProtocols)
	if err := w.bw.Flush(); err != nil {
		return http.StatusSwitchingProtocols
	}
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(back, c); errc <- err }()
	go func() { _, err := io.Copy(c, back); errc <- err }()
	<-errc
	back.Close()
	c.Close()
	<-errc
	return http.StatusSwitchingProtocols
}

// streamError answers a failed round trip on a hijacked connection, or
// nothing when the client went away first (499, counted only).
func (p *proxy) streamError(c net.Conn, req *http.Request, err error) int {
	code, reason, msg := classify(err, p.upstream.String(), p.caFile)
	if code == 499 {
		p.log.Debug("client went away", "method", req.Method, "path", req.URL.Path)
		return 499
	}
	p.log.Warn("upstream failed", "method", req.Method, "path", req.URL.Path, "code", code, "error", msg)
	w := newConnResponseWriter(c)
	w.Header().Set("Connection", "close")
	writeStatus(w, code, reason, "podmeta-ambassador: "+msg, "")
	_ = w.bw.Flush()
	return code
}

// connResponseWriter writes an HTTP/1.1 response head and body to a
// hijacked connection, buffered until the caller flushes bw.
type connResponseWriter struct {
	bw    *bufio.Writer
	h     http.Header
	wrote bool
}

func newConnResponseWriter(c net.Conn) *connResponseWriter {
	return &connResponseWriter{bw: bufio.NewWriterSize(c, 4<<10), h: make(http.Header)}
}

func (w *connResponseWriter) Header() http.Header { return w.h }

func (w *connResponseWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	fmt.Fprintf(w.bw, "HTTP/1.1 %03d %s\r\n", code, text)
	_ = w.h.Write(w.bw)
	_, _ = w.bw.WriteString("\r\n")
}

func (w *connResponseWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.bw.Write(b)
}

// removeHopByHop drops the hop-by-hop headers and those the Connection
// header names, as httputil.ReverseProxy does.
func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for _, sf := range strings.Split(f, ",") {
			if sf = strings.TrimSpace(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), token) {
				return true
			}
		}
	}
	return false
}
