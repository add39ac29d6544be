// Package admission is the HTTP transport of the mutating webhook: it limits
// and decodes an AdmissionReview v1, hands Pod CREATEs to mutate.Pod, turns
// what mutate added into a JSON Patch (package patch) and encodes the
// answer. The injection decision itself lives in package mutate.
package admission

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmeta/podmeta/mutate"
	"github.com/podmeta/podmeta/patch"
	"github.com/podmeta/podmeta/tlsrecord"
)

// MaxBodyBytes bounds a request body. The API server limits objects to
// about 3 MiB in etcd; an AdmissionReview can carry the object twice (object
// and oldObject), hence controller-runtime's 7 MiB, which we follow.
const MaxBodyBytes = 7 << 20

// presizeLimit bounds the buffer sized from a request's Content-Length
// before its body arrives: larger bodies grow as they are read, so a client
// announcing megabytes it never sends costs nothing.
const presizeLimit = 64 << 10

// maxWarnings bounds the admission warnings per review: the API server
// truncates long lists, and the status annotation has them all anyway.
const maxWarnings = 10

// Outcomes, the label values of podmeta_admission_requests_total.
const (
	OutcomePatched     = "patched"      // opted-in pod, patch returned
	OutcomeUnchanged   = "unchanged"    // opted-in pod, nothing to add (reinvocation)
	OutcomeNotOptedIn  = "not_opted_in" // pod without the opt-in label
	OutcomeIgnored     = "ignored"      // not a Pod CREATE
	OutcomeDenied      = "denied"       // invalid podmeta annotation
	OutcomeBadRequest  = "bad_request"  // not a usable AdmissionReview
	OutcomeServerError = "error"        // a bug: patch failure or panic
	OutcomeAbandoned   = "abandoned"    // the client went away while the review waited for a slot
)

const admissionV1 = "admission.k8s.io/v1"

var tooLarge = &httpError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes)}

type handler struct {
	cfg mutate.Config
	// jobs feeds the MaxInFlight workers (nil: reviews run on the
	// request's goroutine).
	jobs    chan *job
	jobPool sync.Pool
	// mutate is mutate.Pod; tests replace it to exercise panic recovery.
	mutate  func(*corev1.Pod, mutate.Config) (*corev1.Pod, mutate.Report, error)
	log     *slog.Logger
	m       *metrics
	bufPool sync.Pool
	opsPool sync.Pool // *[]patch.Operation
}

// Option changes a handler's defaults.
type Option func(*handler)

// MaxInFlight lets at most n reviews be decoded, mutated and encoded at
// once (n <= 0: no bound); the others wait in arrival order. A review's
// memory is mostly its decoded pod and its patch (a few hundred KB for a
// large pod), so under a burst memory follows n, not the number of
// connections the API server opens. With n a few times GOMAXPROCS the CPUs
// stay busy, so throughput does not change. A review waits only after its
// body is read: a client that sends its body slowly holds no slot, and one
// that goes away while waiting is noticed (net/http watches the connection
// once the body is read) and dropped.
//
// The n reviews run on n long-lived worker goroutines rather than on the
// connections' own: decoding a pod needs a deep stack, and the garbage
// collector shrinks the stacks of idle goroutines, so with every
// connection doing the work, each of them regrew (copied) its stack after
// almost every collection: 5 % of the CPU under load. The workers last as
// long as the process (a webhook makes one handler).
func MaxInFlight(n int) Option {
	return func(h *handler) {
		if n <= 0 {
			return
		}
		h.jobs = make(chan *job) // unbuffered: a send is a worker taking it
		for range n {
			go h.worker()
		}
	}
}

// job is one review handed to a worker: the request body in, the encoded
// answer out.
type job struct {
	req     []byte
	out     *bytes.Buffer
	outcome string
	err     error
	done    chan struct{}
}

func (h *handler) worker() {
	for j := range h.jobs {
		j.outcome, j.out, j.err = h.process(j.req)
		j.done <- struct{}{}
	}
}

// panicError carries a panic out of process, so that a bug answers 500
// instead of killing a worker (and with it the process).
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("podmeta: internal error: %v", e.value) }

// NewHandler returns the POST handler for AdmissionReview v1 (the server
// mounts it at /mutate). cfg is validated here; metrics are registered on
// reg (nil: not registered anywhere).
func NewHandler(cfg mutate.Config, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("admission handler: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("admission handler: register metrics: %w", err)
	}
	h := &handler{cfg: cfg, mutate: mutate.Pod, log: logger, m: m}
	h.bufPool.New = func() any { return new(bytes.Buffer) }
	h.opsPool.New = func() any { return new([]patch.Operation) }
	h.jobPool.New = func() any { return &job{done: make(chan struct{}, 1)} }
	for _, o := range opts {
		o(h)
	}
	return h, nil
}

// httpError is a transport-level failure: the API server applies the
// webhook's failurePolicy and shows the message.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) *httpError {
	return &httpError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	outcome := OutcomeServerError
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("panic serving admission review", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			outcome = OutcomeServerError
			http.Error(w, fmt.Sprintf("podmeta: internal error: %v", v), http.StatusInternalServerError)
		}
		elapsed := time.Since(start)
		h.m.requests.WithLabelValues(outcome).Inc()
		h.m.duration.Observe(elapsed.Seconds())
		if h.log.Enabled(r.Context(), slog.LevelDebug) {
			h.log.LogAttrs(r.Context(), slog.LevelDebug, "admission review",
				slog.String("outcome", outcome), slog.Duration("duration", elapsed), slog.String("remote", r.RemoteAddr))
		}
	}()
	out, body, err := h.serve(w, r)
	if body != nil {
		defer h.putBuf(body)
	}
	outcome = out
	if err != nil {
		var he *httpError
		var pe *panicError
		if errors.As(err, &pe) {
			h.log.Error("panic serving admission review", "panic", fmt.Sprint(pe.value), "stack", string(pe.stack))
			he = &httpError{code: http.StatusInternalServerError, msg: pe.Error()}
		} else if !errors.As(err, &he) {
			he = &httpError{code: http.StatusInternalServerError, msg: "podmeta: internal error: " + err.Error()}
			h.log.Error("admission review failed", "error", err)
		} else if outcome == OutcomeAbandoned {
			h.log.Warn("admission review abandoned: the client went away while it waited for a slot (overloaded? see --max-in-flight)", "remote", r.RemoteAddr)
		} else {
			h.log.Warn("bad admission request", "status", he.code, "error", he.msg, "remote", r.RemoteAddr)
		}
		http.Error(w, he.msg, he.code)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// With a length, net/http writes the body as is; without one, a body
	// over its 4 KiB buffer is sent chunked, with a terminating chunk.
	w.Header().Set("Content-Length", strconv.Itoa(body.Len()))
	// Over HTTP/1.1 an answer over about 4 KiB left in two writes or more
	// (net/http's buffer with the headers, then the rest, a write per TLS
	// record): corked, it leaves in one, a system call and a wake-up of
	// the API server less. Larger answers (a large pod's) are not held:
	// their writes cost little next to their review, and every connection
	// blocked in a write would hold its whole answer. (Over HTTP/2 the
	// connection's own goroutine writes the frames.)
	if c := tlsrecord.FromContext(r.Context()); c != nil && r.ProtoMajor == 1 && body.Len() > corkAbove && body.Len() <= corkUpTo {
		c.Cork()
		defer func() {
			if err := c.Uncork(); err != nil {
				h.log.Warn("writing the answer failed; connection closed", "error", err, "remote", r.RemoteAddr)
			}
		}()
		_, _ = w.Write(body.Bytes())
		_ = http.NewResponseController(w).Flush()
		return
	}
	_, _ = w.Write(body.Bytes())
}

// Answers corked: those that may not fit net/http's 4 KiB buffer with
// their headers, up to what tlsrecord holds with the TLS overhead.
const (
	corkAbove = 3 << 10
	corkUpTo  = tlsrecord.MaxCorked - 4<<10
)

// getBuf and putBuf pool the buffers of a review (request body, patch,
// answer): at thousands of reviews per second, allocating them anew was a
// third of the bytes allocated per review, and so of the GC's work.
func (h *handler) getBuf() *bytes.Buffer {
	b := h.bufPool.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func (h *handler) putBuf(b *bytes.Buffer) {
	// Do not keep huge buffers alive in the pool.
	if b.Cap() <= 1<<20 {
		h.bufPool.Put(b)
	}
}

// putOps returns a review's operations slice to the pool, cleared: its
// operations point into the review's mutated pod.
func (h *handler) putOps(buf *[]patch.Operation, ops []patch.Operation) {
	if cap(ops) > cap(*buf) {
		*buf = ops
	}
	all := (*buf)[:cap(*buf)]
	clear(all)
	if cap(all) > maxPooledOps {
		return
	}
	*buf = all[:0]
	h.opsPool.Put(buf)
}

// maxPooledOps bounds the slices kept (a pod with thousands of env vars
// makes one op each).
const maxPooledOps = 1024

// serve writes the encoded AdmissionReview to body and returns the outcome,
// or returns an error (an *httpError for the client's faults).
func (h *handler) serve(w http.ResponseWriter, r *http.Request) (string, *bytes.Buffer, error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return OutcomeBadRequest, nil, &httpError{code: http.StatusMethodNotAllowed, msg: fmt.Sprintf("method %s not allowed: POST an AdmissionReview", r.Method)}
	}
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return OutcomeBadRequest, nil, &httpError{code: http.StatusUnsupportedMediaType, msg: fmt.Sprintf("Content-Type %q not supported: want application/json", ct)}
	}
	if r.ContentLength > MaxBodyBytes {
		return OutcomeBadRequest, nil, tooLarge // without reading it
	}
	buf := h.getBuf()
	defer h.putBuf(buf)
	if r.ContentLength > 0 && r.ContentLength <= presizeLimit {
		// The exact size (ReadFrom wants bytes.MinRead spare) instead of
		// doubling up to it: every review waiting for a slot holds its body.
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return OutcomeBadRequest, nil, tooLarge
		}
		return OutcomeBadRequest, nil, badRequest("read request body: %v", err)
	}
	if h.jobs == nil {
		return h.process(buf.Bytes())
	}
	j := h.jobPool.Get().(*job)
	defer h.jobPool.Put(j)
	j.req = buf.Bytes()
	defer func() { j.req, j.out = nil, nil }()
	select {
	case h.jobs <- j:
	default:
		// All workers busy: wait in arrival order (a channel's senders
		// queue), unless the client goes away first.
		h.m.waiting.Inc()
		select {
		case h.jobs <- j:
			h.m.waiting.Dec()
		case <-r.Context().Done():
			h.m.waiting.Dec()
			return OutcomeAbandoned, nil, &httpError{code: http.StatusServiceUnavailable, msg: "podmeta: the client went away while the review waited for a slot"}
		}
	}
	<-j.done
	return j.outcome, j.out, j.err
}

// process decodes the review in data, decides, and returns the encoded
// answer in a pooled buffer (the caller puts it back). A panic becomes a
// *panicError. The buffer is taken only here: a review waiting for a slot
// holds none (with large pods, 64 waiting answers' buffers were megabytes).
func (h *handler) process(data []byte) (outcome string, body *bytes.Buffer, err error) {
	defer func() {
		if v := recover(); v != nil {
			outcome, body, err = OutcomeServerError, nil, &panicError{value: v, stack: debug.Stack()}
		}
	}()
	outcome, body, err = h.answer(data)
	return outcome, body, err
}

func (h *handler) answer(data []byte) (string, *bytes.Buffer, error) {
	typ, req, pod, err := decode(data)
	if err != nil {
		return OutcomeBadRequest, nil, err
	}
	if typ.APIVersion != admissionV1 || typ.Kind != "AdmissionReview" {
		return OutcomeBadRequest, nil, badRequest("unsupported apiVersion %q, kind %q: want %s AdmissionReview", typ.APIVersion, typ.Kind, admissionV1)
	}
	if req == nil {
		return OutcomeBadRequest, nil, badRequest("AdmissionReview has no request")
	}
	if req.UID == "" {
		return OutcomeBadRequest, nil, badRequest("AdmissionReview request has no uid")
	}
	patchBuf := h.getBuf()
	defer h.putBuf(patchBuf)
	outcome, resp, err := h.review(req, pod, patchBuf)
	if err != nil {
		return outcome, nil, err
	}
	resp.UID = req.UID
	body := h.getBuf()
	body.Grow(256 + len(resp.Patch)*4/3) // most answers fit
	ans, err := appendAnswer(body.AvailableBuffer(), typ, resp)
	if err != nil {
		h.putBuf(body)
		return OutcomeServerError, nil, fmt.Errorf("encode AdmissionReview: %w", err)
	}
	body.Write(ans) // usually a copy onto itself
	return outcome, body, nil
}

// review decides. It has no side effects, so dryRun requests get exactly
// the same answer.
// The patch is encoded into patchBuf, which the response refers to.
func (h *handler) review(req *admissionv1.AdmissionRequest, pod *corev1.Pod, patchBuf *bytes.Buffer) (string, *admissionv1.AdmissionResponse, error) {
	allowed := &admissionv1.AdmissionResponse{Allowed: true}
	if !isPodCreate(req) {
		return OutcomeIgnored, allowed, nil
	}
	if pod == nil {
		return OutcomeBadRequest, nil, badRequest("Pod CREATE request has no object")
	}
	// Attributes are built only for a log line that is enabled: this is the
	// hot path and most lines are debug.
	log := func(level slog.Level, msg string, attrs ...slog.Attr) {
		if !h.log.Enabled(context.Background(), level) {
			return
		}
		attrs = append(attrs, slog.String("namespace", req.Namespace), slog.String("name", podName(req, pod)),
			slog.String("uid", string(req.UID)), slog.Bool("dryRun", req.DryRun != nil && *req.DryRun))
		h.log.LogAttrs(context.Background(), level, msg, attrs...)
	}
	mutated, report, err := h.mutate(pod, h.cfg)
	if err != nil {
		log(slog.LevelInfo, "pod denied", slog.String("error", err.Error()))
		return OutcomeDenied, &admissionv1.AdmissionResponse{
			Allowed: false,
			Result: &metav1.Status{
				Status:  metav1.StatusFailure,
				Code:    http.StatusBadRequest,
				Reason:  metav1.StatusReasonBadRequest,
				Message: "podmeta: " + err.Error(),
			},
		}, nil
	}
	if !report.OptedIn {
		log(slog.LevelDebug, "pod not opted in", slog.String("label", mutate.LabelInject))
		return OutcomeNotOptedIn, allowed, nil
	}
	for _, s := range report.Skips {
		h.m.skips.WithLabelValues(s.What, s.Reason).Inc()
	}
	allowed.Warnings = warnings(report.Skips)
	opsBuf := h.opsPool.Get().(*[]patch.Operation)
	ops, err := patch.AppendPod(*opsBuf, pod, mutated)
	defer h.putOps(opsBuf, ops) // after the patch is encoded below
	if err != nil {
		return OutcomeServerError, nil, fmt.Errorf("build patch: %w", err)
	}
	if len(ops) == 0 {
		log(slog.LevelDebug, "pod already injected", slog.Any("injected", report.Injected))
		return OutcomeUnchanged, allowed, nil
	}
	patchBuf.Grow(64 + 256*len(ops)) // most patches fit
	p, err := patch.Append(patchBuf.AvailableBuffer(), ops)
	if err != nil {
		return OutcomeServerError, nil, fmt.Errorf("encode patch: %w", err)
	}
	// Usually a copy onto itself; when the patch outgrew the buffer, the
	// pooled buffer keeps the larger size for next time.
	patchBuf.Write(p)
	p = patchBuf.Bytes()
	for _, part := range report.Injected {
		h.m.injections.WithLabelValues(part).Inc()
	}
	pt := admissionv1.PatchTypeJSONPatch
	allowed.Patch = p
	allowed.PatchType = &pt
	log(slog.LevelDebug, "pod injected", slog.Any("injected", report.Injected), slog.Any("containers", report.Containers),
		slog.Int("skips", len(report.Skips)), slog.Int("ops", len(ops)))
	return OutcomePatched, allowed, nil
}

func podName(req *admissionv1.AdmissionRequest, pod *corev1.Pod) string {
	switch {
	case req.Name != "":
		return req.Name
	case pod.Name != "":
		return pod.Name
	case pod.GenerateName != "":
		return pod.GenerateName + "*"
	}
	return ""
}

// warnings turns skips into short admission warnings (kubectl prints them).
func warnings(skips []mutate.Skip) []string {
	if len(skips) == 0 {
		return nil
	}
	var out []string
	for i, s := range skips {
		if i == maxWarnings-1 && len(skips) > maxWarnings {
			out = append(out, fmt.Sprintf("podmeta: %d more skips, see annotation %s", len(skips)-i, mutate.AnnotationStatus))
			break
		}
		out = append(out, "podmeta: "+s.String())
	}
	return out
}

type metrics struct {
	requests   *prometheus.CounterVec
	injections *prometheus.CounterVec
	skips      *prometheus.CounterVec
	duration   prometheus.Histogram
	waiting    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_admission_requests_total",
			Help: "Admission reviews handled, by outcome (patched, unchanged, not_opted_in, ignored, denied, bad_request, error, abandoned).",
		}, []string{"outcome"}),
		injections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_injections_total",
			Help: "Pods patched, by injected part (env, volume, ambassador).",
		}, []string{"part"}),
		skips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_skips_total",
			Help: "Things not injected into opted-in pods, by what and reason (see the podmeta.io/status annotation).",
		}, []string{"what", "reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podmeta_admission_duration_seconds",
			Help:    "Time to answer an admission review, from request to response body.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podmeta_admission_waiting",
			Help: "Admission reviews read and waiting for one of the --max-in-flight slots.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.injections, m.skips, m.duration, m.waiting} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
