package tlsrecord

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/internal/writecount"
)

// writesConn records each Write it is given.
type writesConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	err    error
	closed bool
}

func (w *writesConn) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return nil
}

func (w *writesConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func TestCork(t *testing.T) {
	under := &writesConn{}
	c := &Conn{Conn: under}

	require.NoError(t, c.Uncork(), "uncorked: nothing to do")
	_, err := c.Write([]byte("plain"))
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("plain")}, under.writes, "not corked: written at once")

	under.writes = nil
	c.Cork()
	c.Cork() // twice is once
	for _, p := range []string{"head", "er", "body"} {
		n, err := c.Write([]byte(p))
		require.NoError(t, err)
		assert.Equal(t, len(p), n)
	}
	assert.Empty(t, under.writes, "corked: held back")
	require.NoError(t, c.Uncork())
	assert.Equal(t, [][]byte{[]byte("headerbody")}, under.writes, "one write with everything, in order")

	under.writes = nil
	_, err = c.Write([]byte("after"))
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("after")}, under.writes, "uncorked again")

	// Past MaxCorked, what is held goes out, then this write and the
	// rest of the corked ones as they come.
	under.writes = nil
	c.Cork()
	big1, big2 := bytes.Repeat([]byte{1}, MaxCorked-10), bytes.Repeat([]byte{2}, 20)
	_, _ = c.Write(big1)
	assert.Empty(t, under.writes)
	_, _ = c.Write(big2)
	assert.Equal(t, [][]byte{big1, big2}, under.writes)
	_, _ = c.Write([]byte("x"))
	assert.Equal(t, [][]byte{big1, big2, []byte("x")}, under.writes)
	require.NoError(t, c.Uncork())
	assert.Len(t, under.writes, 3)

	// Corked again after that: held again.
	under.writes = nil
	c.Cork()
	_, _ = c.Write([]byte("y"))
	assert.Empty(t, under.writes)
	require.NoError(t, c.Uncork())
	assert.Equal(t, [][]byte{[]byte("y")}, under.writes)

	// crypto/tls took the held bytes as sent: if they cannot be written,
	// the connection is closed and stays failed.
	under.writes, under.err = nil, errors.New("broken pipe")
	c.Cork()
	_, err = c.Write([]byte("lost"))
	require.NoError(t, err, "held")
	assert.EqualError(t, c.Uncork(), "broken pipe")
	assert.True(t, under.closed)
	under.err = nil
	_, err = c.Write([]byte("z"))
	assert.EqualError(t, err, "broken pipe")
	c.Cork()
	assert.EqualError(t, c.Uncork(), "broken pipe")
	assert.Empty(t, under.writes, "nothing written after the failure")
}

// Through net/http over TLS, a corked 17 KB answer leaves in one write
// (net/http alone makes two or more: its 4 KiB buffer, then the rest, a
// write per TLS record), and
// FromContext finds the connection of a request served over a Listener.
func TestCorkedAnswerIsOneWrite(t *testing.T) {
	cert := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	counted := writecount.New(ln)
	answer := bytes.Repeat([]byte("0123456789abcdef"), 17<<10/16)
	srv := &http.Server{
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{cert}},
		ConnContext: ConnContext,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
			c := FromContext(r.Context())
			if c == nil {
				http.Error(w, "no connection in the context", http.StatusInternalServerError)
				return
			}
			if r.URL.Path == "/corked" {
				c.Cork()
				defer func() { _ = c.Uncork() }()
			}
			_, _ = w.Write(answer)
			_ = http.NewResponseController(w).Flush()
		}),
	}
	go func() { _ = srv.ServeTLS(Listener(counted), "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
	defer tr.CloseIdleConnections()
	get := func(path string) int64 {
		before := counted.Writes()
		resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + path)
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(got))
		require.Equal(t, answer, got)
		return counted.Writes() - before
	}
	get("/warm-up") // the handshake's writes
	// Two or more: crypto/tls writes each record on its own, and starts a
	// connection with small records.
	assert.GreaterOrEqual(t, get("/plain"), int64(2), "net/http alone")
	assert.Equal(t, int64(1), get("/corked"))
	for range 8 { // past crypto/tls's small records
		get("/plain")
	}
	assert.GreaterOrEqual(t, get("/plain"), int64(2), "net/http alone, 16 KiB records")
	assert.Equal(t, int64(1), get("/corked"))

	assert.Nil(t, FromContext(context.Background()))
	assert.Equal(t, context.Background(), ConnContext(context.Background(), &net.TCPConn{}), "not a TLS connection over a Conn")
}
