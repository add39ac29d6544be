package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/podmeta/podmeta/inject"
	"github.com/podmeta/podmeta/internal/testcerts"
	"github.com/podmeta/podmeta/mutate"
)

const exampleConfig = "../../examples/config.yaml"

// TestMain lets a test run the real main() in a child process (to send it
// real signals): the child is this test binary with the arguments in an
// environment variable.
func TestMain(m *testing.M) {
	if a := os.Getenv("PODMETA_TEST_MAIN_ARGS"); a != "" {
		var args []string
		if err := json.Unmarshal([]byte(a), &args); err != nil {
			panic(err)
		}
		os.Args = append([]string{"podmeta-webhook"}, args...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// logs collects the JSON log lines a server writes, for tests to wait on.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// find returns the first log entry with the given message.
func (l *logs) find(msg string) map[string]any {
	for _, line := range strings.Split(l.String(), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == msg {
			return e
		}
	}
	return nil
}

func (l *logs) waitFor(t *testing.T, msg string) map[string]any {
	t.Helper()
	var e map[string]any
	require.Eventually(t, func() bool { e = l.find(msg); return e != nil }, 20*time.Second, 5*time.Millisecond,
		"no log %q; logs so far:\n%s", msg, l)
	return e
}

type server struct {
	addr, metricsAddr string
	log               *logs
	cancel            context.CancelFunc
	done              chan error
}

// startServe runs `serve` in-process on loopback ports chosen by the kernel
// and returns once it logged its addresses.
func startServe(t *testing.T, certDir string, extra ...string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{log: &logs{}, cancel: cancel, done: make(chan error, 1)}
	args := append([]string{"serve",
		"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--tls-cert-file", filepath.Join(certDir, "tls.crt"),
		"--tls-key-file", filepath.Join(certDir, "tls.key"),
		"--log-level", "debug",
	}, extra...)
	go func() { s.done <- run(ctx, args, io.Discard, s.log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			t.Error("server did not stop")
		}
	})
	var e map[string]any
	require.Eventually(t, func() bool {
		select {
		case err := <-s.done:
			s.done <- err
			return true
		default:
		}
		e = s.log.find("serving admission reviews")
		return e != nil
	}, 20*time.Second, 5*time.Millisecond)
	require.NotNil(t, e, "serve exited early; logs:\n%s", s.log)
	s.addr, s.metricsAddr = e["addr"].(string), e["metrics_addr"].(string)
	return s
}

func (s *server) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for Cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop")
		return nil
	}
}

func (s *server) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.metricsAddr + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func newCerts(t *testing.T) (*testcerts.CA, string) {
	t.Helper()
	ca, err := testcerts.NewCA()
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, testcerts.WriteServing(dir, issue(t, ca, "one")))
	return ca, dir
}

func issue(t *testing.T, ca *testcerts.CA, cn string) *testcerts.Serving {
	t.Helper()
	s, err := ca.Issue(cn, time.Hour)
	require.NoError(t, err)
	return s
}

func client(ca *testcerts.CA, h2 bool) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"},
			ForceAttemptHTTP2: h2,
		},
	}
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "web", Namespace: "team-a",
			Labels: map[string]string{"app": "web", mutate.LabelInject: "true"},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "registry.example/web:1",
			Env: []corev1.EnvVar{{Name: "GREETING", Value: "hi $(POD_NAME)"}},
		}}},
	}
}

func reviewBody(t *testing.T, uid string, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	require.NoError(t, err)
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID(uid),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: pod.Namespace,
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: raw},
		},
	})
	require.NoError(t, err)
	return b
}

// checkReview decodes the answer and checks that applying its patch to the
// pod gives exactly what mutate.Pod makes of it with cfg.
func checkReview(t *testing.T, resp *http.Response, uid string, pod *corev1.Pod, cfg mutate.Config) {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var review admissionv1.AdmissionReview
	require.NoError(t, json.Unmarshal(body, &review))
	r := review.Response
	require.NotNil(t, r)
	assert.Equal(t, types.UID(uid), r.UID)
	require.True(t, r.Allowed)
	require.NotNil(t, r.PatchType)
	assert.Equal(t, admissionv1.PatchTypeJSONPatch, *r.PatchType)

	var ops []map[string]any
	require.NoError(t, json.Unmarshal(r.Patch, &ops))
	require.NotEmpty(t, ops)
	for _, op := range ops {
		assert.Equal(t, "add", op["op"], "%v", op)
	}
	p, err := jsonpatch.DecodePatch(r.Patch)
	require.NoError(t, err)
	raw, err := json.Marshal(pod)
	require.NoError(t, err)
	patched, err := p.Apply(raw)
	require.NoError(t, err)
	want, _, err := mutate.Pod(pod, cfg)
	require.NoError(t, err)
	wantJSON, err := json.Marshal(want)
	require.NoError(t, err)
	assert.JSONEq(t, string(wantJSON), string(patched))
}

func post(t *testing.T, c *http.Client, s *server, body []byte) *http.Response {
	t.Helper()
	resp, err := c.Post("https://"+s.addr+"/mutate", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestServeEndToEnd(t *testing.T) {
	ca, dir := newCerts(t)
	cfg, err := loadConfig(exampleConfig)
	require.NoError(t, err)
	s := startServe(t, dir, "--config", exampleConfig)

	code, body := s.get(t, "/readyz")
	assert.Equal(t, http.StatusOK, code, body)
	code, _ = s.get(t, "/healthz")
	assert.Equal(t, http.StatusOK, code)

	c := client(ca, false)
	pod := testPod()
	resp := post(t, c, s, reviewBody(t, "uid-1", pod))
	assert.Equal(t, "one", resp.TLS.PeerCertificates[0].Subject.CommonName)
	assert.GreaterOrEqual(t, resp.TLS.Version, uint16(tls.VersionTLS12))
	checkReview(t, resp, "uid-1", pod, cfg)

	// HTTP/2, which the API server's client may negotiate, works too.
	resp = post(t, client(ca, true), s, reviewBody(t, "uid-h2", pod))
	assert.Equal(t, 2, resp.ProtoMajor)
	checkReview(t, resp, "uid-h2", pod, cfg)

	// Only POST /mutate exists on the HTTPS port.
	resp, err = c.Get("https://" + s.addr + "/mutate")
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body) // so the connection stays reusable
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	// TLS 1.1 is refused.
	_, err = tls.Dial("tcp", s.addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MaxVersion: tls.VersionTLS11})
	assert.Error(t, err)

	code, metrics := s.get(t, "/metrics")
	assert.Equal(t, http.StatusOK, code)
	for _, m := range []string{
		`podmeta_admission_requests_total{outcome="patched"} 2`,
		`podmeta_certificate_expiry_timestamp_seconds `,
		`podmeta_certificate_reloads_total{result="error"} 0`,
		`podmeta_build_info{`,
		`podmeta_admission_duration_seconds_bucket`,
		`go_goroutines `,
		`process_start_time_seconds `,
	} {
		assert.Contains(t, metrics, m)
	}

	// Rotate the certificate the way the kubelet updates a Secret volume.
	// New connections must get the new certificate without a restart, while
	// the connection kept alive from before goes on working.
	require.NoError(t, testcerts.WriteServing(dir, issue(t, ca, "two")))
	fresh := func() *http.Client {
		cl := client(ca, false)
		cl.Transport.(*http.Transport).DisableKeepAlives = true
		return cl
	}
	require.Eventually(t, func() bool {
		resp, err := fresh().Post("https://"+s.addr+"/mutate", "application/json", bytes.NewReader(reviewBody(t, "uid-2", pod)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName == "two"
	}, 20*time.Second, 20*time.Millisecond)

	var reused bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+s.addr+"/mutate", bytes.NewReader(reviewBody(t, "uid-3", pod)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err = c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.True(t, reused, "the connection opened before the rotation is still in use")
	assert.Equal(t, "one", resp.TLS.PeerCertificates[0].Subject.CommonName)
	checkReview(t, resp, "uid-3", pod, cfg)

	_, metrics = s.get(t, "/metrics")
	assert.Contains(t, metrics, `podmeta_certificate_reloads_total{result="success"} 1`)

	require.NoError(t, s.stop(t))
	assert.NotNil(t, s.log.find("stopped"))
}

// slowReview starts a review that is in flight on the server when it
// returns: it sends "Expect: 100-continue", so the client holds the body back
// until the handler starts reading it, then sends only half the body. The
// rest goes when finish is called; the response arrives on result.
//
// (Without this, the request could still sit in the client's buffers when
// the test starts the shutdown, and net/http rightly drops a request whose
// headers it had not read yet.)
func slowReview(t *testing.T, ca *testcerts.CA, addr string, body []byte) (finish func(), result <-chan *http.Response, failed <-chan error) {
	t.Helper()
	c := client(ca, false)
	c.Transport.(*http.Transport).ExpectContinueTimeout = time.Minute
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, "https://"+addr+"/mutate", pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Expect", "100-continue")
	req.ContentLength = int64(len(body))
	res, errc := make(chan *http.Response, 1), make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			errc <- err
			return
		}
		res <- resp
	}()
	half := len(body) / 2
	// Returns once the transport took the bytes, i.e. after 100 Continue.
	_, err = pw.Write(body[:half])
	require.NoError(t, err)
	var once sync.Once
	return func() {
		once.Do(func() {
			_, _ = pw.Write(body[half:])
			_ = pw.Close()
		})
	}, res, errc
}

func TestGracefulShutdownFinishesInFlightReview(t *testing.T) {
	ca, dir := newCerts(t)
	s := startServe(t, dir, "--shutdown-grace", "20s")
	pod := testPod()
	finish, result, failed := slowReview(t, ca, s.addr, reviewBody(t, "in-flight", pod))

	s.cancel() // what SIGTERM does in main

	// Not ready any more, and no new connections accepted...
	require.Eventually(t, func() bool {
		code, body := s.get(t, "/readyz")
		return code == http.StatusServiceUnavailable && body == "not ready: shutting down\n"
	}, 20*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", s.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, 20*time.Second, 5*time.Millisecond)
	select {
	case err := <-s.done:
		t.Fatalf("serve returned before the in-flight review finished: %v", err)
	default:
	}

	// ...but the review in flight is answered in full.
	finish()
	select {
	case resp := <-result:
		defer resp.Body.Close()
		checkReview(t, resp, "in-flight", pod, mutate.DefaultConfig())
	case err := <-failed:
		t.Fatalf("in-flight review failed: %v", err)
	}
	require.NoError(t, s.stop(t))
}

func TestShutdownGraceExceeded(t *testing.T) {
	ca, dir := newCerts(t)
	s := startServe(t, dir, "--shutdown-grace", "200ms")
	finish, _, _ := slowReview(t, ca, s.addr, reviewBody(t, "stuck", testPod()))
	defer finish()
	err := s.stop(t)
	require.ErrorContains(t, err, "in-flight reviews did not finish within --shutdown-grace 200ms", "logs:\n%s", s.log)
}

// TestShutdownDelayKeepsIdleConnections: on SIGTERM an idle keep-alive
// connection stays open through the shutdown delay; the next review on it
// is answered, with "Connection: close" (HTTP/1.1) or a GOAWAY (HTTP/2), so
// the client moves on by itself. Closing idle connections at once raced
// with the API server sending a review on one (a failed admission in the
// chart's e2e upgrade test).
func TestShutdownDelayKeepsIdleConnections(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2], func(t *testing.T) {
			ca, dir := newCerts(t)
			s := startServe(t, dir, "--shutdown-delay", "3s")
			c := client(ca, h2)
			pod := testPod()
			first := post(t, c, s, reviewBody(t, "before", pod))
			checkReview(t, first, "before", pod, mutate.DefaultConfig())

			s.cancel()
			require.Eventually(t, func() bool {
				code, _ := s.get(t, "/readyz")
				return code == http.StatusServiceUnavailable
			}, 20*time.Second, 5*time.Millisecond)
			time.Sleep(100 * time.Millisecond) // what closing idle connections at once would have had

			var reused bool
			trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
			req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				http.MethodPost, "https://"+s.addr+"/mutate", bytes.NewReader(reviewBody(t, "during", pod)))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.True(t, reused, "the idle connection was kept through the delay")
			checkReview(t, resp, "during", pod, mutate.DefaultConfig())
			if !h2 {
				assert.True(t, resp.Close, "Connection: close while leaving")
				require.NoError(t, s.stop(t))
				return
			}
			require.Equal(t, 2, resp.ProtoMajor)
			// The GOAWAY that answered the review makes the client open a
			// new connection for the next one.
			assert.Eventually(t, func() bool {
				reused = true
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
					http.MethodPost, "https://"+s.addr+"/mutate", bytes.NewReader(reviewBody(t, "after", pod)))
				require.NoError(t, err)
				req.Header.Set("Content-Type", "application/json")
				res, err := c.Do(req)
				if err == nil {
					res.Body.Close()
				}
				return err == nil && !reused
			}, 5*time.Second, 10*time.Millisecond, "a new connection after the GOAWAY")
			require.NoError(t, s.stop(t))
		})
	}
}

func TestShutdownDelayKeepsServing(t *testing.T) {
	ca, dir := newCerts(t)
	s := startServe(t, dir, "--shutdown-delay", "2s")
	s.cancel()
	require.Eventually(t, func() bool {
		code, _ := s.get(t, "/readyz")
		return code == http.StatusServiceUnavailable
	}, 20*time.Second, 5*time.Millisecond)
	// Unready, yet still answering reviews during the delay.
	pod := testPod()
	resp := post(t, client(ca, false), s, reviewBody(t, "late", pod))
	assert.True(t, resp.Close, "keep-alives are off while leaving: %v %v", resp.Header, resp.Proto)
	checkReview(t, resp, "late", pod, mutate.DefaultConfig())
	require.NoError(t, s.stop(t))
}

// TestSIGTERM runs the real main in a child process and stops it with a
// real SIGTERM while a review is in flight.
func TestSIGTERM(t *testing.T) {
	ca, dir := newCerts(t)
	args, err := json.Marshal([]string{"serve",
		"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key")})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PODMETA_TEST_MAIN_ARGS="+string(args))
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	lines := make(chan map[string]any, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var e map[string]any
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				lines <- e
			}
		}
		close(lines)
	}()
	waitLog := func(msg string) map[string]any {
		for {
			select {
			case e, ok := <-lines:
				require.True(t, ok, "process ended before logging %q", msg)
				if e["msg"] == msg {
					return e
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no log %q", msg)
			}
		}
	}
	addr := waitLog("serving admission reviews")["addr"].(string)

	pod := testPod()
	finish, result, failed := slowReview(t, ca, addr, reviewBody(t, "sigterm", pod))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	waitLog("shutting down")
	finish()
	select {
	case resp := <-result:
		defer resp.Body.Close()
		checkReview(t, resp, "sigterm", pod, mutate.DefaultConfig())
	case err := <-failed:
		t.Fatalf("in-flight review failed: %v", err)
	}
	waitLog("stopped")
	require.NoError(t, cmd.Wait(), "clean exit status")
}

func TestServeErrors(t *testing.T) {
	_, dir := newCerts(t)
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	tmp := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(tmp, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()

	base := []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--tls-cert-file", crt, "--tls-key-file", key}
	tests := []struct {
		name    string
		args    []string
		want    string
		isUsage bool
	}{
		{"no certificate flags", []string{"serve"}, "--tls-cert-file and --tls-key-file are required", true},
		{"unknown flag", append(base, "--nope"), "flag provided but not defined: -nope", true},
		{"extra argument", append(base, "extra"), `unexpected arguments ["extra"]`, true},
		{"bad log level", append(base, "--log-level", "loud"), `invalid log level "loud"`, true},
		{"bad TLS version", append(base, "--tls-min-version", "1.1"), `--tls-min-version "1.1": want 1.2 or 1.3`, true},
		{"zero grace", append(base, "--shutdown-grace", "0s"), "--shutdown-grace must be positive", true},
		{"negative max in flight", append(base, "--max-in-flight", "-1"), "--max-in-flight must not be negative, got -1", true},
		{"missing config file", append(base, "--config", filepath.Join(tmp, "nope.yaml")), "read --config: open " + filepath.Join(tmp, "nope.yaml") + ": no such file or directory", false},
		{"unknown config key", append(base, "--config", write("typo.yaml", "mountPath: /x\nenvPrefixx: A_\n")), `unknown field "envPrefixx"`, false},
		{"invalid config value", append(base, "--config", write("bad.yaml", "mountPath: relative\n")), "mountPath", false},
		{"missing key file", []string{"serve", "--tls-cert-file", crt, "--tls-key-file", filepath.Join(tmp, "nope.key")}, "serving certificate: read key: open " + filepath.Join(tmp, "nope.key"), false},
		{"address in use", []string{"serve", "--listen", busy.Addr().String(), "--metrics-listen", "127.0.0.1:0", "--tls-cert-file", crt, "--tls-key-file", key}, "--listen: listen tcp " + busy.Addr().String(), false},
		{"metrics address in use", []string{"serve", "--listen", "127.0.0.1:0", "--metrics-listen", busy.Addr().String(), "--tls-cert-file", crt, "--tls-key-file", key}, "--metrics-listen: listen tcp", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(context.Background(), tc.args, io.Discard, &stderr)
			require.ErrorContains(t, err, tc.want)
			var ue usageError
			assert.Equal(t, tc.isUsage, errors.As(err, &ue), "usage error (exit 2) or not")
		})
	}
}

func TestRunCommands(t *testing.T) {
	tests := []struct {
		args       []string
		wantErr    string
		wantStdout string
		wantStderr string
	}{
		{args: nil, wantErr: "no command given", wantStderr: "Usage:"},
		{args: []string{"bogus"}, wantErr: `unknown command "bogus"`, wantStderr: "Usage:"},
		{args: []string{"help"}, wantStdout: "podmeta-webhook serve"},
		{args: []string{"--help"}, wantStdout: "podmeta-webhook inject"},
		{args: []string{"version"}, wantStdout: "podmeta-webhook "},
		{args: []string{"version", "x"}, wantErr: "version takes no arguments"},
		{args: []string{"serve", "-h"}, wantStderr: "-tls-cert-file"},
		{args: []string{"inject", "-h"}, wantStderr: "Usage: podmeta-webhook inject"},
		{args: []string{"inject"}, wantErr: "-f is required"},
		{args: []string{"inject", "-f", "/nonexistent.yaml"}, wantErr: "inject: read /nonexistent.yaml: open /nonexistent.yaml: no such file or directory"},
		{args: []string{"inject", "-f", "x.yaml", "y.yaml"}, wantErr: `unexpected arguments ["y.yaml"]`},
		{args: []string{"inject", "-f", "../../examples/pod.yaml", "--config", "/nonexistent.yaml"}, wantErr: "read --config: open /nonexistent.yaml"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tc.args, &stdout, &stderr)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
			}
			assert.Contains(t, stdout.String(), tc.wantStdout)
			assert.Contains(t, stderr.String(), tc.wantStderr)
		})
	}
}

// TestInjectExample is `go run ./cmd/webhook inject -f examples/pod.yaml`.
func TestInjectExample(t *testing.T) {
	const example = "../../examples/pod.yaml"
	input, err := os.ReadFile(example)
	require.NoError(t, err)

	for _, args := range [][]string{
		{"inject", "-f", example},
		{"inject", "-f", example, "--config", exampleConfig}, // the example config is the defaults
	} {
		var stdout, stderr bytes.Buffer
		require.NoError(t, run(context.Background(), args, &stdout, &stderr))
		assert.Empty(t, stderr.String(), "no skips for the example")

		var pod corev1.Pod
		require.NoError(t, yaml.UnmarshalStrict(stdout.Bytes(), &pod))
		var orig corev1.Pod
		require.NoError(t, yaml.Unmarshal(input, &orig))
		want, report, err := mutate.Pod(&orig, mutate.DefaultConfig())
		require.NoError(t, err)
		require.True(t, report.Changed)
		assert.Equal(t, want.Spec.InitContainers[0].Name, pod.Spec.InitContainers[0].Name)
		wantJSON, _ := json.Marshal(want)
		gotJSON, _ := json.Marshal(&pod)
		assert.JSONEq(t, string(wantJSON), string(gotJSON))
		assert.Equal(t, "APP_POD_NAME", pod.Spec.Containers[0].Env[0].Name)
		assert.Contains(t, pod.Annotations, mutate.AnnotationStatus)
	}

	// Standard input, and the same bytes out as the inject package gives.
	stdin = bytes.NewReader(input)
	defer func() { stdin = os.Stdin }()
	var stdout bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"inject", "-f", "-"}, &stdout, io.Discard))
	want, _, err := inject.Manifests(input, mutate.DefaultConfig())
	require.NoError(t, err)
	assert.Equal(t, string(want), stdout.String())
}

func TestInjectErrorsAndWarnings(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n"+
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {podmeta.io/inject: \"true\"}\n  annotations: {podmeta.io/ambassador-policy: sometimes}\n"+
		"spec: {containers: [{name: a, image: b}]}\n"), 0o600))
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"inject", "-f", bad}, &stdout, &stderr)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "inject "+bad+": document 2 (Pod p): ")
	assert.Contains(t, err.Error(), "podmeta.io/ambassador-policy")
	assert.Empty(t, stdout.String(), "nothing printed on error")

	stdout.Reset()
	require.NoError(t, run(context.Background(), []string{"inject", "-f", "../../inject/testdata/skips.yaml"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "warning: document 1 (Pod mine): skipped env POD_NAME in container app: "+mutate.ReasonUserDefined)
	assert.Contains(t, stdout.String(), "kind: Pod")
}

func TestExampleConfigIsTheDefault(t *testing.T) {
	cfg, err := loadConfig(exampleConfig)
	require.NoError(t, err)
	a, _ := json.Marshal(cfg)
	b, _ := json.Marshal(mutate.DefaultConfig())
	assert.JSONEq(t, string(b), string(a), "examples/config.yaml documents the defaults; update it with them")
}

// Rotating the certificate while reviews are flowing loses none of them:
// connections (new ones and kept-alive ones) keep working throughout.
func TestRotationUnderTrafficDropsNothing(t *testing.T) {
	ca, dir := newCerts(t)
	s := startServe(t, dir)
	pod := testPod()
	body := reviewBody(t, "rotating", pod)

	const workers, perWorker = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Go(func() {
			c := client(ca, false)
			// Half the workers reconnect for every review, half keep alive.
			c.Transport.(*http.Transport).DisableKeepAlives = w%2 == 0
			for range perWorker {
				resp, err := c.Post("https://"+s.addr+"/mutate", "application/json", bytes.NewReader(body))
				if err != nil {
					errs <- err
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
				}
			}
		})
	}
	for _, cn := range []string{"two", "three", "four"} {
		require.NoError(t, testcerts.WriteServing(dir, issue(t, ca, cn)))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The last certificate is the one served in the end.
	require.Eventually(t, func() bool {
		c := client(ca, false)
		resp, err := c.Post("https://"+s.addr+"/mutate", "application/json", bytes.NewReader(body))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName == "four"
	}, 20*time.Second, 20*time.Millisecond)
}

// The API server closes idle webhook connections after Go's default
// transport idle timeout; the webhook must wait longer, or the two race
// (see idleTimeout).
func TestIdleTimeoutOutlastsAPIServer(t *testing.T) {
	apiServer := http.DefaultTransport.(*http.Transport).IdleConnTimeout
	require.NotZero(t, apiServer)
	assert.Greater(t, idleTimeout, apiServer+10*time.Second)
}

// serve sets GOGC=70 unless the environment sets GOGC, which wins (the
// runtime reads it at start, so each case is its own process).
func TestServeGOGC(t *testing.T) {
	_, dir := newCerts(t)
	args, err := json.Marshal([]string{"serve",
		"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--tls-cert-file", filepath.Join(dir, "tls.crt"), "--tls-key-file", filepath.Join(dir, "tls.key")})
	require.NoError(t, err)
	for _, tc := range []struct{ env, want string }{{"", "70"}, {"120", "120"}, {"lots", "100"}} {
		t.Run("GOGC="+tc.env, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "PODMETA_TEST_MAIN_ARGS="+string(args), "GOGC="+tc.env)
			stderr, err := cmd.StderrPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			var started map[string]any
			sc := bufio.NewScanner(stderr)
			for started == nil && sc.Scan() {
				var e map[string]any
				if json.Unmarshal(sc.Bytes(), &e) == nil && e["msg"] == "serving admission reviews" {
					started = e
				}
			}
			require.NotNil(t, started, "no start log")
			assert.Equal(t, tc.want, started["gogc"])
			resp, err := http.Get("http://" + started["metrics_addr"].(string) + "/metrics")
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Contains(t, string(body), "\ngo_gc_gogc_percent "+tc.want+"\n", "what the runtime runs with")
		})
	}
}
