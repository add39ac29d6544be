// Package load drives a mutating admission webhook with AdmissionReview v1
// requests from N workers over keep-alive HTTPS, validates every response,
// and measures throughput and latency.
//
// Each worker owns one connection and speaks HTTP/1.1 on it directly
// (net/http's request line and http.ReadResponse) instead of going through
// http.Transport: the generator has a single core, the transport's per
// request goroutine hand-offs would make it the bottleneck, and owning the
// connection lets it tell a request the server never read (refused, or its
// idle connection closed with a TLS close_notify) from one it dropped.
//
// With Config.HTTP2 the workers instead share one HTTP/2 connection through
// http.Transport, as kube-apiserver's webhook client does (http2.go).
package load

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
)

// Bounds on a run: the tool must stop by itself.
const (
	MaxWorkers  = 1024
	MaxDuration = time.Hour
	MaxCount    = 100_000_000
)

// Transport-level kinds of failed request (the keys of Result.Errors,
// beside the validation kinds in validate.go).
const (
	// Not accepted: the server did not read the request. Expected while a
	// server shuts down, and never a failure of an admission: the API
	// server retries these on another endpoint.
	ErrRefused      = "refused"       // connection refused, or reset before the server accepted it
	ErrClosedUnread = "closed-unread" // connection closed by the server without processing the request: TLS close_notify, or a reset with the request unread

	// Failures.
	ErrDial      = "dial"        // other connect errors
	ErrHandshake = "handshake"   // TLS handshake or certificate verification
	ErrWrite     = "write"       // request not fully written
	ErrDropped   = "dropped"     // connection ended without a response after the request was sent
	ErrRead      = "read"        // malformed or truncated response
	ErrTimeout   = "timeout"     // no complete response within Config.Timeout
	ErrStatus    = "http-status" // non-200 status
)

// NotAccepted reports whether an error kind means the server never read
// the request.
func NotAccepted(kind string) bool { return kind == ErrRefused || kind == ErrClosedUnread }

// Config describes one load run. Zero values get the defaults noted.
type Config struct {
	URL         string // https://127.0.0.1:PORT/path; loopback only
	RootCAs     *x509.CertPool
	Review      *corpus.Review
	ExpectPatch bool // the target is a real webhook (patch required), not the null server

	Workers  int           // concurrent connections, default 1
	Duration time.Duration // stop after this long (default 10s, at most MaxDuration)
	Count    int64         // stop after this many requests (0: no limit but Duration)
	Rate     float64       // total requests per second across workers (0: as fast as possible)
	Warmup   time.Duration // requests started before this are not measured
	Timeout  time.Duration // per request, default 10s

	// HTTP2 sends the reviews as the API server does by default: as
	// concurrent streams of one HTTP/2 connection (Workers of them),
	// instead of one HTTP/1.1 keep-alive connection per worker. Only for
	// plain load: not with ReconnectEvery or Hold.
	HTTP2 bool

	// ReconnectEvery closes a worker's connection after that many requests
	// (0: keep it), so a run opens new connections throughout, e.g. to see
	// rotated certificates.
	ReconnectEvery int

	// OnConn, if set, is called (from worker goroutines) for every new
	// connection once its handshake succeeded.
	OnConn func(ConnInfo)
	// Answered, if set, counts valid responses as they arrive, so a
	// scenario can act once the load is flowing.
	Answered *atomic.Int64
	// OnMeasure, if set, is called once when the measured window starts and
	// once when it ends (after every worker stopped): hooks to read the
	// server's CPU time at the window's edges.
	OnMeasure func(start bool)
	// Hold, if set, is asked before a worker would open a connection; while
	// it says true, the worker opens none (it checks again every
	// millisecond). Open keep-alive connections go on being used until an
	// answer says "Connection: close". That is how the API server leaves a
	// terminating webhook replica: its endpoint is removed, which steers
	// new connections, and the connections it has keep carrying reviews
	// until the replica closes them.
	Hold func() bool
}

// ConnInfo describes a new connection.
type ConnInfo struct {
	Start  time.Time // dial started
	At     time.Time // handshake completed
	Serial *big.Int  // serial number of the server's leaf certificate
}

// Result is what a run measured. Durations are in nanoseconds in JSON.
type Result struct {
	Protocol string `json:"protocol"` // HTTP/1.1, or HTTP/2 with Config.HTTP2
	Requests int64  `json:"requests"` // measured requests, including failed ones
	OK       int64  `json:"ok"`
	// CloseAnswers counts valid answers that carried "Connection: close".
	CloseAnswers int64             `json:"closeAnswers"`
	Errors       map[string]int64  `json:"errors,omitempty"`
	Samples      map[string]string `json:"errorSamples,omitempty"` // first error of each kind
	Conns        int64             `json:"connections"`
	Elapsed      time.Duration     `json:"elapsedNs"`         // measured window
	Throughput   float64           `json:"requestsPerSecond"` // OK responses per second
	Latency      Latency           `json:"latencyNs"`
	hist         histogram
}

// Latency percentiles of OK responses.
type Latency struct {
	P50, P90, P99, P999, Max time.Duration
}

// Failures counts the errors that are failures (not merely not accepted).
func (r *Result) Failures() int64 {
	var n int64
	for k, c := range r.Errors {
		if !NotAccepted(k) {
			n += c
		}
	}
	return n
}

// Target is a parsed, loopback-checked webhook URL.
type Target struct {
	Addr       string // IP:port to dial
	ServerName string // for TLS verification
	Path       string
	Host       string // Host header
}

// ParseTarget accepts only https URLs on loopback: an IP literal in
// 127.0.0.0/8 or ::1, or "localhost" (dialed as 127.0.0.1, never resolved:
// no traffic may leave the machine, whatever a resolver says).
func ParseTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, fmt.Errorf("target URL: %w", err)
	}
	if u.Scheme != "https" {
		return Target{}, fmt.Errorf("target URL %q: scheme must be https", raw)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}
	ip := "127.0.0.1"
	if host != "localhost" {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.IsLoopback() {
			return Target{}, fmt.Errorf("target URL %q: host must be localhost or a loopback IP, not %q: the load tool never sends traffic off this machine", raw, host)
		}
		ip = a.String()
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	return Target{Addr: net.JoinHostPort(ip, port), ServerName: host, Path: path, Host: u.Host}, nil
}

func (c *Config) validate() (Target, error) {
	t, err := ParseTarget(c.URL)
	if err != nil {
		return t, err
	}
	if c.Review == nil {
		return t, errors.New("no review to send")
	}
	if c.RootCAs == nil {
		return t, errors.New("no CA to verify the server with")
	}
	if c.Workers == 0 {
		c.Workers = 1
	}
	if c.Workers < 1 || c.Workers > MaxWorkers {
		return t, fmt.Errorf("workers %d: want 1..%d", c.Workers, MaxWorkers)
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Duration < 0 || c.Duration > MaxDuration {
		return t, fmt.Errorf("duration %s: want up to %s", c.Duration, MaxDuration)
	}
	if c.Count < 0 || c.Count > MaxCount {
		return t, fmt.Errorf("count %d: want 0..%d", c.Count, MaxCount)
	}
	if c.Rate < 0 {
		return t, fmt.Errorf("rate %v: want ≥ 0", c.Rate)
	}
	if c.Warmup < 0 || c.Warmup >= c.Duration {
		return t, fmt.Errorf("warmup %s: want less than the duration %s", c.Warmup, c.Duration)
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.HTTP2 && (c.ReconnectEvery > 0 || c.Hold != nil || c.OnConn != nil) {
		return t, errors.New("HTTP/2 load keeps one connection: not with reconnects, holds or connection hooks")
	}
	if c.HTTP2 && c.Workers > MaxHTTP2Workers {
		return t, fmt.Errorf("workers %d over HTTP/2: want 1..%d, the streams a connection is sure to allow (past them Go's transport opens another connection)", c.Workers, MaxHTTP2Workers)
	}
	return t, nil
}

// Run drives the target until the duration ends, Count requests were sent,
// or ctx is done, and returns what it measured. Invalid responses are
// counted in Result.Errors, not returned as an error.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	t, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	var issued atomic.Int64
	var conns atomic.Int64
	var measureOnce sync.Once
	startMeasure := func() {
		measureOnce.Do(func() {
			if cfg.OnMeasure != nil {
				cfg.OnMeasure(true)
			}
		})
	}
	if cfg.Warmup == 0 {
		startMeasure()
	} else {
		timer := time.AfterFunc(cfg.Warmup, startMeasure)
		defer timer.Stop()
	}

	tlsConf := &tls.Config{
		RootCAs:    cfg.RootCAs,
		ServerName: t.ServerName,
		MinVersion: tls.VersionTLS12,
		// No session cache: a resumed session shows the old certificate,
		// and the apiserver's transport does full handshakes anyway.
	}
	var h2 *http.Client
	if cfg.HTTP2 {
		var closeAll func()
		h2, closeAll = http2Client(&cfg, t, tlsConf, &conns)
		defer closeAll()
	}
	results := make([]*Result, cfg.Workers)
	var wg sync.WaitGroup
	for i := range cfg.Workers {
		w := &worker{h2: h2,
			cfg: &cfg, target: t, tlsConf: tlsConf, measureFrom: measureFrom, end: start.Add(cfg.Duration), conns: &conns,
			res: &Result{Errors: map[string]int64{}, Samples: map[string]string{}},
			val: validator{review: cfg.Review, expectPatch: cfg.ExpectPatch},
			rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i))),
		}
		if cfg.Rate > 0 {
			w.interval = time.Duration(float64(cfg.Workers) / cfg.Rate * float64(time.Second))
			// Spread the workers' schedules over one interval.
			w.next = start.Add(w.interval * time.Duration(i) / time.Duration(cfg.Workers))
		}
		results[i] = w.res
		wg.Go(func() { w.run(ctx, &issued) })
	}
	wg.Wait()
	end := time.Now()
	startMeasure() // a run shorter than its warmup still reports both edges
	if cfg.OnMeasure != nil {
		cfg.OnMeasure(false)
	}

	total := &Result{Protocol: "HTTP/1.1", Errors: map[string]int64{}, Samples: map[string]string{}}
	if cfg.HTTP2 {
		total.Protocol = "HTTP/2"
	}
	for _, r := range results {
		total.Requests += r.Requests
		total.OK += r.OK
		total.CloseAnswers += r.CloseAnswers
		total.hist.merge(&r.hist)
		for k, v := range r.Errors {
			total.Errors[k] += v
		}
		for k, v := range r.Samples {
			if _, ok := total.Samples[k]; !ok {
				total.Samples[k] = v
			}
		}
	}
	total.Conns = conns.Load()
	total.Elapsed = end.Sub(measureFrom)
	if total.Elapsed > 0 {
		total.Throughput = float64(total.OK) / total.Elapsed.Seconds()
	}
	h := &total.hist
	total.Latency = Latency{P50: h.quantile(0.5), P90: h.quantile(0.9), P99: h.quantile(0.99), P999: h.quantile(0.999), Max: h.max}
	if len(total.Errors) == 0 {
		total.Errors, total.Samples = nil, nil
	}
	return total, nil
}

type worker struct {
	cfg         *Config
	target      Target
	tlsConf     *tls.Config
	measureFrom time.Time
	end         time.Time // the run's deadline
	conns       *atomic.Int64
	res         *Result
	val         validator
	rng         *rand.Rand

	interval time.Duration // rate mode: time between this worker's requests
	next     time.Time

	h2 *http.Client // HTTP/2 mode: the client all workers share

	conn   *tls.Conn
	raw    *countingConn   // bytes off the socket
	plain  *countingReader // bytes out of TLS
	br     *bufio.Reader
	served int // responses on the current connection
	// closeAnswer: the last valid answer carried "Connection: close".
	closeAnswer bool
	reqBuf      []byte
	bodyBuf     []byte
	respBuf     []byte
}

func (w *worker) run(ctx context.Context, issued *atomic.Int64) {
	defer w.closeConn()
	for ctx.Err() == nil {
		if w.interval > 0 {
			if d := time.Until(w.next); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			w.next = w.next.Add(w.interval)
		}
		// Hold first: the peek is a system call, and do makes it anyway.
		for w.cfg.Hold != nil && w.cfg.Hold() && (w.conn == nil || w.served > 0 && w.closedByPeer()) {
			w.closeConn()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
		if w.cfg.Count > 0 && issued.Add(1) > w.cfg.Count {
			return
		}
		started := time.Now()
		lat, kind, err := w.do(ctx)
		if started.Before(w.measureFrom) {
			continue
		}
		if kind != "" && w.conn == nil && ctx.Err() != nil || time.Now().After(w.end) && (kind == ErrDial || kind == ErrTimeout || kind == ErrHandshake) {
			// A connect cut short by the end of the run is not the
			// server's failure. (The deadline check covers the moment
			// before ctx's timer has fired.)
			return
		}
		w.res.Requests++
		if kind == "" && w.cfg.Answered != nil {
			w.cfg.Answered.Add(1)
		}
		if kind == "" {
			w.res.OK++
			if w.closeAnswer {
				w.res.CloseAnswers++
			}
			w.res.hist.record(lat)
			continue
		}
		if kind == ErrRefused || kind == ErrDial {
			// Back off like any client of a restarting server, rather than
			// spinning on connect.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
		w.res.Errors[kind]++
		if _, ok := w.res.Samples[kind]; !ok {
			w.res.Samples[kind] = err.Error()
		}
	}
}

// do sends one review and validates the answer. It returns the error kind
// ("" for success) and the latency of a successful request.
func (w *worker) do(ctx context.Context) (time.Duration, string, error) {
	if w.h2 != nil {
		return w.doHTTP2(ctx)
	}
	if w.conn != nil && w.served > 0 && w.closedByPeer() {
		w.closeConn()
	}
	if w.conn == nil {
		if kind, err := w.dial(ctx); err != nil {
			return 0, kind, err
		}
	}
	w.closeAnswer = false
	uid := corpus.NewUID(w.rng)
	w.bodyBuf = w.cfg.Review.AppendBody(w.bodyBuf[:0], uid)
	w.reqBuf = append(w.reqBuf[:0], "POST "...)
	w.reqBuf = append(w.reqBuf, w.target.Path...)
	w.reqBuf = append(w.reqBuf, " HTTP/1.1\r\nHost: "...)
	w.reqBuf = append(w.reqBuf, w.target.Host...)
	w.reqBuf = append(w.reqBuf, "\r\nContent-Type: application/json\r\nAccept: application/json\r\nUser-Agent: podmeta-loadtest\r\nContent-Length: "...)
	w.reqBuf = strconv.AppendInt(w.reqBuf, int64(len(w.bodyBuf)), 10)
	w.reqBuf = append(w.reqBuf, "\r\n\r\n"...)
	w.reqBuf = append(w.reqBuf, w.bodyBuf...)

	start := time.Now()
	_ = w.conn.SetDeadline(start.Add(w.cfg.Timeout))
	rawBefore, plainBefore := w.raw.read.Load(), w.plain.read.Load()
	if _, err := w.conn.Write(w.reqBuf); err != nil {
		defer w.closeConn()
		if isReset(err) {
			return 0, ErrClosedUnread, fmt.Errorf("write: %w", err)
		}
		if isTimeout(err) {
			return 0, ErrTimeout, err
		}
		return 0, ErrWrite, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		defer w.closeConn()
		return 0, w.classifyReadErr(err, rawBefore, plainBefore), fmt.Errorf("read response (after %d on this connection; %d raw bytes since the request): %w", w.served, w.raw.read.Load()-rawBefore, err)
	}
	n := int(resp.ContentLength)
	if n < 0 || n > 64<<20 {
		n = 0
	}
	if cap(w.respBuf) < n {
		w.respBuf = make([]byte, 0, n)
	}
	body, err := readAll(resp.Body, w.respBuf[:0])
	w.respBuf = body
	resp.Body.Close()
	lat := time.Since(start)
	if err != nil {
		w.closeConn()
		if isTimeout(err) {
			return 0, ErrTimeout, err
		}
		return 0, ErrRead, fmt.Errorf("read response body: %w", err)
	}
	w.served++
	if resp.Close || (w.cfg.ReconnectEvery > 0 && w.served >= w.cfg.ReconnectEvery) {
		w.closeConn()
	}
	if resp.StatusCode != http.StatusOK {
		return 0, ErrStatus, fmt.Errorf("status %s: %.200s", resp.Status, body)
	}
	if kind, err := w.val.check(body, uid); kind != "" {
		return 0, kind, err
	}
	w.closeAnswer = resp.Close
	return lat, "", nil
}

// classifyReadErr decides whether a connection that ended before a
// response means the server dropped the request or never read it. Go's
// http.Server closes only idle connections (ones it is not reading a
// request from) while it shuts down, and tls.Conn.Close sends close_notify
// first; a socket closed with our request unread in its buffer answers
// with a reset. A process that exits with requests in hand does neither:
// the kernel just closes the socket.
func (w *worker) classifyReadErr(err error, rawBefore, plainBefore int64) string {
	if isTimeout(err) {
		return ErrTimeout
	}
	if w.plain.read.Load() > plainBefore {
		return ErrRead // part of a response, then the connection ended or garbage
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
		// Raw bytes but no plaintext: the connection's last record was an
		// alert, close_notify, which only a deliberate Close sends. (TLS
		// 1.3 session tickets arrive with the server's Finished and are
		// read during the handshake, before rawBefore was taken.)
		if isReset(err) || w.raw.read.Load() > rawBefore {
			return ErrClosedUnread
		}
		return ErrDropped
	}
	return ErrRead
}

func (w *worker) dial(ctx context.Context) (string, error) {
	start := time.Now()
	tc, kind, err := connect(ctx, w.target.Addr, w.cfg.Timeout, w.tlsConf, func(c net.Conn) net.Conn {
		w.raw = &countingConn{Conn: c}
		return w.raw
	})
	if err != nil {
		return kind, err
	}
	w.conns.Add(1)
	if w.cfg.OnConn != nil {
		st := tc.ConnectionState()
		w.cfg.OnConn(ConnInfo{Start: start, At: time.Now(), Serial: st.PeerCertificates[0].SerialNumber})
	}
	w.conn, w.served = tc, 0
	w.plain = &countingReader{r: tc}
	if w.br == nil {
		w.br = bufio.NewReaderSize(w.plain, 32<<10)
	} else {
		w.br.Reset(w.plain)
	}
	return "", nil
}

// connect dials addr and makes the TLS handshake (wrap, if set, wraps the
// TCP connection first), and sorts a failure into the kinds of
// Result.Errors: both protocols' connections are made here.
func connect(ctx context.Context, addr string, timeout time.Duration, conf *tls.Config, wrap func(net.Conn) net.Conn) (*tls.Conn, string, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
			// Reset: a listener closed with our SYN in its backlog.
			return nil, ErrRefused, err
		}
		if isTimeout(err) {
			return nil, ErrTimeout, err
		}
		return nil, ErrDial, err
	}
	var conn net.Conn = c
	if wrap != nil {
		conn = wrap(c)
	}
	tc := tls.Client(conn, conf)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		if isReset(err) || errors.Is(err, io.EOF) {
			// Connected into the backlog of a listener that then closed:
			// the server never accepted the connection.
			return nil, ErrRefused, fmt.Errorf("tls handshake: %w", err)
		}
		return nil, ErrHandshake, fmt.Errorf("tls handshake: %w", err)
	}
	return tc, "", nil
}

// closedByPeer reports whether the connection already holds the server's
// close (a close_notify or EOF that arrived with the last response), so a
// request is never sent on a connection known to be closed, as Go's
// Transport never does either. With the deadline in the past, the read
// only looks at what TLS has buffered and makes no system call.
func (w *worker) closedByPeer() bool {
	if w.br.Buffered() > 0 {
		return true // bytes nobody asked for: not a connection to reuse
	}
	_ = w.conn.SetReadDeadline(time.Unix(1, 0))
	_, err := w.br.Peek(1)
	return err == nil || !isTimeout(err)
}

func (w *worker) closeConn() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

// readAll reads r to EOF into buf (reused between requests).
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// countingConn counts raw bytes read from the socket.
type countingConn struct {
	net.Conn
	read atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// countingReader counts bytes read through it.
type countingReader struct {
	r    io.Reader
	read atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
