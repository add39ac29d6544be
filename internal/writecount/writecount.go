// Package writecount counts the writes on the connections a listener
// accepts, for tests that check how many write system calls an answer
// takes.
package writecount

import (
	"net"
	"sync/atomic"
)

// Listener wraps a listener; Writes is the number of Write calls on all
// the connections it accepted so far.
type Listener struct {
	net.Listener
	writes atomic.Int64
}

// New wraps ln.
func New(ln net.Listener) *Listener { return &Listener{Listener: ln} }

// Writes returns the number of writes so far.
func (l *Listener) Writes() int64 { return l.writes.Load() }

func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, n: &l.writes}, nil
}

type conn struct {
	net.Conn
	n *atomic.Int64
}

func (c *conn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}
