package admission

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmeta/podmeta/mutate"
)

// limitedServer serves a handler with MaxInFlight(1) over real HTTP/1.1
// connections (what the API server uses for webhooks), whose mutate blocks
// until release is called (at the latest when the test ends, so a failing
// test does not hang in the server's Close).
func limitedServer(t *testing.T) (srv *httptest.Server, h *handler, reg *prometheus.Registry, calls *atomic.Int32, release func()) {
	t.Helper()
	reg = prometheus.NewRegistry()
	hh, err := NewHandler(mutate.DefaultConfig(), slog.New(slog.DiscardHandler), reg, MaxInFlight(1))
	require.NoError(t, err)
	h = hh.(*handler)
	calls = new(atomic.Int32)
	gate := make(chan struct{})
	release = sync.OnceFunc(func() { close(gate) })
	h.mutate = func(p *corev1.Pod, c mutate.Config) (*corev1.Pod, mutate.Report, error) {
		calls.Add(1)
		<-gate
		return mutate.Pod(p, c)
	}
	srv = httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(release) // runs first
	return srv, h, reg, calls, release
}

func postURL(ctx context.Context, url, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return http.DefaultClient.Do(req)
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestMaxInFlight: with one slot, a second review waits (gauge 1) and is
// answered once the first is done; both are patched.
func TestMaxInFlight(t *testing.T) {
	srv, h, reg, calls, release := limitedServer(t)
	codes := make(chan int, 2)
	for i := range 2 {
		go func() {
			resp, err := postURL(context.Background(), srv.URL, review(fmt.Sprintf("uid-%d", i), "CREATE", "Pod", optedInPod))
			if err != nil {
				codes <- -1
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	require.Eventually(t, func() bool { return calls.Load() == 1 && gauge(t, reg, "podmeta_admission_waiting") == 1 }, 5*time.Second, time.Millisecond)
	release()
	assert.Equal(t, http.StatusOK, <-codes)
	assert.Equal(t, http.StatusOK, <-codes)
	assert.EqualValues(t, 2, calls.Load())
	assert.Zero(t, gauge(t, reg, "podmeta_admission_waiting"))
	assert.Equal(t, 2.0, testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomePatched)))
}

// TestSlowBodyHoldsNoSlot: a client that sends its headers and part of its
// body, then stalls, must not keep other reviews waiting (it would until
// the server's read timeout, and one such client per slot would stall
// every admission).
func TestSlowBodyHoldsNoSlot(t *testing.T) {
	srv, _, _, _, release := limitedServer(t)
	release() // mutate does not block here
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond) // the server has the headers and waits for the body

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := postURL(ctx, srv.URL, review("uid-ok", "CREATE", "Pod", optedInPod))
	require.NoError(t, err, "a stalled body held the only slot")
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

// TestAbandonedWhileWaiting: over HTTP/1.1, a client that gives up while
// its review waits for a slot is noticed, and the review is dropped
// without being decoded or mutated.
func TestAbandonedWhileWaiting(t *testing.T) {
	srv, h, reg, calls, release := limitedServer(t)
	first := make(chan error, 1)
	go func() {
		resp, err := postURL(context.Background(), srv.URL, review("uid-1", "CREATE", "Pod", optedInPod))
		if err == nil {
			resp.Body.Close()
		}
		first <- err
	}()
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := postURL(ctx, srv.URL, review("uid-2", "CREATE", "Pod", optedInPod))
	require.Error(t, err, "the second review had to wait")
	require.Eventually(t, func() bool { return testutil.ToFloat64(h.m.requests.WithLabelValues(OutcomeAbandoned)) == 1 }, 5*time.Second, time.Millisecond,
		"the server noticed the client leave while the review waited")
	release()
	require.NoError(t, <-first)
	assert.EqualValues(t, 1, calls.Load(), "the abandoned review was never mutated")
	assert.Zero(t, gauge(t, reg, "podmeta_admission_waiting"))
}
