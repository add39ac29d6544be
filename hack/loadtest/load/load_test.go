package load

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
	"github.com/podmeta/podmeta/hack/loadtest/nullserver"
	"github.com/podmeta/podmeta/internal/testcerts"
)

// server starts h over TLS on 127.0.0.1 with a certificate from a fresh CA;
// opts adjust the server before it starts.
func server(t *testing.T, h http.Handler, opts ...func(*httptest.Server)) (*httptest.Server, *testcerts.CA) {
	t.Helper()
	ca, err := testcerts.NewCA()
	require.NoError(t, err)
	s, err := ca.Issue("podmeta-webhook", time.Hour)
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(s.CertPEM, s.KeyPEM)
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	for _, o := range opts {
		o(srv)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, ca
}

func review(t *testing.T, size string) *corpus.Review {
	t.Helper()
	r, err := corpus.NewReview(size)
	require.NoError(t, err)
	return r
}

func TestNullServer(t *testing.T) {
	for _, decoder := range []string{nullserver.JSONStd, nullserver.JSONv2} {
		t.Run(decoder, func(t *testing.T) { testNullServer(t, decoder) })
	}
	_, err := nullserver.Handler("fast")
	require.ErrorContains(t, err, `JSON decoder "fast": want encoding/json or v2`)
}

func testNullServer(t *testing.T, decoder string) {
	h, err := nullserver.Handler(decoder)
	require.NoError(t, err)
	srv, ca := server(t, h)
	var conns atomic.Int64
	var measured []bool
	res, err := Run(context.Background(), Config{
		URL: srv.URL + "/mutate", RootCAs: ca.Pool(), Review: review(t, "medium"),
		Workers: 4, Count: 200, Duration: 30 * time.Second,
		OnConn:    func(ConnInfo) { conns.Add(1) },
		OnMeasure: func(start bool) { measured = append(measured, start) },
	})
	require.NoError(t, err)
	assert.Equal(t, int64(200), res.Requests, "count bounds the run")
	assert.Equal(t, int64(200), res.OK, "errors: %v", res.Samples)
	assert.Empty(t, res.Errors)
	assert.Equal(t, int64(4), res.Conns, "one keep-alive connection per worker")
	assert.Equal(t, "HTTP/1.1", res.Protocol)
	assert.Equal(t, int64(4), conns.Load())
	assert.Equal(t, []bool{true, false}, measured)
	l := res.Latency
	assert.True(t, 0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max, "%+v", l)
	assert.Greater(t, res.Throughput, 0.0)
}

func TestReconnectEvery(t *testing.T) {
	srv, ca := server(t, nullHandler(t))
	res, err := Run(context.Background(), Config{
		URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "small"),
		Workers: 1, Count: 40, ReconnectEvery: 5,
	})
	require.NoError(t, err)
	assert.Equal(t, int64(40), res.OK, "errors: %v", res.Samples)
	assert.Equal(t, int64(8), res.Conns)
}

func TestRate(t *testing.T) {
	srv, ca := server(t, nullHandler(t))
	res, err := Run(context.Background(), Config{
		URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "small"),
		Workers: 4, Rate: 100, Duration: time.Second,
	})
	require.NoError(t, err)
	// Each worker's k-th request is scheduled at a fixed time (a worker
	// that fell behind catches up, never runs ahead), so in one second 4
	// workers, one request per 40 ms each, start at most 4 × 26. (No lower
	// bound: a busy machine may not keep up, and that is no bug.)
	assert.LessOrEqual(t, res.Requests, int64(104))
	assert.Positive(t, res.OK)
	assert.Empty(t, res.Errors)
}

func TestWrongCA(t *testing.T) {
	srv, _ := server(t, nullHandler(t))
	other, err := testcerts.NewCA()
	require.NoError(t, err)
	res, err := Run(context.Background(), Config{URL: srv.URL, RootCAs: other.Pool(), Review: review(t, "small"), Count: 3})
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{ErrHandshake: 3}, res.Errors)
	assert.Contains(t, res.Samples[ErrHandshake], "certificate")
}

// fake answers like a webhook would, with a response built by fn from the
// request UID.
func fake(fn func(uid string, w http.ResponseWriter)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Request struct{ UID string } `json:"request"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &in); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fn(in.Request.UID, w)
	})
}

func respond(w http.ResponseWriter, uid string, allowed bool, patch string) {
	resp := map[string]any{"uid": uid, "allowed": allowed}
	if patch != "" {
		resp["patch"] = []byte(patch)
		resp["patchType"] = "JSONPatch"
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
}

const goodPatch = `[{"op":"add","path":"/spec/containers/0/env/-","value":{"name":"POD_NAME","valueFrom":{"fieldRef":{"fieldPath":"metadata.name"}}}},` +
	`{"op":"add","path":"/metadata/annotations","value":{"podmeta.io/status":"{}"}}]`

func TestValidation(t *testing.T) {
	for name, tc := range map[string]struct {
		expectPatch bool
		handler     func(uid string, w http.ResponseWriter)
		want        string
	}{
		"valid patch":  {true, func(uid string, w http.ResponseWriter) { respond(w, uid, true, goodPatch) }, ""},
		"null valid":   {false, func(uid string, w http.ResponseWriter) { respond(w, uid, true, "") }, ""},
		"null patches": {false, func(uid string, w http.ResponseWriter) { respond(w, uid, true, goodPatch) }, ErrNoPatch},
		"wrong uid":    {true, func(uid string, w http.ResponseWriter) { respond(w, uid+"x", true, goodPatch) }, ErrUID},
		"denied":       {true, func(uid string, w http.ResponseWriter) { respond(w, uid, false, "") }, ErrDenied},
		"no patch":     {true, func(uid string, w http.ResponseWriter) { respond(w, uid, true, "") }, ErrPatch},
		"empty patch":  {true, func(uid string, w http.ResponseWriter) { respond(w, uid, true, "[]") }, ErrPatch},
		"replace op": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"replace","path":"/spec/containers/0/image","value":"x"}]`)
		}, ErrPatch},
		"remove op": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"remove","path":"/spec/containers/0/env/0"}]`)
		}, ErrPatch},
		"missing parent": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"add","path":"/spec/nope/0/env/-","value":{}}]`)
		}, ErrPatch},
		"negative index": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"add","path":"/spec/containers/-1/env/0","value":{"name":"A"}}]`)
		}, ErrPatch},
		"not a pod": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"add","path":"/spec/containers/0/env/-","value":"A=b"}]`)
		}, ErrPatch},
		"unknown field": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"add","path":"/spec/bogus","value":1}]`)
		}, ErrPatch},
		"drops the label": {true, func(uid string, w http.ResponseWriter) {
			respond(w, uid, true, `[{"op":"add","path":"/metadata/labels","value":{}}]`)
		}, ErrPatch},
		"not json": {true, func(uid string, w http.ResponseWriter) { _, _ = w.Write([]byte("ok")) }, ErrDecode},
		"wrong kind": {true, func(uid string, w http.ResponseWriter) {
			_ = json.NewEncoder(w).Encode(map[string]any{"apiVersion": "v1", "kind": "Status"})
		}, ErrDecode},
		"http 500": {true, func(uid string, w http.ResponseWriter) { http.Error(w, "boom", 500) }, ErrStatus},
	} {
		t.Run(name, func(t *testing.T) {
			srv, ca := server(t, fake(tc.handler))
			res, err := Run(context.Background(), Config{
				URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "medium"), ExpectPatch: tc.expectPatch,
				Workers: 2, Count: 6,
			})
			require.NoError(t, err)
			if tc.want == "" {
				assert.Equal(t, int64(6), res.OK, "%v", res.Samples)
				return
			}
			assert.Equal(t, map[string]int64{tc.want: 6}, res.Errors, "%v", res.Samples)
			assert.Equal(t, int64(6), res.Failures())
		})
	}
}

// A server that reads a request and then goes away without answering (a
// crash, or an exit that does not drain) drops the request: a failure,
// on a fresh connection and on a reused one alike.
func TestDroppedRequests(t *testing.T) {
	var n atomic.Int64
	null := nullHandler(t)
	srv, ca := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 1 {
			null.ServeHTTP(w, r)
			return
		}
		_, _ = io.ReadAll(r.Body)
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		// Close the socket under TLS: no close_notify, like a dying process.
		c.(*tls.Conn).NetConn().Close()
	}))
	res, err := Run(context.Background(), Config{URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "small"), Count: 10})
	require.NoError(t, err)
	assert.Equal(t, int64(5), res.OK)
	assert.Equal(t, map[string]int64{ErrDropped: 5}, res.Errors, "%v", res.Samples)
	assert.Equal(t, int64(5), res.Failures())
}

// Graceful shutdown under load: Go's server answers what it read and
// closes idle connections; the client counts only "not accepted" errors.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	var served atomic.Int64
	loaded := make(chan struct{})
	null := nullHandler(t)
	srv, ca := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		null.ServeHTTP(w, r)
		if served.Add(1) == 100 {
			close(loaded)
		}
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-loaded:
		case <-ctx.Done():
			return
		}
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		assert.NoError(t, srv.Config.Shutdown(sctx))
		time.Sleep(100 * time.Millisecond) // load goes on against the closed port
		cancel()
	}()
	res, err := Run(ctx, Config{
		URL: srv.URL, RootCAs: ca.Pool(), Review: review(t, "medium"), Workers: 16, Duration: 20 * time.Second,
	})
	require.NoError(t, err)
	cancel()
	<-done
	assert.Equal(t, served.Load(), res.OK, "every request the server answered was valid")
	assert.GreaterOrEqual(t, res.OK, int64(100))
	assert.Zero(t, res.Failures(), "errors %v: %v", res.Errors, res.Samples)
	assert.Positive(t, res.Errors[ErrRefused], "the run went on past the shutdown")
}

func TestParseTarget(t *testing.T) {
	for _, ok := range []string{"https://127.0.0.1:8443/mutate", "https://127.3.2.1/x?timeout=10s", "https://[::1]:8443/mutate", "https://localhost:8443"} {
		tg, err := ParseTarget(ok)
		assert.NoError(t, err, ok)
		host, _, _ := net.SplitHostPort(tg.Addr)
		assert.True(t, net.ParseIP(host).IsLoopback(), ok)
	}
	tg, err := ParseTarget("https://localhost:8443")
	require.NoError(t, err)
	assert.Equal(t, Target{Addr: "127.0.0.1:8443", ServerName: "localhost", Path: "/", Host: "localhost:8443"}, tg)

	for _, bad := range []string{"http://127.0.0.1:8443/mutate", "https://10.0.0.1:8443/", "https://192.168.1.1/", "https://example.com/", "https://0.0.0.0:8443/", "https://[::]:8443/", "https://webhook.default.svc/", "://"} {
		_, err := ParseTarget(bad)
		assert.Error(t, err, bad)
	}
}

func TestConfigBounds(t *testing.T) {
	r := review(t, "small")
	pool, _ := testcerts.NewCA()
	base := Config{URL: "https://127.0.0.1:1/", RootCAs: pool.Pool(), Review: r}
	for name, mod := range map[string]func(*Config){
		"too many workers": func(c *Config) { c.Workers = MaxWorkers + 1 },
		"too long":         func(c *Config) { c.Duration = MaxDuration + time.Second },
		"too many":         func(c *Config) { c.Count = MaxCount + 1 },
		"negative rate":    func(c *Config) { c.Rate = -1 },
		"warmup too long":  func(c *Config) { c.Duration, c.Warmup = time.Second, time.Second },
		"no review":        func(c *Config) { c.Review = nil },
		"no CA":            func(c *Config) { c.RootCAs = nil },
		"remote":           func(c *Config) { c.URL = "https://10.1.2.3/" },
	} {
		c := base
		mod(&c)
		_, err := Run(context.Background(), c)
		assert.Error(t, err, name)
	}
	_ = fmt.Sprint()
}

func nullHandler(t *testing.T) http.Handler {
	h, err := nullserver.Handler(nullserver.JSONStd)
	require.NoError(t, err)
	return h
}
