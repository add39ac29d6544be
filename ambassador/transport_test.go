package ambassador

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/policy"
)

// TestPlainHangupCancelsUpstream: an app that hangs up while a plain request
// (a get, a list) waits for the API server cancels it there too: the
// ambassador closes the upstream connection, which ends the request's
// context at the API server (kube-apiserver stops its work then). The pool
// serves the next request as usual.
func TestPlainHangupCancelsUpstream(t *testing.T) {
	for _, wait := range []time.Duration{0, 3 * hangupWatchAfter} {
		t.Run(fmt.Sprintf("hang-up %v after the request", wait), func(t *testing.T) {
			api := newBlockingAPI(t, func(r *http.Request) bool { return r.URL.Path == "/api/v1/namespaces/a/pods" }, nil)
			vol := newSAVolume(t, "tok", api.caPEM())
			h := startAmbassador(t, api.URL, vol.token(), vol.ca())
			hangUp(t, h, api, "/api/v1/namespaces/a/pods", wait)

			code, body := h.do(t, http.MethodGet, "/api/v1/namespaces/b/pods", nil)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, `{"kind":"PodList"}`, body)
		})
	}
}

// TestSlowAnswerKeepsConnections: a request answered after the hang-up watch
// has started is served normally, and both the app's keep-alive connection
// and the upstream connection are reused afterwards.
func TestSlowAnswerKeepsConnections(t *testing.T) {
	var mu sync.Mutex
	upstreamConns := map[string]bool{}
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamConns[r.RemoteAddr] = true
		mu.Unlock()
		if r.URL.Query().Get("slow") != "" {
			time.Sleep(4 * hangupWatchAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"PodList"}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	var reused []bool
	for _, q := range []string{"slow=1", "", "slow=1", ""} {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, h.url+"/api/v1/pods?"+q, nil)
		require.NoError(t, err)
		res, err := h.client.Do(req)
		require.NoError(t, err)
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		assert.Equal(t, http.StatusOK, res.StatusCode)
		assert.Equal(t, `{"kind":"PodList"}`, string(b))
	}
	assert.Equal(t, []bool{false, true, true, true}, reused, "the app's connection is kept alive")
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, upstreamConns, 1, "one upstream connection served every request")
}

// TestUpstreamConnectionReused: whatever the body (known length, chunked and
// streamed past bufferLimit, none for HEAD and 204), the upstream
// connection goes back to the pool once the body is done, and a body the
// app did not read to its end retires its connection instead.
func TestUpstreamConnectionReused(t *testing.T) {
	var mu sync.Mutex
	upstreamConns := map[string]bool{}
	big := strings.Repeat("x", 3*bufferLimit)
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamConns[r.RemoteAddr] = true
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/known":
			w.Header().Set("Content-Length", "2")
			_, _ = io.WriteString(w, "{}")
		case "/chunked":
			_, _ = io.WriteString(w, big[:bufferLimit])
			http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, big[bufferLimit:])
		case "/small-chunked":
			_, _ = io.WriteString(w, "[")
			http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "]")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/endless":
			for r.Context().Err() == nil {
				if _, err := io.WriteString(w, big); err != nil {
					return
				}
			}
		}
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	for _, tc := range []struct{ method, path, want string }{
		{http.MethodGet, "/known", "{}"},
		{http.MethodGet, "/chunked", big},
		{http.MethodGet, "/small-chunked", "[]"},
		{http.MethodHead, "/known", ""},
		{http.MethodGet, "/empty", ""},
		{http.MethodGet, "/known", "{}"},
	} {
		_, body := h.do(t, tc.method, tc.path, nil)
		assert.Equal(t, tc.want, body, "%s %s", tc.method, tc.path)
	}
	mu.Lock()
	assert.Len(t, upstreamConns, 1, "one upstream connection served every request")
	mu.Unlock()

	// The app reads a few bytes of a body that does not end and hangs up:
	// that connection is closed, not pooled with a body half read.
	res, err := h.client.Get(h.url + "/endless")
	require.NoError(t, err)
	_, err = io.ReadFull(res.Body, make([]byte, 10))
	require.NoError(t, err)
	res.Body.Close()
	h.client.CloseIdleConnections()
	require.Eventually(t, func() bool { return h.srv.proxy.conns.open() == 0 }, 5*time.Second, 10*time.Millisecond,
		"the ambassador noticed the hang-up")
	hc, err := h.srv.creds.client()
	require.NoError(t, err)
	assert.Eventually(t, func() bool { return hc.ConnsCount() == 0 }, 5*time.Second, 10*time.Millisecond,
		"the half-read connection was closed, not pooled")
	_, body := h.do(t, http.MethodGet, "/known", nil)
	assert.Equal(t, "{}", body, "served on a fresh connection")
}

// TestHalfCloseAnsweredNotFaked: an app that closes its sending side after
// the request is taken for gone, as net/http's server takes it (the request
// is canceled upstream), but if it still reads, it reads an error, never
// an empty 200.
func TestHalfCloseAnsweredNotFaked(t *testing.T) {
	canceled := make(chan struct{}, 1)
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		// Like the API server, read the body first: net/http notices a
		// closed connection only after that.
		_, _ = io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
			canceled <- struct{}{}
		case <-time.After(5 * time.Second):
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"ConfigMap"}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, ""))
	conn, err := net.Dial("tcp", h.srv.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "POST /api/v1/namespaces/a/configmaps HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
	require.NoError(t, err)
	require.NoError(t, conn.(*net.TCPConn).CloseWrite())
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusBadGateway, res.StatusCode, "%s", b)
	assert.Contains(t, string(b), "closed its connection before the API server answered")
	assert.True(t, res.Close, "Connection: close")
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Error("the request was not canceled at the API server")
	}
}

// TestPlainClientHasNoTimeouts: plainTransport implements none of
// fasthttp's per-connection timeouts or the maximum connection age; setting
// one in plainClient would be silently ignored.
func TestPlainClientHasNoTimeouts(t *testing.T) {
	hc := newPlainClient(&url.URL{Scheme: "https", Host: "127.0.0.1:6443"}, nil)
	assert.Zero(t, hc.ReadTimeout)
	assert.Zero(t, hc.WriteTimeout)
	assert.Zero(t, hc.MaxConnDuration)
	assert.IsType(t, plainTransport{}, hc.Transport)
}

// TestHangupWatchStopRace: answers that arrive just as the hang-up watch
// starts (the timer firing while forward stops it) never leave a request
// hanging or a connection unusable.
func TestHangupWatchStopRace(t *testing.T) {
	var n atomic.Int64
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		// 40..59 ms, around hangupWatchAfter.
		time.Sleep(hangupWatchAfter - 10*time.Millisecond + time.Duration(n.Add(1)%20)*time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				res, err := h.client.Get(h.url + "/api/v1/pods")
				if !assert.NoError(t, err) {
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				assert.Equal(t, "{}", string(b))
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("requests hung")
	}
}
