package ambassador

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// plainTransport is the plain pool's fasthttp.RoundTripper: fasthttp's own
// round trip (acquire a pooled connection, write the request, read the
// response head, stream the body), except that the connection is known to
// the request's hangup watch while the head is awaited, so an app that goes
// away cancels its request at the API server (kube-apiserver stops a
// request when its connection closes), as net/http's ReverseProxy did, and
// that the connection goes back to the pool when forward closes the body,
// not when fasthttp's wrapper would.
//
// The pool sets no read or write timeouts and no maximum connection age
// (see plainClient); this transport does not implement them
// (TestPlainClientHasNoTimeouts holds plainClient to that).
type plainTransport struct{}

// errHungUp: the app closed its connection before the API server answered;
// forward counts it as 499 and writes a 502 with Connection: close (which
// only a client that merely half-closed reads).
var errHungUp = fmt.Errorf("the app closed its connection before the API server answered: %w", context.Canceled)

// callKey is the request user value under which forward leaves its *call.
type callKey struct{}

// errNoCall: a request reached plainTransport without forward's call, so
// nobody would hand its connection back to the pool.
var errNoCall = errors.New("podmeta-ambassador: internal error: plain request without a call")

func (plainTransport) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (retry bool, err error) {
	c, _ := req.UserValue(callKey{}).(*call)
	if c == nil {
		return false, errNoCall
	}
	cc, err := hc.AcquireConn(0, req.ConnectionClose())
	if err != nil {
		return false, err
	}
	conn := cc.Conn()
	if !c.attach(conn) {
		hc.ReleaseConn(cc) // nothing was written on it
		return false, errHungUp
	}
	resp.ParseNetConn(conn)
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if err != nil {
		hc.CloseConn(cc)
		if c.detach() {
			return false, errHungUp
		}
		return true, err
	}
	if req.Header.IsHead() {
		resp.SkipBody = true
	}
	br := hc.AcquireReader(conn)
	err = resp.ReadLimitBody(br, hc.MaxResponseBodySize)
	if c.detach() {
		err = errHungUp
	}
	if err != nil {
		_ = resp.CloseBodyStream() // a head may have been read: its stream reads br
		hc.ReleaseReader(br)
		hc.CloseConn(cc)
		return !errors.Is(err, errHungUp) && !errors.Is(err, fasthttp.ErrBodyTooLarge), err
	}
	closeConn := req.ConnectionClose() || resp.ConnectionClose()
	release := func(discard bool) {
		hc.ReleaseReader(br)
		if discard || closeConn || resp.ConnectionClose() {
			hc.CloseConn(cc)
		} else {
			hc.ReleaseConn(cc)
		}
	}
	if resp.BodyStream() == nil { // no body: HEAD, 1xx, 204, 304
		release(false)
		return false, nil
	}
	c.release = release
	return false, nil
}

// call is what forward and plainTransport share about one plain request:
// the watch for the app hanging up while the API server has not answered,
// and how to hand the upstream connection back once the body is done.
type call struct {
	release func(discard bool) // set by RoundTrip when a body streams

	watch *hangupWatch // nil: the app's connection cannot be watched
	timer *time.Timer  // starts the watch

	mu       sync.Mutex
	upstream net.Conn // the connection the head is awaited on
	gone     bool     // the app hung up
}

// hangupWatchAfter is how long a request waits for the API server's answer
// before its app connection is watched: most requests are answered sooner
// and cost no watch at all.
const hangupWatchAfter = 50 * time.Millisecond

// newCall returns the call of a request from the app connection conn; the
// hang-up watch starts after hangupWatchAfter unless stop comes first.
func newCall(conn net.Conn) *call {
	c := &call{watch: newHangupWatch(conn)}
	if c.watch != nil {
		c.timer = time.AfterFunc(hangupWatchAfter, func() { c.watch.run(c.hungUp) })
	}
	return c
}

// hungUp closes the upstream connection the head is awaited on: the head
// read fails at once, and the API server sees the close.
func (c *call) hungUp() {
	c.mu.Lock()
	c.gone = true
	up := c.upstream
	c.mu.Unlock()
	if up != nil {
		up.Close()
	}
}

// stop ends the watch (waiting for it) once the API server has answered or
// the round trip has failed.
func (c *call) stop() {
	if c.timer != nil && !c.timer.Stop() {
		c.watch.stop()
	}
}

// attach records the upstream connection the head will be awaited on; false
// if the app has hung up already.
func (c *call) attach(up net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.upstream = up
	return !c.gone
}

// detach forgets the upstream connection; true if the app hung up while it
// was attached (the connection was closed under the round trip).
func (c *call) detach() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.upstream = nil
	return c.gone
}
