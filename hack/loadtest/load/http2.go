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
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
)

// MaxHTTP2Workers bounds the workers of an HTTP/2 run: a client may open
// 100 streams before the server's settings arrive (Go's server allows at
// least as many), and past the limit Go's transport dials another
// connection.
const MaxHTTP2Workers = 100

// http2Client is the HTTP/2 mode's client: one connection (Go's transport
// puts concurrent requests on one HTTP/2 connection, as kube-apiserver's
// webhook client does), counted in conns when it is made. closeAll closes
// its connections at the end of a run, also one with streams that the
// run's end cancelled, which CloseIdleConnections would leave open (and a
// server being stopped would then wait for).
func http2Client(cfg *Config, t Target, tlsConf *tls.Config, conns *atomic.Int64) (c *http.Client, closeAll func()) {
	var mu sync.Mutex
	var open []net.Conn
	conf := tlsConf.Clone()
	conf.NextProtos = []string{"h2"}
	tr := &http.Transport{
		ForceAttemptHTTP2:  true,
		MaxConnsPerHost:    1, // the workers starting at once would each dial
		DisableCompression: true,
		// Connect as dial does, to sort failures alike.
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			tc, kind, err := connect(ctx, t.Addr, cfg.Timeout, conf, nil)
			if err != nil {
				return nil, &connectError{kind, err}
			}
			conns.Add(1)
			mu.Lock()
			open = append(open, tc)
			mu.Unlock()
			return tc, nil
		},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)                                     // HTTP/2 only: never fall back to HTTP/1.1
	tr.HTTP2 = &http.HTTP2Config{StrictMaxConcurrentRequests: true} // one connection, whatever the server allows
	client := &http.Client{
		Transport: tr, Timeout: cfg.Timeout,
		// An answer is the server's, as on the HTTP/1.1 path: a redirect
		// is a non-200 status, not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return client, func() {
		tr.CloseIdleConnections()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	}
}

// connectError is a failed connect, sorted as dial sorts it.
type connectError struct {
	kind string
	err  error
}

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// doHTTP2 sends one review on the shared HTTP/2 connection and validates
// the answer, like do.
func (w *worker) doHTTP2(ctx context.Context) (time.Duration, string, error) {
	uid := corpus.NewUID(w.rng)
	// A body of its own: after a timeout the transport may still read the
	// last one while the worker builds the next.
	body := w.cfg.Review.AppendBody(make([]byte, 0, w.cfg.Review.Len()), uid)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+w.target.Host+w.target.Path, bytes.NewReader(body))
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
	answer, err := readAll(resp.Body, w.respBuf[:0])
	w.respBuf = answer
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
		return 0, ErrStatus, fmt.Errorf("status %s: %.200s", resp.Status, answer)
	}
	if kind, err := w.val.check(answer, uid); kind != "" {
		return 0, kind, err
	}
	return lat, "", nil
}

// http2ErrKind sorts a failed HTTP/2 request into the kinds of Result.Errors
// as dial and do do for HTTP/1.1 (a failed connect carries its kind). Without its own connection a request
// cannot tell "closed unread" from "dropped": the transport retries streams
// the server refused (seconds of latency, or a timeout), and anything else
// that fails after the connection was made counts as dropped.
func http2ErrKind(err error) string {
	var ce *connectError
	switch {
	case errors.As(err, &ce):
		return ce.kind
	case isTimeout(err):
		return ErrTimeout
	}
	return ErrDropped
}
