package ambassador

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests     *prometheus.CounterVec
	refused      *prometheus.CounterVec
	upstream     prometheus.Histogram
	tokenReloads *prometheus.CounterVec
	caReloads    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_ambassador_requests_total",
			Help: "Requests served by the proxy, by response code and method (499: the client hung up before the answer; nothing is written, or a 502 to a client that only half-closed).",
		}, []string{"code", "method"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_ambassador_refused_total",
			Help: "Requests refused before reaching the API server, by rule (host, origin, read-only, allow-list, upgrade, canonical-path, impersonation).",
		}, []string{"rule"}),
		upstream: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podmeta_ambassador_upstream_duration_seconds",
			Help:    "Time from sending a request to the API server to receiving its response headers.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		tokenReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_ambassador_token_reloads_total",
			Help: "Token file loads that found new content (success) or failed (error).",
		}, []string{"result"}),
		caReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_ambassador_ca_reloads_total",
			Help: "CA file loads that found new content (success) or failed (error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.refused, m.upstream, m.tokenReloads, m.caReloads)
	}
	return m
}

// methodLabel bounds the method label's cardinality: clients choose the
// method string.
func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
		return m
	}
	return "other"
}
