// Command testapp is the workload of the end-to-end tests. It reports what the
// pod sees from the inside (its environment and the files podmeta mounts) and
// makes HTTP requests on the tests' behalf, so tests can observe a pod through
// the API server's pod proxy without exec or a shell in the image.
//
//	GET /healthz                 200 "ok"
//	GET /env                     JSON object of the process environment
//	GET /podinfo                 JSON object: file name -> content of $PODINFO_DIR (default /etc/podinfo)
//	GET /fetch?url=U[&sa=true]   GET U and report {"status":..,"body":..}; with sa=true it sends the
//	                             pod's ServiceAccount token and verifies TLS with the pod's ca.crt
//	ANY /relay/P                 forwards the request (method, body) to $AMBASSADOR_URL/P
//	                             (default http://127.0.0.1:8001) and reports {"status":..,"body":..}
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/podmeta/podmeta/e2e/images/testapp/app"
)

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(logger); err != nil {
		logger.Error("testapp failed", "err", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger) error {
	addr := ":" + envOr("PORT", "8080")
	srv := &http.Server{
		Addr:              addr,
		Handler:           app.New(app.ConfigFromEnv()),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	logger.Info("testapp listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
