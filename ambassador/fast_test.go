package ambassador

import (
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/policy"
)

// A list far above bufferLimit reaches the client while the API server is
// still sending it: the ambassador holds at most bufferLimit bytes, never
// the whole body.
func TestHugeListStreamedNotBuffered(t *testing.T) {
	const chunk = 1 << 20
	release := make(chan struct{})
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, strings.Repeat("a", chunk))
		http.NewResponseController(w).Flush()
		// The rest comes only once the client has read past the first
		// megabyte through the ambassador.
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, strings.Repeat("b", chunk))
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	res, err := h.client.Get(h.url + "/api/v1/pods")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, int64(-1), res.ContentLength, "streamed, so no Content-Length")
	first := make([]byte, chunk)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(res.Body, first); done <- err }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the first megabyte did not arrive before the API server finished: the body was buffered")
	}
	assert.Equal(t, strings.Repeat("a", chunk), string(first))
	close(release)
	rest, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	assert.Equal(t, strings.Repeat("b", chunk), string(rest))
}

// A body of known length keeps its Content-Length and arrives intact, and a
// HEAD answer keeps the API server's Content-Length without a body.
func TestKnownLengthAndHead(t *testing.T) {
	big := strings.Repeat("x", 3*bufferLimit+5)
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(big)))
		w.Header().Set("Audit-Id", "abc")
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, big)
		}
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	res, err := h.client.Get(h.url + "/api/v1/pods")
	require.NoError(t, err)
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, int64(len(big)), res.ContentLength)
	assert.Equal(t, big, string(b))
	assert.Equal(t, "abc", res.Header.Get("Audit-Id"), "API server headers passed through")
	assert.Empty(t, res.Header.Get("Server"), "no Server header of the ambassador's own")

	res, err = h.client.Head(h.url + "/api/v1/pods")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, int64(len(big)), res.ContentLength)
}

// The path forwarded is the decoded path the policy matched, re-encoded
// canonically, on the plain path and on the streaming path alike; the query
// goes up unchanged unless it does not parse.
func TestPathAndQueryForwarding(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, ""))
	for _, tc := range []struct{ sent, want string }{
		{"/api/v1/namespaces/a/pods", "/api/v1/namespaces/a/pods"},
		{"/api/v1/namespaces/a%2Fb/pods", "/api/v1/namespaces/a/b/pods"},
		{"/api/v1/namespaces/%61/pods", "/api/v1/namespaces/a/pods"},
		{"/api/v1/namespaces/a%20b/pods", "/api/v1/namespaces/a%20b/pods"},
		{"/api/v1/namespaces/a/pods?labelSelector=app%3Dx&limit=5", "/api/v1/namespaces/a/pods?labelSelector=app%3Dx&limit=5"},
		{"/api/v1/pods?limit=5;x=1", "/api/v1/pods?"},
		{"/api/v1/pods?watch=1", "/api/v1/pods?watch=1"},
		{"/api/v1/namespaces/a%2Fb/pods?watch=1", "/api/v1/namespaces/a/b/pods?watch=1"},
	} {
		t.Run(tc.sent, func(t *testing.T) {
			code, body := h.do(t, "GET", tc.sent, nil)
			require.Equal(t, http.StatusOK, code, body)
			got := api.last(t).RequestURI
			if strings.HasSuffix(tc.want, "?") {
				// Nothing parseable left: ReverseProxy sends no query.
				assert.Equal(t, strings.TrimSuffix(tc.want, "?"), got)
				return
			}
			assert.Equal(t, tc.want, got)
		})
	}
	for _, path := range []string{"/api/v1/./pods", "/api//v1/pods", "/api/v1/namespaces/a/pods/..", "/api/v1/namespaces/a/pods/%2E%2E/secrets"} {
		code, body := h.do(t, "GET", path, nil)
		require.Equal(t, http.StatusForbidden, code, path)
		assert.Contains(t, decodeStatus(t, code, body).Message, `refused by rule "canonical-path"`, path)
	}
}

// A CA rotation replaces the HTTP/1.1 pool: connections verified against the
// old bundle are not used for new requests, so a bundle that does not trust
// the API server fails the very next request, and the new server
// certificate is trusted as soon as the new bundle is.
func TestCARotationRebuildsPlainClient(t *testing.T) {
	certA, certB := selfSignedCert(t), selfSignedCert(t)
	var serving atomic.Pointer[tls.Certificate]
	serving.Store(&certA)
	api := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "{}")
	}))
	api.EnableHTTP2 = true
	// GetConfigForClient, not GetCertificate: clients dialing an IP send
	// no SNI, and then crypto/tls prefers the Certificates httptest fills in.
	api.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{*serving.Load()}, NextProtos: []string{"h2", "http/1.1"}}, nil
	}}
	api.StartTLS()
	t.Cleanup(api.Close)
	caOf := func(c tls.Certificate) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	}

	vol := newSAVolume(t, "tok", caOf(certA))
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())
	code, _ := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusOK, code)
	before, err := h.srv.creds.client()
	require.NoError(t, err)

	// The bundle moves to B while the server still presents A.
	vol.write("tok", caOf(certB))
	require.Eventually(t, func() bool {
		c, err := h.srv.creds.client()
		return err == nil && c != before
	}, 5*time.Second, 5*time.Millisecond, "a new client for the new bundle")
	code, body := h.do(t, "GET", "/api", nil)
	require.Equal(t, http.StatusBadGateway, code, "the pooled connection verified against A is not reused")
	assert.Contains(t, decodeStatus(t, code, body).Message, "API server certificate not trusted by ca.crt")

	serving.Store(&certB)
	code, _ = h.do(t, "GET", "/api", nil)
	assert.Equal(t, http.StatusOK, code)
}

// Requests fasthttp cannot read get a Status answer too.
func TestUnreadableRequests(t *testing.T) {
	api := newAPIServer(t, nil)
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca())

	res, body := h.raw(t, "GET /api HTTP/1.1\r\nHost: localhost\r\nX-Big: "+strings.Repeat("a", 20<<10)+"\r\n\r\n")
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, res.StatusCode)
	decodeStatus(t, res.StatusCode, body)

	res, body = h.raw(t, fmt.Sprintf("POST /api HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n", maxRequestBody+1))
	assert.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
	assert.Contains(t, decodeStatus(t, res.StatusCode, body).Message, "request body larger than")

	res, body = h.raw(t, "GET /api HTTP/1.1\r\n\r\n")
	assert.Equal(t, http.StatusForbidden, res.StatusCode, "no Host is a Host refusal")
	assert.Contains(t, decodeStatus(t, res.StatusCode, body).Message, `refused by rule "host"`)

	res, body = h.raw(t, "GET /api%zz HTTP/1.1\r\nHost: localhost\r\n\r\n")
	assert.Equal(t, http.StatusBadRequest, res.StatusCode)
	decodeStatus(t, res.StatusCode, body)
	assert.Empty(t, api.requests())
}

// TestWriteOnStaleConnectionRetried: the API server dropped every pooled
// connection (a restart) after they served requests. A POST, PATCH or
// DELETE that follows is sent once, on a fresh connection, instead of
// failing with 502 on a dead one (fasthttp retries only GET, HEAD and PUT
// by itself), and a GET does not run out of attempts on them: with more
// dead connections in the pool than fasthttp's five attempts, the first
// one found dead retires the others.
func TestWriteOnStaleConnectionRetried(t *testing.T) {
	const pooled = 6
	var writes, gets atomic.Int32
	var inFlight sync.WaitGroup
	api := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodGet {
			if gets.Add(1) <= pooled {
				// Answer only once all the first GETs are here: each
				// holds its own pooled connection.
				inFlight.Done()
				inFlight.Wait()
			}
		} else {
			writes.Add(1)
		}
		_, _ = io.WriteString(w, `{"kind":"ConfigMap"}`)
	})
	vol := newSAVolume(t, "tok", api.caPEM())
	h := startAmbassador(t, api.URL, vol.token(), vol.ca(), withPolicy(policy.Full, ""))

	for _, method := range []string{http.MethodPost, http.MethodPatch, http.MethodDelete, http.MethodGet} {
		t.Run(method, func(t *testing.T) {
			writes.Store(0)
			gets.Store(0)
			inFlight.Add(pooled)
			var wg sync.WaitGroup
			for range pooled {
				wg.Go(func() {
					res, err := h.client.Get(h.url + "/api/v1/namespaces/a/configmaps")
					if assert.NoError(t, err) {
						_, _ = io.Copy(io.Discard, res.Body)
						res.Body.Close()
						assert.Equal(t, http.StatusOK, res.StatusCode)
					}
				})
			}
			wg.Wait()
			api.CloseClientConnections()

			code, body := h.do(t, method, "/api/v1/namespaces/a/configmaps/c", nil)
			assert.Equal(t, http.StatusOK, code, body)
			if method != http.MethodGet {
				assert.Equal(t, int32(1), writes.Load(), "sent exactly once")
			}
		})
	}
}

func TestRetriedAnyway(t *testing.T) {
	for req, want := range map[string]bool{
		"GET /api HTTP/1.1\r\n": true, "HEAD /api HTTP/1.1\r\n": true, "PUT /api/v1/x HTTP/1.1\r\n": true,
		"QUERY /api HTTP/1.1\r\n": true, "POST /api HTTP/1.1\r\n": false, "PATCH /api HTTP/1.1\r\n": false,
		"DELETE /api HTTP/1.1\r\n": false, "GETX /api HTTP/1.1\r\n": false, "": false,
	} {
		assert.Equal(t, want, retriedAnyway([]byte(req)), "%q", req)
	}
}
