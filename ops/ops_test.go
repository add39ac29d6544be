package ops

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level     string
		wantErr   bool
		debugSeen bool
		infoSeen  bool
		errorSeen bool
	}{
		{level: "debug", debugSeen: true, infoSeen: true, errorSeen: true},
		{level: "INFO", infoSeen: true, errorSeen: true},
		{level: "warn", errorSeen: true},
		{level: "error", errorSeen: true},
		{level: "verbose", wantErr: true},
		{level: "", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.level, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tc.level)
			if tc.wantErr {
				require.ErrorContains(t, err, "invalid log level")
				return
			}
			require.NoError(t, err)
			log.Debug("d")
			log.Info("i")
			log.Error("e")
			out := buf.String()
			assert.Equal(t, tc.debugSeen, strings.Contains(out, `"msg":"d"`))
			assert.Equal(t, tc.infoSeen, strings.Contains(out, `"msg":"i"`))
			assert.Equal(t, tc.errorSeen, strings.Contains(out, `"msg":"e"`))
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var m map[string]any
				assert.NoError(t, json.Unmarshal([]byte(line), &m), "every line is JSON: %s", line)
			}
		})
	}
}

func TestHandler(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "podmeta_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	var readyErr error
	h := Handler(reg, func() error { return readyErr }, slog.New(slog.DiscardHandler))

	get := func(method, path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		body, _ := io.ReadAll(rec.Body)
		return rec.Code, string(body)
	}

	code, body := get("GET", "/healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", body)

	code, body = get("GET", "/readyz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", body)

	readyErr = errors.New("no serving certificate loaded")
	code, body = get("GET", "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "not ready: no serving certificate loaded\n", body)

	code, _ = get("HEAD", "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)

	code, body = get("GET", "/metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "podmeta_test_total 1")
	assert.Contains(t, body, "go_goroutines")
	assert.Contains(t, body, "process_start_time_seconds")

	code, _ = get("POST", "/healthz")
	assert.Equal(t, http.StatusMethodNotAllowed, code)
	code, _ = get("GET", "/nope")
	assert.Equal(t, http.StatusNotFound, code)
}
