package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/hack/loadtest/scenario"
	"github.com/podmeta/podmeta/hack/loadtest/target"
)

// startNull runs the null command in-process, as the bench starts it.
func startNull(t *testing.T) (url string, env *scenario.Env) {
	t.Helper()
	env, err := scenario.NewEnv(t.TempDir())
	require.NoError(t, err)
	port, err := target.FreePort()
	require.NoError(t, err)
	mport, err := target.FreePort()
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"null",
			fmt.Sprintf("--listen=127.0.0.1:%d", port), fmt.Sprintf("--metrics-listen=127.0.0.1:%d", mport),
			"--tls-cert-file=" + filepath.Join(env.CertDir, "tls.crt"), "--tls-key-file=" + filepath.Join(env.CertDir, "tls.key"),
		}, os.Stdout, os.Stderr)
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done, "null server shuts down cleanly")
	})
	require.Eventually(t, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", mport))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 10*time.Second, 5*time.Millisecond)
	return fmt.Sprintf("https://127.0.0.1:%d/mutate", port), env
}

func TestRunAgainstNull(t *testing.T) {
	url, env := startNull(t)
	jsonOut := filepath.Join(t.TempDir(), "out.json")
	var out bytes.Buffer
	err := run(context.Background(), []string{"run", "--url", url, "--ca-file", filepath.Join(env.CertDir, "ca.crt"),
		"--null", "--pod", "large", "--workers", "3", "--count", "30", "--warmup", "0", "--pid", fmt.Sprint(os.Getpid()), "--json", jsonOut}, &out, os.Stderr)
	require.NoError(t, err, out.String())
	assert.Contains(t, out.String(), "p99.9")
	assert.Contains(t, out.String(), "large")

	var m scenario.Measurement
	b, err := os.ReadFile(jsonOut)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, int64(30), m.OK)
	assert.Equal(t, 3, m.Workers)
	assert.Positive(t, m.PeakRSS, "--pid reports peak RSS")

	// The null server does not patch: as a webhook it fails validation,
	// and the command says so.
	out.Reset()
	err = run(context.Background(), []string{"run", "--url", url, "--ca-file", filepath.Join(env.CertDir, "ca.crt"),
		"--pod", "small", "--workers", "1", "--count", "5", "--warmup", "0"}, &out, os.Stderr)
	assert.ErrorContains(t, err, "5 of 5 requests failed")
	assert.Contains(t, out.String(), "patch=5")
}

func TestRunRefusesRemoteTargets(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.crt")
	env, err := scenario.NewEnv(t.TempDir())
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(env.CertDir, "ca.crt"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(ca, b, 0o600))
	for _, u := range []string{"https://10.0.0.1:443/mutate", "https://podmeta.podmeta.svc/mutate", "http://127.0.0.1:8443/mutate"} {
		err := run(context.Background(), []string{"run", "--url", u, "--ca-file", ca, "--count", "1"}, os.Stdout, os.Stderr)
		assert.Error(t, err, u)
	}
}

func TestUsage(t *testing.T) {
	assert.Error(t, run(context.Background(), nil, os.Stdout, os.Stderr))
	assert.ErrorContains(t, run(context.Background(), []string{"bogus"}, os.Stdout, os.Stderr), "unknown command")
	assert.ErrorContains(t, run(context.Background(), []string{"bench"}, os.Stdout, os.Stderr), "--webhook-bin")
	assert.ErrorContains(t, run(context.Background(), []string{"bench", "--webhook-bin", "x", "--pods", "huge"}, os.Stdout, os.Stderr), "unknown pod size")
	assert.ErrorContains(t, run(context.Background(), []string{"bench", "--webhook-bin", "x", "--webhook-env", "GOGC"}, os.Stdout, os.Stderr), "want KEY=VALUE")
}
