package ambassador

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/policy"
)

// apiServer is a TLS (HTTP/2-capable) stand-in for kube-apiserver that
// records what it received.
type apiServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
}

func newAPIServer(t testing.TB, h http.HandlerFunc) *apiServer {
	t.Helper()
	a := &apiServer{}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"kind":"PodList","path":%q}`, r.URL.Path)
		}
	}
	a.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.reqs = append(a.reqs, r.Clone(context.Background()))
		a.mu.Unlock()
		h(w, r)
	}))
	a.EnableHTTP2 = true
	a.TLS = &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t)}}
	a.StartTLS()
	t.Cleanup(a.Close)
	return a
}

func (a *apiServer) requests() []*http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*http.Request(nil), a.reqs...)
}

func (a *apiServer) last(t testing.TB) *http.Request {
	t.Helper()
	rs := a.requests()
	require.NotEmpty(t, rs, "API server received no request")
	return rs[len(rs)-1]
}

// selfSignedCert is a fresh self-signed serving certificate for the
// loopback addresses, so every stand-in has its own CA (httptest's built-in
// certificate is shared by all servers).
func selfSignedCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "kube-apiserver stand-in"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// caPEM is the stand-in's certificate as a CA bundle.
func (a *apiServer) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Certificate().Raw})
}

// saVolume lays out a projected service-account volume the way kubelet
// does: files live in a timestamped directory, "..data" points at it, and
// the visible names are symlinks through "..data".
type saVolume struct {
	t   testing.TB
	dir string
	gen int
}

func newSAVolume(t testing.TB, token string, ca []byte) *saVolume {
	v := &saVolume{t: t, dir: t.TempDir()}
	v.write(token, ca)
	for _, name := range []string{"token", "ca.crt"} {
		require.NoError(t, os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)))
	}
	return v
}

// write publishes a new generation with an atomic "..data" swap, like a
// kubelet token rotation. Empty arguments leave that file out.
func (v *saVolume) write(token string, ca []byte) {
	v.gen++
	gen := fmt.Sprintf("..2026_11_27_%02d", v.gen)
	require.NoError(v.t, os.Mkdir(filepath.Join(v.dir, gen), 0o755))
	if token != "" {
		require.NoError(v.t, os.WriteFile(filepath.Join(v.dir, gen, "token"), []byte(token+"\n"), 0o600))
	}
	if ca != nil {
		require.NoError(v.t, os.WriteFile(filepath.Join(v.dir, gen, "ca.crt"), ca, 0o644))
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	require.NoError(v.t, os.Symlink(gen, tmp))
	require.NoError(v.t, os.Rename(tmp, filepath.Join(v.dir, "..data")))
}

func (v *saVolume) token() string { return filepath.Join(v.dir, "token") }
func (v *saVolume) ca() string    { return filepath.Join(v.dir, "ca.crt") }

type harness struct {
	srv    *Server
	reg    *prometheus.Registry
	url    string // proxy base URL
	health string // health base URL
	client *http.Client
}

type option func(*Config)

func withPolicy(mode policy.Mode, allow string) option {
	return func(c *Config) {
		rs, err := policy.ParseRules(allow)
		if err != nil {
			panic(err)
		}
		c.Policy = policy.Policy{Mode: mode, Rules: rs}
	}
}

// startAmbassador runs a Server against upstream with the given files until
// the test ends.
func startAmbassador(t testing.TB, upstream, tokenFile, caFile string, opts ...option) *harness {
	t.Helper()
	cfg := Config{
		Listen:       "127.0.0.1:0",
		HealthListen: "127.0.0.1:0",
		Upstream:     upstream,
		TokenFile:    tokenFile,
		CAFile:       caFile,
		Policy:       policy.Policy{Mode: policy.ReadOnly},
		// Long enough that only the file watch (or a 401) can explain a
		// reload within a test.
		PollInterval: time.Hour,
	}
	for _, o := range opts {
		o(&cfg)
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(cfg, log, reg, reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("ambassador did not shut down")
		}
	})
	return &harness{
		srv:    srv,
		reg:    reg,
		url:    "http://" + srv.Addr().String(),
		health: "http://" + srv.HealthAddr().String(),
		client: &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}},
	}
}

// do sends a request through the ambassador and returns status and body.
func (h *harness) do(t testing.TB, method, path string, hdr http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, h.url+path, nil)
	require.NoError(t, err)
	for k, vs := range hdr {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if host := hdr.Get("Host"); host != "" {
		req.Host = host
	}
	res, err := h.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, string(body)
}

// raw sends req, written out in full, on a connection of its own and
// returns the response and its body.
func (h *harness) raw(t testing.TB, req string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", h.srv.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, req)
	require.NoError(t, err)
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

// decodeStatus parses a Status body and checks its fixed fields.
func decodeStatus(t testing.TB, code int, body string) status {
	t.Helper()
	var s status
	require.NoError(t, json.Unmarshal([]byte(body), &s), "body: %s", body)
	require.Equal(t, "Status", s.Kind)
	require.Equal(t, "v1", s.APIVersion)
	require.Equal(t, "Failure", s.Status)
	require.Equal(t, code, s.Code)
	return s
}

// blockingAPI is an API server stand-in whose handler, for requests that
// match, reports the request's arrival and then blocks until the request
// is canceled (reported too) or the test ends; other requests go to
// other (nil: a small PodList).
type blockingAPI struct {
	*apiServer
	arrived, canceled chan struct{}
}

func newBlockingAPI(t testing.TB, match func(*http.Request) bool, other http.HandlerFunc) *blockingAPI {
	t.Helper()
	b := &blockingAPI{arrived: make(chan struct{}, 1), canceled: make(chan struct{}, 1)}
	end := make(chan struct{})
	if other == nil {
		other = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"kind":"PodList"}`)
		}
	}
	b.apiServer = newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		if match != nil && !match(r) {
			other(w, r)
			return
		}
		b.arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			b.canceled <- struct{}{}
		case <-end:
		}
	})
	t.Cleanup(func() { close(end) }) // before the stand-in's Close waits for its handlers
	return b
}

// waitCanceled fails the test unless the stand-in saw its request canceled.
func (b *blockingAPI) waitCanceled(t testing.TB, what string) {
	t.Helper()
	select {
	case <-b.canceled:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s was not canceled at the API server", what)
	}
}

// hangUp sends GET path through h, hangs up wait after the stand-in has
// the request, and checks that the API server's request was canceled and
// the proxy counted a 499.
func hangUp(t *testing.T, h *harness, api *blockingAPI, path string, wait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url+path, nil)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		res, err := h.client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	<-api.arrived
	time.Sleep(wait)
	cancel()
	api.waitCanceled(t, "GET "+path+" after the app hung up")
	require.Error(t, <-errc)
	assert.Eventually(t, func() bool {
		return testutil.ToFloat64(h.srv.proxy.m.requests.WithLabelValues("499", "GET")) == 1
	}, 5*time.Second, 10*time.Millisecond, "counted as 499")
}
