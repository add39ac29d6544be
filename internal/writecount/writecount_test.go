package writecount

import (
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCountsWrites(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := New(ln)
	defer l.Close()
	done := make(chan struct{})
	go func() { // reads all three bytes before it hangs up
		defer close(done)
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			_, _ = io.ReadFull(c, make([]byte, 3))
			c.Close()
		}
	}()
	c, err := l.Accept()
	require.NoError(t, err)
	defer c.Close()
	for range 3 {
		_, err := c.Write([]byte("x"))
		require.NoError(t, err)
	}
	assert.Equal(t, int64(3), l.Writes())
	<-done
}
