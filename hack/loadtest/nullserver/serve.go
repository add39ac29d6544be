package nullserver

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Server settings copied from the webhook's serve command
// (cmd/webhook/serve.go), so the baseline pays for exactly the TLS and HTTP
// work the webhook pays for. Keep them in step.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 90 * time.Second
	maxHeaderBytes    = 1 << 20
	shutdownGrace     = 25 * time.Second
)

// tlsConfig serves cert through GetCertificate, as the webhook serves its
// hot-reloaded certificate, rather than from Certificates.
func tlsConfig(cert *tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
	}
}

// Run serves the null handler at /mutate with the webhook's serving flags
// until ctx is done, then shuts down gracefully like the webhook.
func Run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("null", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8443", "HTTPS address for /mutate")
	certFile := fs.String("tls-cert-file", "", "serving certificate (PEM)")
	keyFile := fs.String("tls-key-file", "", "serving key (PEM)")
	metricsListen := fs.String("metrics-listen", "127.0.0.1:8080", "HTTP address for /healthz and /readyz")
	decoder := fs.String("json", JSONStd, "JSON decoder of the review: "+JSONStd+" (the standard library) or "+JSONv2+" (go-json-experiment, as the webhook)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("null: unexpected arguments %q", fs.Args())
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("null: load serving certificate: %w", err)
	}

	h, err := Handler(*decoder)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("POST /mutate", h)
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConfig(&cert),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	health := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }
	health.HandleFunc("/healthz", ok)
	health.HandleFunc("/readyz", ok)
	hsrv := &http.Server{Handler: health, ReadHeaderTimeout: readHeaderTimeout}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("null: listen: %w", err)
	}
	hln, err := net.Listen("tcp", *metricsListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("null: listen: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	go func() { errc <- hsrv.Serve(hln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("null: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	// Like the webhook with no --shutdown-delay: Shutdown closes the
	// listener and the idle connections, and waits for the busy ones.
	err = srv.Shutdown(sctx)
	if herr := hsrv.Shutdown(sctx); err == nil {
		err = herr
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("null: shutdown: %w", err)
	}
	return nil
}
