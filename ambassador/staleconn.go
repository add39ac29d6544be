package ambassador

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"syscall"

	"github.com/valyala/fasthttp"
)

// errStaleConn: the API server had closed a pooled connection (restart,
// idle timeout, a load balancer's reset) before a request was written on
// it. Nothing was sent, so the request may go again on another connection,
// whatever its method.
var errStaleConn = errors.New("podmeta-ambassador: pooled connection closed by the API server before the request was sent")

// checkedConn is a connection of the plain pool. fasthttp, unlike net/http,
// does not watch idle connections, so it learns that the API server closed
// one only after writing the next request on it; it then retries GET, HEAD
// and PUT, but a POST, PATCH or DELETE would fail, although the API server
// never saw it. So before such a request is written on a connection that
// has served one already, the socket is checked (one non-blocking peek): an
// idle HTTP/1.1 connection with anything to read (a FIN, a reset, a TLS
// close_notify) is dead, and the write fails with errStaleConn, which
// retryPlain lets fasthttp retry.
type checkedConn struct {
	*tls.Conn
	raw syscall.RawConn
	// read: a response was read since the last write, so the next write
	// starts a request on a reused connection.
	read bool
}

func (c *checkedConn) Read(p []byte) (int, error) {
	c.read = true
	return c.Conn.Read(p)
}

func (c *checkedConn) Write(p []byte) (int, error) {
	if c.read {
		c.read = false
		// p starts with the request line: fasthttp writes through a
		// buffer, and a request's first write is its start.
		if !retriedAnyway(p) && peerClosed(c.raw) {
			return 0, errStaleConn
		}
	}
	return c.Conn.Write(p)
}

// idempotentMethods are the ones fasthttp retries on any connection error
// (its isIdempotent); retryPlain keeps that rule.
var idempotentMethods = [...]string{"GET", "HEAD", "PUT", "QUERY"}

// retriedAnyway: the request starting with this request line has one of
// idempotentMethods.
func retriedAnyway(requestStart []byte) bool {
	m, _, ok := bytes.Cut(requestStart, []byte(" "))
	return ok && idempotent(m)
}

func idempotent(method []byte) bool {
	for _, m := range idempotentMethods {
		if string(method) == m {
			return true
		}
	}
	return false
}

// retryPlain is the plain pool's retry rule: fasthttp's default
// (idempotent methods only) plus any request that a stale connection kept
// from being sent. A connection found closed by the API server usually
// means it dropped them all (a restart): the other idle ones are closed
// too, rather than each costing one of the request's attempts (fasthttp
// makes five), which a GET on a pool of dead connections would run out of.
func retryPlain(hc *fasthttp.HostClient) fasthttp.RetryIfErrFunc {
	return func(req *fasthttp.Request, _ int, err error) (resetTimeout, retry bool) {
		if errors.Is(err, errStaleConn) {
			hc.CloseIdleConnections()
			return false, true
		}
		retry = idempotent(req.Header.Method())
		if retry && connClosed(err) {
			hc.CloseIdleConnections()
		}
		return false, retry
	}
}

// connClosed: err says the connection was closed or reset under a request.
func connClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, fasthttp.ErrConnectionClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
