package main

import (
	"bytes"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/admission"
	"github.com/podmeta/podmeta/hack/loadtest/corpus"
	"github.com/podmeta/podmeta/hack/loadtest/nullserver"
	"github.com/podmeta/podmeta/mutate"
)

// BenchmarkHandler measures the admission handler in-process, without TLS
// and HTTP transport, beside the null handler: the part of a review's cost
// that is ours. Logs go to io.Discard through the JSON handler at info, as
// in production (the line is formatted, then dropped).
//
//	go test -run '^$' -bench Handler -cpuprofile cpu.out ./hack/loadtest/
func BenchmarkHandler(b *testing.B) {
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	webhook, err := admission.NewHandler(mutate.DefaultConfig(), log, prometheus.NewRegistry())
	require.NoError(b, err)
	nullStd, err := nullserver.Handler(nullserver.JSONStd)
	require.NoError(b, err)
	nullV2, err := nullserver.Handler(nullserver.JSONv2)
	require.NoError(b, err)
	for _, size := range corpus.Sizes {
		review, err := corpus.NewReview(size)
		require.NoError(b, err)
		for _, h := range []struct {
			name    string
			handler http.Handler
		}{{"null", nullStd}, {"null-v2", nullV2}, {"webhook", webhook}} {
			b.Run(size+"/"+h.name, func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				var body []byte
				w := &discardWriter{h: http.Header{}}
				b.ReportAllocs()
				b.SetBytes(int64(review.Len()))
				cpu0 := cpuTime(b)
				for b.Loop() {
					body = review.AppendBody(body[:0], corpus.NewUID(rng))
					req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					w.code = 0
					h.handler.ServeHTTP(w, req)
					if w.code != 0 && w.code != http.StatusOK {
						b.Fatalf("status %d", w.code)
					}
				}
				// CPU time (all threads, GC included) per op: unlike ns/op it
				// does not grow when other processes share the core.
				b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
