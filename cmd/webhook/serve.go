package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podmeta/podmeta/admission"
	"github.com/podmeta/podmeta/certs"
	"github.com/podmeta/podmeta/internal/buildinfo"
	"github.com/podmeta/podmeta/ops"
	"github.com/podmeta/podmeta/tlsrecord"
)

type serveOptions struct {
	listen, metricsListen string
	certFile, keyFile     string
	certPoll              time.Duration
	tlsMinVersion         string
	configFile            string
	logLevel              string
	shutdownDelay         time.Duration
	shutdownGrace         time.Duration
	maxInFlight           int
}

func parseServeFlags(args []string, stderr io.Writer) (serveOptions, error) {
	var o serveOptions
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: podmeta-webhook serve --tls-cert-file FILE --tls-key-file FILE [flags]\n\n"+
			"Serves AdmissionReview v1 on POST /mutate over HTTPS, and /metrics, /healthz\n"+
			"and /readyz over plain HTTP on --metrics-listen.\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", ":8443", "HTTPS address of the webhook (POST /mutate)")
	fs.StringVar(&o.certFile, "tls-cert-file", "", "serving certificate (PEM, leaf first); reloaded when it changes (required)")
	fs.StringVar(&o.keyFile, "tls-key-file", "", "private key of the serving certificate (PEM); reloaded with it (required)")
	fs.DurationVar(&o.certPoll, "tls-poll-interval", certs.DefaultPollInterval, "re-read the certificate files this often even without a file event (0 or less: watch only)")
	fs.StringVar(&o.tlsMinVersion, "tls-min-version", "1.2", "lowest TLS version accepted: 1.2 or 1.3")
	fs.StringVar(&o.metricsListen, "metrics-listen", ":8080", "plain-HTTP address of /metrics, /healthz and /readyz")
	fs.StringVar(&o.configFile, "config", "", "injection config file (YAML, see README); default: built-in defaults")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, keep serving this long with /readyz failing before closing the listener, so load balancers stop sending first")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 25*time.Second, "on SIGTERM, wait at most this long for in-flight reviews after closing the listener")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 0, "reviews handled at once, the others wait their turn (bounds memory under bursts; 0: 4 per CPU the process may use)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err}
	}
	switch {
	case fs.NArg() > 0:
		return o, usageError{fmt.Errorf("serve: unexpected arguments %q", fs.Args())}
	case o.certFile == "" || o.keyFile == "":
		return o, usageError{errors.New("serve: --tls-cert-file and --tls-key-file are required (the webhook serves HTTPS only)")}
	case o.shutdownGrace <= 0:
		return o, usageError{fmt.Errorf("serve: --shutdown-grace must be positive, got %s", o.shutdownGrace)}
	case o.shutdownDelay < 0:
		return o, usageError{fmt.Errorf("serve: --shutdown-delay must not be negative, got %s", o.shutdownDelay)}
	case o.maxInFlight < 0:
		return o, usageError{fmt.Errorf("serve: --max-in-flight must not be negative, got %d", o.maxInFlight)}
	}
	if o.maxInFlight == 0 {
		o.maxInFlight = 4 * runtime.GOMAXPROCS(0)
	}
	if _, err := tlsVersion(o.tlsMinVersion); err != nil {
		return o, usageError{err}
	}
	if o.certPoll <= 0 {
		o.certPoll = -1 // certs: negative disables polling
	}
	return o, nil
}

func tlsVersion(s string) (uint16, error) {
	switch s {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("serve: --tls-min-version %q: want 1.2 or 1.3", s)
}

// idleTimeout closes a keep-alive connection the API server left unused.
// It must be longer than the API server's own idle timeout for its webhook
// connections (90 s, Go's http.DefaultTransport, via apimachinery's
// SetTransportDefaults), so that the API server is the side that closes
// them: with both at 90 s, a connection the webhook closes could be picked
// for a review at that very moment, and the review would fail (the same
// race as closing idle connections at SIGTERM, see closeWhenLeaving).
const idleTimeout = 5 * time.Minute

// defaultGOGC is the garbage collector's GOGC when the environment sets
// none. The webhook's live heap is mostly buffers that last as long as its
// connections (crypto/tls's 32 KiB read buffer, net/http's 8 KiB: about
// 45 KB each) and Go's default of 100 lets garbage grow to as much again:
// with 64 HTTP/1.1 connections and large pods, the peak RSS was 25.9 MiB
// at 100 and 23.9 at 70, for 3-5 % more CPU per review (BENCHMARKS.md,
// session 8). GOGC in the environment (e.g. the chart's env) wins.
const defaultGOGC = 70

// setGOGC applies defaultGOGC unless GOGC (env, as the runtime read it at
// start) is set, and returns the setting in effect, for the log (the
// runtime's: it runs an invalid GOGC as 100).
func setGOGC(env string) string {
	p := defaultGOGC
	if env == "" {
		debug.SetGCPercent(p)
	} else {
		p = debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
	}
	if p < 0 {
		return "off"
	}
	return strconv.Itoa(p)
}

// serve runs the webhook until ctx is cancelled, then shuts down gracefully:
// /readyz fails at once, the HTTPS listener stays open for --shutdown-delay,
// then closes, and in-flight reviews get --shutdown-grace to finish.
func serve(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseServeFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := ops.NewLogger(stderr, o.logLevel)
	if err != nil {
		return usageError{fmt.Errorf("serve: --log-level: %w", err)}
	}
	gogc := setGOGC(os.Getenv("GOGC"))
	cfg, err := loadConfig(o.configFile)
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	registerBuildInfo(reg)
	handler, err := admission.NewHandler(cfg, log, reg, admission.MaxInFlight(o.maxInFlight))
	if err != nil {
		return err
	}
	reloader, err := certs.New(certs.Options{
		CertFile: o.certFile, KeyFile: o.keyFile, PollInterval: o.certPoll,
		Logger: log, Registerer: reg,
	})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	// From here every goroutine is waited for, on every return path.
	reloadCtx, stopReload := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopReload(); wg.Wait() }()
	wg.Go(func() { _ = reloader.Run(reloadCtx) })
	minVersion, _ := tlsVersion(o.tlsMinVersion)

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer ln.Close()
	mln, err := net.Listen("tcp", o.metricsListen)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	defer mln.Close()

	var serving, shuttingDown atomic.Bool
	ready := func() error {
		switch {
		case shuttingDown.Load():
			return errors.New("shutting down")
		case !reloader.Ready():
			return errors.New("no serving certificate loaded")
		case !serving.Load():
			return errors.New("webhook listener not serving yet")
		}
		return nil
	}
	opsSrv := ops.NewServer(o.metricsListen, ops.Handler(reg, ready, log), log)

	mux := http.NewServeMux()
	mux.Handle("POST /mutate", handler)
	srv := webhookServer(o.listen, closeWhenLeaving(mux, &shuttingDown), &tls.Config{
		MinVersion:     minVersion,
		GetCertificate: reloader.GetCertificate,
	}, log)

	errc := make(chan error, 2)
	wg.Go(func() {
		if err := opsSrv.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("metrics server: %w", err)
		}
	})
	wg.Go(func() {
		if err := serveTLS(srv, ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("webhook server: %w", err)
		}
	})
	serving.Store(true)
	info := buildinfo.Get()
	log.Info("serving admission reviews",
		"addr", ln.Addr().String(), "metrics_addr", mln.Addr().String(),
		"version", info.Version, "commit", info.Commit,
		"config", o.configFile, "tls_min_version", o.tlsMinVersion, "max_in_flight", o.maxInFlight, "gogc", gogc)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "delay", o.shutdownDelay.String(), "grace", o.shutdownGrace.String())
	case runErr = <-errc:
		log.Error("server failed, shutting down", "error", runErr)
	}
	// From now on every answer asks the client to reconnect (to another
	// replica); see closeWhenLeaving.
	shuttingDown.Store(true)
	if runErr == nil && o.shutdownDelay > 0 {
		// Endpoints and load balancers take a moment to notice; reviews
		// that still arrive meanwhile are answered, not refused.
		time.Sleep(o.shutdownDelay)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), o.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		_ = srv.Close()
		log.Error("in-flight reviews cut off", "grace", o.shutdownGrace.String(), "error", err)
		runErr = errors.Join(runErr, fmt.Errorf("shutdown: in-flight reviews did not finish within --shutdown-grace %s", o.shutdownGrace))
	}
	// The ops server goes last so /readyz says "shutting down" to the end.
	opsCtx, cancelOps := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelOps()
	if err := opsSrv.Shutdown(opsCtx); err != nil {
		_ = opsSrv.Close()
	}
	if runErr == nil {
		log.Info("stopped")
	}
	return runErr
}

// closeWhenLeaving: once leaving is set, every answer carries "Connection:
// close" (for HTTP/2, net/http turns that into a GOAWAY), so the API server
// reconnects, to another replica, after the review it sent: it leaves on
// its own, without a race. http.Server.SetKeepAlivesEnabled(false) would
// also close the idle connections at once, and a review the API server was
// just sending on one of them fails ("write: broken pipe"; it does not
// resend a POST it may have written). Idle connections are closed only by
// Shutdown, after the shutdown delay; an HTTP/1.1 connection the API server
// left idle for that whole delay can still meet the same race then (over
// HTTP/2, Shutdown sends a GOAWAY first), so the delay narrows the race to
// connections unused for seconds, which the API server, reusing the most
// recently used first, rarely picks.
func closeWhenLeaving(h http.Handler, leaving *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if leaving.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// registerBuildInfo exports podmeta_build_info{version,commit,goversion} 1,
// the usual way to see in Prometheus which build runs where.
func registerBuildInfo(reg prometheus.Registerer) {
	info := buildinfo.Get()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "podmeta_build_info",
		Help: "Always 1; the labels say which build of podmeta-webhook is running.",
	}, []string{"version", "commit", "goversion"})
	g.WithLabelValues(info.Version, info.Commit, info.GoVersion).Set(1)
	reg.MustRegister(g)
}

// webhookServer is the HTTPS server of the admission endpoint (h), to run
// with serveTLS.
func webhookServer(addr string, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) *http.Server {
	return &http.Server{
		Addr:      addr,
		Handler:   h,
		TLSConfig: tlsConfig,
		// The API server gives a webhook at most 30 s (timeoutSeconds); a
		// review that takes longer is useless, and a client that dawdles
		// over its headers is not the API server.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    1 << 20,
		// TLS handshake failures land here: warn, they usually mean a
		// caBundle that does not match the serving certificate.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// The handler corks a request's connection to send its answer in
		// one write (see tlsrecord.Cork).
		ConnContext: tlsrecord.ConnContext,
		// Over HTTP/2 (one connection per API server) reads need not stop
		// at TLS records (see tlsrecord).
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateActive {
				tlsrecord.ReadAheadIfHTTP2(c)
			}
		},
	}
}

// serveTLS serves srv on ln until it is closed. Reads that stop at TLS
// record ends keep each connection's TLS read buffer at 32 KiB instead of
// 40 (see tlsrecord).
func serveTLS(srv *http.Server, ln net.Listener) error {
	return srv.ServeTLS(tlsrecord.Listener(ln), "", "")
}
