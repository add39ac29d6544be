package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/podmeta/podmeta/e2e/images/testapp/app"
)

// get is the Job mode. It retries because a native sidecar (the ambassador)
// may still be starting when the main container runs.
func get(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: testapp get URL")
	}
	url := os.ExpandEnv(args[0])
	timeout := 60 * time.Second
	if v := os.Getenv("GET_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("GET_TIMEOUT: %w", err)
		}
		timeout = d
	}
	// No proxy from the environment: the ambassador is on loopback.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				fmt.Printf("GET %s: %d\n%s\n", url, resp.StatusCode, body)
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s: no 2xx answer within %v; last: %s", url, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func labeler(logger *slog.Logger) error {
	cert, err := tls.LoadX509KeyPair(os.Getenv("TLS_CERT_FILE"), os.Getenv("TLS_KEY_FILE"))
	if err != nil {
		return fmt.Errorf("labeler: TLS_CERT_FILE/TLS_KEY_FILE: %w", err)
	}
	srv := &http.Server{
		Addr:              ":" + envOr("PORT", "8443"),
		Handler:           app.NewLabeler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	logger.Info("labeler listening", "addr", srv.Addr)
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("labeler: %w", err)
	}
	return nil
}
