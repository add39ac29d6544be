package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLimitInFlight: at most n reviews run at once, the others wait and all
// are answered; a request whose client gives up while waiting never runs.
func TestLimitInFlight(t *testing.T) {
	var running, peak atomic.Int32
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		entered <- struct{}{}
		<-release
		running.Add(-1)
		w.WriteHeader(http.StatusNoContent)
	})
	reg := prometheus.NewRegistry()
	h, err := limitInFlight(next, 2, reg)
	require.NoError(t, err)
	waiting := func() float64 {
		v, err := testutil.GatherAndCount(reg, "podmeta_admission_waiting")
		require.NoError(t, err)
		require.Equal(t, 1, v)
		mfs, err := reg.Gather()
		require.NoError(t, err)
		return mfs[0].GetMetric()[0].GetGauge().GetValue()
	}

	var wg sync.WaitGroup
	codes := make([]int, 5)
	for i := range codes {
		wg.Go(func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", nil))
			codes[i] = rec.Code
		})
	}
	<-entered
	<-entered
	require.Eventually(t, func() bool { return waiting() == 3 }, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 2, running.Load())

	// A client that gives up while waiting: dropped, never run.
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan struct{})
	go func() {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/mutate", nil).WithContext(ctx))
		close(gaveUp)
	}()
	require.Eventually(t, func() bool { return waiting() == 4 }, 5*time.Second, time.Millisecond)
	cancel()
	<-gaveUp
	assert.EqualValues(t, 3, waiting())

	close(release)
	wg.Wait()
	for _, c := range codes {
		assert.Equal(t, http.StatusNoContent, c)
	}
	assert.EqualValues(t, 2, peak.Load())
	assert.EqualValues(t, 0, waiting())
	assert.Len(t, entered, 3, "only the five answered requests ran")
}
