package main

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRelay: bytes go both ways unchanged, larger than one copy buffer, and
// a half-close reaches the other side (the upstream answers only after the
// client's end of stream, so a relay that dropped it would hang).
func TestRelay(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer up.Close()
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		got, _ := io.ReadAll(c)
		_, _ = c.Write(bytes.ToUpper(got))
	}()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- relay(ln, up.Addr().String()) }()

	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	msg := bytes.Repeat([]byte("podmeta "), 3*relayBufSize/8+5)
	_, err = c.Write(msg)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	back, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, bytes.ToUpper(msg), back)

	ln.Close()
	assert.ErrorIs(t, <-done, net.ErrClosed)
}
