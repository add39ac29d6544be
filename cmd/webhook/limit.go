package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// limitInFlight lets at most n reviews run at once; the others wait, in
// arrival order, before their body is read. A review's memory is mostly
// its decoded pod and its patch (a few hundred KB for a large pod), so
// memory under a burst follows n, not the number of connections the API
// server opens; a waiting request's body stays in its socket buffer. With n
// a few times GOMAXPROCS the CPUs stay busy, so throughput does not change.
// A request whose client gives up while waiting is dropped unanswered.
func limitInFlight(next http.Handler, n int, reg prometheus.Registerer) (http.Handler, error) {
	waiting := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "podmeta_admission_waiting",
		Help: "Admission reviews waiting for one of the --max-in-flight slots.",
	})
	if reg != nil {
		if err := reg.Register(waiting); err != nil {
			return nil, err
		}
	}
	slots := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
		default:
			waiting.Inc()
			select {
			case slots <- struct{}{}:
				waiting.Dec()
			case <-r.Context().Done():
				waiting.Dec()
				return
			}
		}
		defer func() { <-slots }()
		next.ServeHTTP(w, r)
	}), nil
}
