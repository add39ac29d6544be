package load

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
)

// http2Client is the HTTP/2 mode's client: one connection (Go's transport
// puts concurrent requests on one HTTP/2 connection, as kube-apiserver's
// webhook client does), counted in conns when it is made. closeAll closes
// its connections at the end of a run, also one with streams that the
// run's end cancelled, which CloseIdleConnections would leave open (and a
// server being stopped would then wait for).
func http2Client(cfg *Config, t Target, tlsConf *tls.Config, conns *atomic.Int64) (c *http.Client, closeAll func()) {
	var mu sync.Mutex
	var open []net.Conn
	tr := &http.Transport{
		TLSClientConfig:     tlsConf.Clone(),
		ForceAttemptHTTP2:   true,
		MaxConnsPerHost:     1, // the workers starting at once would each dial
		DisableCompression:  true,
		TLSHandshakeTimeout: cfg.Timeout,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: cfg.Timeout}
			c, err := d.DialContext(ctx, "tcp", t.Addr)
			if err == nil {
				conns.Add(1)
				mu.Lock()
				open = append(open, c)
				mu.Unlock()
			}
			return c, err
		},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true) // HTTP/2 only: never fall back to HTTP/1.1
	return &http.Client{Transport: tr, Timeout: cfg.Timeout}, func() {
		tr.CloseIdleConnections()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	}
}

// doHTTP2 sends one review on the shared HTTP/2 connection and validates
// the answer, like do.
func (w *worker) doHTTP2(ctx context.Context) (time.Duration, string, error) {
	uid := corpus.NewUID(w.rng)
	w.bodyBuf = w.cfg.Review.AppendBody(w.bodyBuf[:0], uid)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+w.target.Host+w.target.Path, bytes.NewReader(w.bodyBuf))
	if err != nil {
		return 0, ErrWrite, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "podmeta-loadtest")
	start := time.Now()
	resp, err := w.h2.Do(req)
	if err != nil {
		return 0, http2ErrKind(err), err
	}
	body, err := readAll(resp.Body, w.respBuf[:0])
	w.respBuf = body
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		if isTimeout(err) {
			return 0, ErrTimeout, err
		}
		return 0, ErrRead, fmt.Errorf("read response body: %w", err)
	}
	if resp.ProtoMajor != 2 {
		return 0, ErrRead, fmt.Errorf("answered over %s, not HTTP/2", resp.Proto)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, ErrStatus, fmt.Errorf("status %s: %.200s", resp.Status, body)
	}
	if kind, err := w.val.check(body, uid); kind != "" {
		return 0, kind, err
	}
	return lat, "", nil
}

// http2ErrKind sorts a failed HTTP/2 request into the kinds of Result.Errors.
// Without its own connection a request cannot tell "closed unread" from
// "dropped" apart: a stream refused by the server is the former, anything
// else after the connection was made the latter.
func http2ErrKind(err error) string {
	var tlsErr *tls.CertificateVerificationError
	var opErr *net.OpError
	isOp := errors.As(err, &opErr)
	switch {
	case isTimeout(err):
		return ErrTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrRefused
	case errors.As(err, &tlsErr), isOp && opErr.Op == "remote error":
		return ErrHandshake // a TLS alert: also a server that does not speak HTTP/2
	case isOp && opErr.Op == "dial":
		return ErrDial
	}
	return ErrDropped
}
