package app

import (
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, h http.Handler, target string) (int, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Code, rec.Body.Bytes()
}

func TestEnvReportsTheProcessEnvironment(t *testing.T) {
	h := New(Config{Environ: func() []string { return []string{"POD_NAME=p1", "EMPTY=", "WITH_EQ=a=b"} }})
	code, body := get(t, h, "/env")
	require.Equal(t, 200, code)
	var env map[string]string
	require.NoError(t, json.Unmarshal(body, &env))
	assert.Equal(t, map[string]string{"POD_NAME": "p1", "EMPTY": "", "WITH_EQ": "a=b"}, env)
}

// The kubelet writes downwardAPI files as symlinks into a timestamped
// directory through ..data; the app reports the visible names only.
func TestPodinfoReadsAKubeletStyleVolume(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_11_27_10_00_00.000")
	require.NoError(t, os.Mkdir(ts, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(ts, "labels"), []byte(`app="x"`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(ts, "name"), []byte("p1"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(ts, "app"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(ts, "app", "cpu_request"), []byte("100"), 0o644))
	require.NoError(t, os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink("..data/app", filepath.Join(dir, "app")))
	require.NoError(t, os.Symlink("..data/labels", filepath.Join(dir, "labels")))
	require.NoError(t, os.Symlink("..data/name", filepath.Join(dir, "name")))

	code, body := get(t, New(Config{PodinfoDir: dir}), "/podinfo")
	require.Equal(t, 200, code, string(body))
	var files map[string]string
	require.NoError(t, json.Unmarshal(body, &files))
	assert.Equal(t, map[string]string{"labels": `app="x"`, "name": "p1", "app/cpu_request": "100"}, files)
}

func TestPodinfoMissingDirectoryIs404(t *testing.T) {
	code, body := get(t, New(Config{PodinfoDir: filepath.Join(t.TempDir(), "nope")}), "/podinfo")
	assert.Equal(t, 404, code)
	assert.Contains(t, string(body), "nope")
}

func TestFetchWithServiceAccountVerifiesTLSAndSendsToken(t *testing.T) {
	var gotAuth string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, "hi")
	}))
	defer srv.Close()
	sa := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(sa, "token"), []byte("tok123\n"), 0o600))
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	require.NoError(t, os.WriteFile(filepath.Join(sa, "ca.crt"), caPEM, 0o644))
	h := New(Config{SADir: sa, RequestTimeout: 30 * time.Second})

	code, body := get(t, h, "/fetch?sa=true&url="+url.QueryEscape(srv.URL+"/api"))
	require.Equal(t, 200, code, string(body))
	var res Result
	require.NoError(t, json.Unmarshal(body, &res))
	assert.Equal(t, Result{Status: http.StatusTeapot, Body: "hi"}, res)
	assert.Equal(t, "Bearer tok123", gotAuth)

	// Without sa=true neither the CA nor the token is used: TLS fails.
	gotAuth = ""
	code, body = get(t, h, "/fetch?url="+url.QueryEscape(srv.URL+"/api"))
	require.Equal(t, 200, code)
	res = Result{}
	require.NoError(t, json.Unmarshal(body, &res))
	assert.Contains(t, res.Error, "certificate")
	assert.Empty(t, gotAuth)
}

func TestFetchRejectsBadURLs(t *testing.T) {
	h := New(Config{})
	for _, u := range []string{"", "ftp://x/y", "/relative", "http://"} {
		code, body := get(t, h, "/fetch?url="+url.QueryEscape(u))
		assert.Equal(t, 400, code, u)
		assert.Contains(t, string(body), "query parameter url", u)
	}
}

func TestRelayForwardsMethodPathQueryAndBody(t *testing.T) {
	var got struct{ method, path, query, body, ctype string }
	amb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.method, got.path, got.query, got.body, got.ctype = r.Method, r.URL.Path, r.URL.RawQuery, string(b), r.Header.Get("Content-Type")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"reason":"Forbidden"}`)
	}))
	defer amb.Close()
	h := New(Config{AmbassadorURL: amb.URL, RequestTimeout: 30 * time.Second})

	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPatch, "/relay/api/v1/namespaces/ns/pods/p?fieldManager=x", strings.NewReader(`{"a":1}`))
	req.Header.Set("Content-Type", "application/merge-patch+json")
	h.ServeHTTP(rec, req)
	require.Equal(t, 200, rec.Code)
	var res Result
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &res))
	assert.Equal(t, Result{Status: 403, Body: `{"reason":"Forbidden"}`}, res)
	assert.Equal(t, http.MethodPatch, got.method)
	assert.Equal(t, "/api/v1/namespaces/ns/pods/p", got.path)
	assert.Equal(t, "fieldManager=x", got.query)
	assert.Equal(t, `{"a":1}`, got.body)
	assert.Equal(t, "application/merge-patch+json", got.ctype)
}

func TestRelayReportsAnUnreachableAmbassador(t *testing.T) {
	h := New(Config{AmbassadorURL: "http://127.0.0.1:1", RequestTimeout: 30 * time.Second})
	code, body := get(t, h, "/relay/api")
	require.Equal(t, 200, code)
	var res Result
	require.NoError(t, json.Unmarshal(body, &res))
	assert.Zero(t, res.Status)
	assert.NotEmpty(t, res.Error)
}
