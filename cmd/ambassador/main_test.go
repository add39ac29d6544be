package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/ambassador"
)

func noEnv(string) string { return "" }

func TestRunFlagErrors(t *testing.T) {
	base := []string{"--upstream=https://127.0.0.1:6443", "--listen=127.0.0.1:0", "--health-listen=127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--policy=open"}, `--policy/--allow: unknown policy "open" (want read-only, full or allow-list)`},
		{[]string{"--allow=GTE /api"}, `--policy/--allow: allow rule 1 "GTE /api": unknown method "GTE"`},
		{[]string{"--log-level=loud"}, `--log-level: invalid log level "loud"`},
		{[]string{"--listen=0.0.0.0:8001"}, "is not a loopback address"},
		{[]string{"--upstream=http://127.0.0.1:6443"}, "want https://host:port"},
		{[]string{"--shutdown-delay=-1s"}, "--shutdown-delay must not be negative, got -1s"},
		{[]string{"--shutdown-delay=5"}, `invalid value "5" for flag -shutdown-delay`},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), append(append([]string{}, base...), tc.args...), io.Discard, &stderr, noEnv, nil)
		assert.ErrorContains(t, err, tc.want, tc.args)
	}
	err := run(context.Background(), []string{"--listen=127.0.0.1:0"}, io.Discard, io.Discard, noEnv, nil)
	assert.ErrorContains(t, err, "--upstream is empty and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set")
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"--version"}, &out, io.Discard, noEnv, nil))
	var info map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &info))
	assert.NotEmpty(t, info["goVersion"])
}

func TestRunServesAndShutsDown(t *testing.T) {
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Authorization"))
	}))
	defer api.Close()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "token"), []byte("tok\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0o644))
	// The upstream comes from the in-cluster environment.
	env := map[string]string{"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": strconv.Itoa(api.Listener.Addr().(*net.TCPAddr).Port)}

	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan *ambassador.Server, 1)
	done := make(chan error, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"--listen=127.0.0.1:0", "--health-listen=127.0.0.1:0",
			"--token-file=" + filepath.Join(dir, "token"), "--ca-file=" + filepath.Join(dir, "ca.crt"),
			"--policy=allow-list", "--allow=GET /api"}, io.Discard, &stderr, func(k string) string { return env[k] },
			func(s *ambassador.Server) { started <- s })
	}()
	var srv *ambassador.Server
	select {
	case srv = <-started:
	case err := <-done:
		t.Fatalf("run failed: %v", err)
	}
	res, err := http.Get("http://" + srv.Addr().String() + "/api")
	require.NoError(t, err)
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, "Bearer tok", string(b))
	res, err = http.Get("http://" + srv.Addr().String() + "/apis")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusForbidden, res.StatusCode)
	res, err = http.Get("http://" + srv.HealthAddr().String() + "/metrics")
	require.NoError(t, err)
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	assert.Contains(t, string(b), "go_goroutines", "runtime metrics registered")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("no shutdown")
	}
	assert.Contains(t, stderr.String(), `"msg":"serving"`, "JSON logs")
	assert.Contains(t, stderr.String(), `"msg":"shutting down"`)
}
