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
//
// With $ON_TERM_CONFIGMAP set, the server, on SIGTERM, waits $ON_TERM_WAIT
// (default 1s) and then creates that ConfigMap in $POD_NAMESPACE through
// $PODMETA_AMBASSADOR_URL before it stops: an app releasing a lease on its
// way out. Tests look for the ConfigMap once the pod is gone.
//
// Two more modes serve tests that need something else than a server:
//
//	testapp get URL      GET URL ($VARS expanded) until it answers 2xx (at most
//	                     $GET_TIMEOUT, default 60s), print the body, exit 0;
//	                     exit 1 otherwise. A Job's workload.
//	testapp labeler      a trivial mutating admission webhook (app.NewLabeler)
//	                     on :8443 with $TLS_CERT_FILE/$TLS_KEY_FILE.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podmeta/podmeta/e2e/images/testapp/app"
)

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	var err error
	switch mode := append(os.Args[1:], "")[0]; mode {
	case "", "serve":
		err = run(logger)
	case "get":
		err = get(os.Args[2:])
	case "labeler":
		err = labeler(logger)
	default:
		err = fmt.Errorf("unknown mode %q (want serve, get or labeler)", mode)
	}
	if err != nil {
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
		if name := os.Getenv("ON_TERM_CONFIGMAP"); name != "" {
			if err := farewell(name); err != nil {
				logger.Error("on-term call failed", "configmap", name, "err", err)
			} else {
				logger.Info("on-term call done", "configmap", name)
			}
		}
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

// farewell is the ON_TERM_CONFIGMAP call: after $ON_TERM_WAIT, create the
// ConfigMap through the ambassador.
func farewell(name string) error {
	wait := time.Second
	if v := os.Getenv("ON_TERM_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("ON_TERM_WAIT: %w", err)
		}
		wait = d
	}
	time.Sleep(wait)
	body := fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":%q},"data":{"said":"goodbye"}}`, name)
	url := os.Getenv("PODMETA_AMBASSADOR_URL") + "/api/v1/namespaces/" + os.Getenv("POD_NAMESPACE") + "/configmaps"
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("POST %s: %d %s", url, resp.StatusCode, b)
	}
	return nil
}
