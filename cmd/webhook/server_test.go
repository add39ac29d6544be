package main

import (
	"bytes"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/admission"
	"github.com/podmeta/podmeta/internal/writecount"
	"github.com/podmeta/podmeta/mutate"
)

// The webhook's server sends an answer in one write over HTTP/1.1: the
// handler can cork the connection (see tlsrecord.Cork), which takes the
// server's ConnContext and serveTLS's listener.
func TestWebhookServerAnswersInOneWrite(t *testing.T) {
	ca, _ := newCerts(t)
	serving := issue(t, ca, "one")
	cert, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	require.NoError(t, err)
	log := slog.New(slog.DiscardHandler)
	h, err := admission.NewHandler(mutate.DefaultConfig(), log, nil)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	counted := writecount.New(ln)
	srv := webhookServer("", h, &tls.Config{Certificates: []tls.Certificate{cert}}, log)
	go func() { _ = serveTLS(srv, counted) }()
	t.Cleanup(func() { _ = srv.Close() })

	c := client(ca, false)
	body := reviewBody(t, "uid-1", testPod())
	send := func() int64 {
		before := counted.Writes()
		resp, err := c.Post("https://"+ln.Addr().String()+"/", "application/json", bytes.NewReader(body))
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
		require.Greater(t, len(b), 4<<10, "an answer larger than net/http's buffer")
		return counted.Writes() - before
	}
	send() // the handshake
	for range 5 {
		assert.Equal(t, int64(1), send())
	}
}
