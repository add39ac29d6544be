package load

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/internal/testcerts"
)

// h2server is server with HTTP/2 offered (ALPN h2, then http/1.1) or not.
func h2server(t *testing.T, h http.Handler, http2 bool, opts ...func(*httptest.Server)) (*httptest.Server, *testcerts.CA) {
	t.Helper()
	return server(t, h, append([]func(*httptest.Server){func(s *httptest.Server) { s.EnableHTTP2 = http2 }}, opts...)...)
}

func TestHTTP2(t *testing.T) {
	var h2, other atomic.Int64
	null := nullHandler(t)
	srv, ca := h2server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			h2.Add(1)
		} else {
			other.Add(1)
		}
		null.ServeHTTP(w, r)
	}), true)
	res, err := Run(context.Background(), Config{
		URL: srv.URL + "/mutate", RootCAs: ca.Pool(), Review: review(t, "medium"),
		Workers: 8, Count: 200, Duration: 30 * time.Second, HTTP2: true,
	})
	require.NoError(t, err)
	assert.Equal(t, int64(200), res.OK, "errors: %v", res.Samples)
	assert.Empty(t, res.Errors)
	assert.Equal(t, int64(1), res.Conns, "the workers share one connection")
	assert.Equal(t, "HTTP/2", res.Protocol)
	assert.Equal(t, int64(200), h2.Load(), "every review went over HTTP/2")
	assert.Zero(t, other.Load())
}

// The answers are checked as over HTTP/1.1.
func TestHTTP2Validates(t *testing.T) {
	for name, tc := range map[string]struct {
		h    http.Handler
		want string
	}{
		"wrong uid":  {fake(func(uid string, w http.ResponseWriter) { respond(w, uid+"x", true, goodPatch) }), ErrUID},
		"status 500": {http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 500) }), ErrStatus},
		"redirect":   {http.RedirectHandler("/elsewhere", http.StatusTemporaryRedirect), ErrStatus},
	} {
		srv, ca := h2server(t, tc.h, true)
		res, err := Run(context.Background(), Config{
			URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "small"), ExpectPatch: true,
			Workers: 2, Count: 10, HTTP2: true,
		})
		require.NoError(t, err, name)
		assert.Equal(t, map[string]int64{tc.want: 10}, res.Errors, name)
	}
}

// A closed port is refused, as over HTTP/1.1, and a wrong CA a handshake
// error.
func TestHTTP2ConnectErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, ca := h2server(t, nullHandler(t), true)
	res, err := Run(context.Background(), Config{URL: "https://" + addr, RootCAs: ca.Pool(), Review: review(t, "small"), Count: 3, HTTP2: true})
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{ErrRefused: 3}, res.Errors)

	srv, _ := h2server(t, nullHandler(t), true)
	other, err := testcerts.NewCA()
	require.NoError(t, err)
	res, err = Run(context.Background(), Config{URL: srv.URL, RootCAs: other.Pool(), Review: review(t, "small"), Count: 3, HTTP2: true})
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{ErrHandshake: 3}, res.Errors)
	assert.Zero(t, res.Conns, "no connection made")
}

// A server without HTTP/2 fails the run rather than being measured over
// HTTP/1.1 under an HTTP/2 label.
func TestHTTP2Required(t *testing.T) {
	srv, ca := h2server(t, nullHandler(t), false)
	res, err := Run(context.Background(), Config{
		URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "small"), Workers: 1, Count: 3, HTTP2: true,
	})
	require.NoError(t, err)
	assert.Zero(t, res.OK)
	assert.Equal(t, map[string]int64{ErrHandshake: 3}, res.Errors, "errors: %v", res.Samples)
}

func TestHTTP2Config(t *testing.T) {
	srv, ca := h2server(t, nullHandler(t), true)
	for name, cfg := range map[string]Config{
		"reconnects":  {ReconnectEvery: 5},
		"hold":        {Hold: func() bool { return false }},
		"conn hook":   {OnConn: func(ConnInfo) {}},
		"101 workers": {Workers: MaxHTTP2Workers + 1},
	} {
		cfg.URL, cfg.RootCAs, cfg.Review, cfg.HTTP2 = srv.URL, ca.Pool(), review(t, "small"), true
		_, err := Run(context.Background(), cfg)
		assert.ErrorContains(t, err, "HTTP/2", name)
	}
}

// A run ended by its duration, with streams in flight, leaves no
// connection open: a server stopped right after would wait for it.
func TestHTTP2ClosesConnection(t *testing.T) {
	var open atomic.Int64
	null := nullHandler(t)
	srv, ca := h2server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond) // every stream is in flight when the run ends
		null.ServeHTTP(w, r)
	}), true, func(s *httptest.Server) {
		s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		}
	})
	// Whether the transport still counts the connection busy when the run
	// ends is a race: five runs make a regression show nearly always.
	for range 5 {
		res, err := Run(context.Background(), Config{
			URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "small"), Workers: 16,
			Duration: 200 * time.Millisecond, Warmup: 60 * time.Millisecond, HTTP2: true,
		})
		require.NoError(t, err)
		assert.Positive(t, res.OK)
		assert.Empty(t, res.Errors, "streams cancelled by the end are not errors")
		require.Eventually(t, func() bool { return open.Load() == 0 }, 500*time.Millisecond, 5*time.Millisecond,
			"connections left open: %d", open.Load())
	}
}
