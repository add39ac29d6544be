// Package ambassador is podmeta's localhost gateway to the Kubernetes API
// server: a reverse proxy on a loopback address that forwards plain HTTP to
// the API server over TLS verified against the pod's ca.crt, authenticated
// with the pod's rotating service-account token, after a Host check and the
// method/path policy of package policy. A separate listener serves /healthz,
// /readyz and /metrics.
package ambassador

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/podmeta/podmeta/ops"
	"github.com/podmeta/podmeta/policy"
)

// Config is everything the ambassador needs; cmd/ambassador fills it from
// flags.
type Config struct {
	Listen           string // proxy address, loopback unless AllowNonLoopback
	AllowNonLoopback bool
	HealthListen     string // /healthz, /readyz, /metrics
	Upstream         string // https://host:port of the API server
	TokenFile        string
	CAFile           string
	Policy           policy.Policy

	// PollInterval is the fallback re-read period of the token and CA
	// files; 0 means 10 s.
	PollInterval time.Duration
	// noWatch turns the file watch off so tests can prove the other
	// reload paths.
	noWatch bool
	// ShutdownTimeout bounds the graceful drain on shutdown; 0 means 5 s.
	ShutdownTimeout time.Duration
	// ShutdownDelay keeps the proxy serving this long after the shutdown
	// signal (with /readyz failing) before the drain starts. A sidecar
	// placed as a regular container gets SIGTERM together with the app,
	// which may still call the API server while it shuts down (releasing
	// a lease, deregistering); a native sidecar is stopped only after the
	// app has exited and needs none.
	ShutdownDelay time.Duration
}

// Server is a running-to-be ambassador: listeners are open after New.
type Server struct {
	cfg   Config
	log   *slog.Logger
	creds *credentials
	proxy *proxy
	ln    net.Listener
	hln   net.Listener
	reg   prometheus.Gatherer
	// leaving is set when the shutdown signal arrives: /readyz fails
	// from then on.
	leaving atomic.Bool
}

// New validates cfg, loads the credentials (missing files make the server
// unready, not fail: the volume may be populated late) and opens both
// listeners. reg registers the proxy's metrics; gatherer is served on
// /metrics.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	if gatherer == nil {
		gatherer = prometheus.NewRegistry()
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Second
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	if cfg.ShutdownDelay < 0 {
		return nil, fmt.Errorf("--shutdown-delay must not be negative, got %s", cfg.ShutdownDelay)
	}
	up, err := ParseUpstream(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	if err := checkLoopback(cfg.Listen, cfg.AllowNonLoopback); err != nil {
		return nil, err
	}
	if cfg.TokenFile == "" || cfg.CAFile == "" {
		return nil, errors.New("--token-file and --ca-file must be set")
	}
	m := newMetrics(reg)
	s := &Server{cfg: cfg, log: log, reg: gatherer}
	s.creds = newCredentials(cfg.TokenFile, cfg.CAFile, log, m, func(pool *x509.CertPool) upstreamClients {
		return upstreamClients{plain: newPlainClient(up, pool), streams: newTransport(pool)}
	})
	s.proxy = newProxy(up, cfg.CAFile, cfg.Policy, s.creds, log, m)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	s.ln = ln
	if s.hln, err = net.Listen("tcp", cfg.HealthListen); err != nil {
		s.ln.Close()
		return nil, fmt.Errorf("--health-listen: %w", err)
	}
	return s, nil
}

// Addr is the proxy's listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// HealthAddr is the health and metrics listening address.
func (s *Server) HealthAddr() net.Addr { return s.hln.Addr() }

// Run serves until ctx ends (and ShutdownDelay more), then drains in-flight
// requests for up to ShutdownTimeout before closing what is left (long
// watches).
func (s *Server) Run(ctx context.Context) error {
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go s.creds.watch(watchCtx, s.cfg.PollInterval, !s.cfg.noWatch)

	ps := &fasthttp.Server{
		Handler:      s.proxy.handle,
		ErrorHandler: s.proxy.requestError,
		// Parse errors quote the request head, which may carry the
		// app's own Authorization header: never log it.
		SecureErrorLogMessage: true,
		// Headers and bodies must arrive promptly (slowloris); responses
		// have no deadline because watches and logs stream for as long
		// as the client wants (they run on hijacked connections, which
		// no server timeout applies to).
		ReadTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute,
		// The buffer also bounds the request head: 8 KiB (the common
		// limit of web servers) fits any client-go request; net/http
		// allowed 1 MiB, but every keep-alive connection holds one
		// buffer (4 KiB against 16 KiB: about 0.3 MiB of RSS at 16
		// clients).
		ReadBufferSize: 8 << 10,
		// Bodies are read whole before the request goes upstream; the
		// API server itself refuses bodies over 3 MiB by default.
		MaxRequestBodySize: maxRequestBody,
		// Bodies pass through untouched, multipart ones too.
		DisablePreParseMultipartForm: true,
		// Answers are the API server's, not ours: no Server header,
		// no invented Content-Type, no Date the API server did not send.
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		NoDefaultDate:         true,
		// Streams and upgrades own their connection after the hijack;
		// Run closes the ones still open after the drain period.
		KeepHijackedConns: true,
		CloseOnShutdown:   true,
		ConnState:         s.proxy.conns.track,
		Logger:            slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	hs := ops.NewServer("", ops.Handler(s.reg, s.ready, s.log), s.log)
	errc := make(chan error, 2)
	go func() { errc <- ps.Serve(s.ln) }()
	go func() { errc <- hs.Serve(s.hln) }()
	s.log.Info("serving", "listen", s.ln.Addr().String(), "health_listen", s.hln.Addr().String(),
		"upstream", s.proxy.upstream.String(), "policy", string(s.cfg.Policy.Mode), "allow", s.cfg.Policy.Rules.String())

	var err error
	select {
	case <-ctx.Done():
		s.leaving.Store(true)
		if d := s.cfg.ShutdownDelay; d > 0 {
			s.log.Info("shutdown signal: serving on for the shutdown delay", "delay", d.String())
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case err = <-errc:
				t.Stop()
				err = fmt.Errorf("serve: %w", err)
			}
		}
	case err = <-errc:
		err = fmt.Errorf("serve: %w", err)
	}
	s.leaving.Store(true)
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	// fasthttp closes the listener and idle connections, then waits for
	// requests in flight; hijacked streams (watches, logs, exec) are not
	// its own any more, so they get the rest of the drain period here.
	_ = ps.ShutdownWithContext(sctx)
	s.proxy.conns.drain(sctx)
	s.proxy.conns.closeAll()
	hs.Close()
	if t, terr := s.creds.transport(); terr == nil {
		t.CloseIdleConnections()
	}
	if c, cerr := s.creds.client(); cerr == nil {
		c.CloseIdleConnections()
	}
	return err
}

// ready is /readyz: the credentials are loaded and no shutdown has begun.
func (s *Server) ready() error {
	if s.leaving.Load() {
		return errors.New("shutting down")
	}
	return s.creds.ready()
}

// maxRequestBody bounds a request body the ambassador holds in memory.
const maxRequestBody = 16 << 20

// connSet is the app's open connections. fasthttp reports them through
// Server.ConnState; a wrapping listener would do it too, but fasthttp writes
// a response's head and body with one writev only on a bare *net.TCPConn
// (with a wrapper, a list took two writes: one system call more per
// request).
type connSet struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newConnSet() *connSet { return &connSet{conns: map[net.Conn]struct{}{}} }

// track is the fasthttp Server's ConnState hook. A hijacked connection
// stays until its stream removes it.
func (s *connSet) track(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
	case fasthttp.StateClosed:
		s.remove(c)
	}
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *connSet) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// drain waits until every connection is closed or ctx ends.
func (s *connSet) drain(ctx context.Context) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.open() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// newPlainClient is the upstream client for plain requests for one CA
// bundle: a pool of HTTP/1.1 keep-alive connections. Dial does the TLS
// handshake itself so that it has a deadline and fails with crypto/tls's
// own errors, which classify turns into messages naming ca.crt.
func newPlainClient(up *url.URL, pool *x509.CertPool) *fasthttp.HostClient {
	hc := plainClient(up, pool)
	hc.RetryIfErr = retryPlain(hc)
	return hc
}

func plainClient(up *url.URL, pool *x509.CertPool) *fasthttp.HostClient {
	host, port := up.Hostname(), up.Port()
	if port == "" {
		port = "443"
	}
	tlsConfig := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, ServerName: host}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &fasthttp.HostClient{
		Addr:  net.JoinHostPort(host, port),
		IsTLS: true,
		Dial: func(addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			raw, err := dialer.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			c := tls.Client(raw, tlsConfig)
			if err := c.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			sc, err := raw.(*net.TCPConn).SyscallConn()
			if err != nil {
				c.Close()
				return nil, err
			}
			return &checkedConn{Conn: c, raw: sc}, nil
		},
		// Well under kube-apiserver's 90 s idle timeout, so the API
		// server rarely closes a connection just as it is being reused
		// (checkedConn and retryPlain handle it when it does).
		MaxIdleConnDuration: 30 * time.Second,
		// More concurrent requests than connections wait for one
		// instead of failing at once.
		MaxConnWaitTimeout: 10 * time.Second,
		// Also the response head limit (fasthttp's default is 4 KiB;
		// a few long Warning headers must fit).
		ReadBufferSize:           8 << 10,
		NoDefaultUserAgentHeader: true,
		// The path is sent exactly as the proxy built it.
		DisablePathNormalizing: true,
		// Bodies are passed on as they arrive, never held whole.
		StreamResponseBody: true,
		// A request is canceled upstream when its app hangs up.
		Transport: plainTransport{},
	}
}

// newTransport is the upstream transport for one CA bundle. HTTP/2 (like
// kubectl proxy) multiplexes every client request over one connection;
// upgrade requests get their own HTTP/1.1 connections from net/http.
func newTransport(pool *x509.CertPool) *http.Transport {
	t := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:    pool,
			MinVersion: tls.VersionTLS12,
		},
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		// The proxy passes bodies through untouched; asking for gzip
		// here would make the transport decompress them.
		DisableCompression: true,
		HTTP2: &http.HTTP2Config{
			// Detect a dead API server connection (e.g. after a
			// control-plane failover) instead of hanging watches.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
			// Let the API server send a typical object or small list
			// as one DATA frame instead of 16 KiB pieces: each piece
			// the proxy reads costs a WINDOW_UPDATE write (net/http
			// refreshes flow control every 4 KiB read), and those
			// writes were the largest syscall cost in profiles.
			MaxReadFrameSize: 64 << 10,
		},
	}
	return t
}

// ParseUpstream checks the API server URL.
func ParseUpstream(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("--upstream is empty and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("--upstream %q: %w", s, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--upstream %q: want https://host:port (the ambassador only talks verified TLS)", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("--upstream %q: no user, query or fragment allowed", s)
	}
	return u, nil
}

// UpstreamFromEnv is the in-cluster API server address, IPv6 hosts
// bracketed, or "" when not running in a pod.
func UpstreamFromEnv(getenv func(string) string) string {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return ""
	}
	return "https://" + net.JoinHostPort(host, port)
}

// checkLoopback refuses to expose the pod's credentials beyond the pod.
func checkLoopback(addr string, allowNonLoopback bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", addr, err)
	}
	if allowNonLoopback {
		return nil
	}
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || strings.EqualFold(host, "localhost") {
		return nil
	}
	return fmt.Errorf("--listen %q is not a loopback address: anything that can reach it acts with the pod's service account; pass --allow-non-loopback to do it anyway", addr)
}
