// Package tlsrecord makes reads on server connections stop at TLS record
// boundaries, which keeps crypto/tls's per-connection read buffer small on
// a server holding many keep-alive connections.
//
// crypto/tls reads a record with bytes.Buffer.ReadFrom and asks the
// connection for as much as its buffer holds. When a peer has sent several
// records at once (a large admission review is three or four 16 KiB records
// sent together), the read fills the buffer and runs into the next record;
// ReadFrom then grows the buffer before it learns it has enough, and the
// next record's bytes already in it make the following Grow count them
// twice. Each connection ended up holding a 40 KiB buffer; with reads that
// stop at the end of the current record it holds 32 KiB, the least
// bytes.Buffer's doubling allows for 16 KiB records.
//
// On the way out, a handler can Cork a connection so that the records of
// one answer leave in one write.
package tlsrecord

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
)

// headerLen is the length of a TLS record header: content type, version,
// and the length of the record that follows.
const headerLen = 5

// Listener wraps ln so that no read on its connections crosses the end of
// a TLS record. The bytes are passed on untouched; only how many each Read
// hands out changes.
func Listener(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: c}, nil
}

// Conn is a connection whose Read returns at most the rest of the current
// TLS record's header or body.
//
// A read of a record's body also asks for the next record's header, so
// that records sent together cost one read system call each, not two:
// those (at most five) bytes are kept here and handed out by the next
// Read. A record that arrives alone (a review's only record) costs two:
// its header, then its body. Over HTTP/2 most records arrive alone (small
// frames of many streams), which is why ReadAheadIfHTTP2 lifts the limit
// there.
//
// crypto/tls never finds the next record in its buffer, so it no longer
// notices a close_notify alert that arrived right behind application data
// until the next read; a server loses nothing by that.
type Conn struct {
	net.Conn
	left    int             // body bytes of the current record not handed out yet
	header  [headerLen]byte // the current header, as far as handed out
	inHead  int             // bytes of header handed out
	next    [headerLen]byte // bytes read past the record: the next header's start
	pending []byte          // of next, those not handed out yet
	err     error           // came with pending: returned with its last byte

	decided bool        // ReadAheadIfHTTP2 looked at this connection
	ahead   atomic.Bool // reads are no longer limited

	wmu     sync.Mutex
	held    *[]byte // while corked: what was written since (pooled)
	through bool    // corked, but past MaxCorked: writes go through
	werr    error   // writing held bytes failed: the connection is closed
}

// ReadAheadIfHTTP2 lifts the limit on the reads of c, a *tls.Conn over a
// Conn, once c negotiated HTTP/2, and does nothing otherwise (call it once
// the handshake is done, e.g. from http.Server.ConnState on StateActive;
// later calls cost a type check). An HTTP/2 client sends its streams' frames
// as many small records on one connection: reading them one by one cost a
// read system call each (3.5 per review instead of 0.9), to save 8 KiB on
// the one connection an API server opens.
func ReadAheadIfHTTP2(c net.Conn) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	rc, ok := tc.NetConn().(*Conn)
	if !ok || rc.decided {
		return
	}
	rc.decided = true
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		rc.ahead.Store(true)
	}
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.ahead.Load() {
		if len(c.pending) > 0 { // read before the limit was lifted
			return c.handPending(p, len(p))
		}
		return c.Conn.Read(p)
	}
	if c.left == 0 { // at a header
		if len(c.pending) > 0 {
			n, err := c.handPending(p, headerLen-c.inHead)
			c.sawHeader(p[:n])
			return n, err
		}
		n, err := c.Conn.Read(p[:min(len(p), headerLen-c.inHead)])
		c.sawHeader(p[:n])
		return n, err
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left+headerLen)])
	if n > c.left {
		c.pending = c.next[:copy(c.next[:], p[c.left:n])]
		c.err, err = err, nil
		n = c.left
	}
	c.left -= n
	return n, err
}

// handPending hands out up to limit of the bytes read past the last record,
// and the error that came with them after the last of them, once.
func (c *Conn) handPending(p []byte, limit int) (int, error) {
	n := copy(p[:min(len(p), limit)], c.pending)
	c.pending = c.pending[n:]
	var err error
	if len(c.pending) == 0 {
		err, c.err = c.err, nil
	}
	return n, err
}

// sawHeader records header bytes handed out; once the header is complete,
// the record's body comes next.
func (c *Conn) sawHeader(b []byte) {
	c.inHead += copy(c.header[c.inHead:], b)
	if c.inHead == headerLen {
		c.inHead = 0
		c.left = int(c.header[3])<<8 | int(c.header[4])
	}
}

// MaxCorked bounds the bytes Cork holds back (TLS records, a little more
// than the plaintext): past it, what is held is written and the rest of
// the corked writes go through as they come.
const MaxCorked = 32 << 10

var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, MaxCorked); return &b }}

// Cork holds back what is written on c until Uncork, so that a response
// written in parts leaves in one write system call: net/http flushes its
// 4 KiB buffer (the headers and the start of the body), then writes the
// rest of a larger body directly, and crypto/tls writes each record (at
// most 16 KiB) on its own: two writes for a 17 KB answer, and as many
// wake-ups of the client. Call Uncork soon after, on every path: the
// bytes go nowhere until then.
//
// crypto/tls takes held bytes as sent. If writing them fails, the
// connection is closed (its peer would otherwise wait for records that
// never come, on a connection net/http still thinks is good) and the
// error is returned by Uncork and every later Write.
func (c *Conn) Cork() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.held == nil && c.werr == nil {
		c.held = heldPool.Get().(*[]byte)
		c.through = false
	}
}

// Uncork writes what Cork held back, in one write, and lets writes through
// again.
func (c *Conn) Uncork() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.held == nil {
		return c.werr
	}
	err := c.writeHeld()
	heldPool.Put(c.held)
	c.held = nil
	return err
}

// writeHeld writes and empties the held bytes; c.wmu is held.
func (c *Conn) writeHeld() error {
	b := *c.held
	*c.held = b[:0]
	if len(b) == 0 {
		return nil
	}
	if _, err := c.Conn.Write(b); err != nil {
		c.werr = err
		_ = c.Conn.Close()
		return err
	}
	return nil
}

func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if c.held == nil || c.through {
		return c.Conn.Write(p)
	}
	if b := *c.held; len(b)+len(p) <= MaxCorked {
		*c.held = append(b, p...)
		return len(p), nil
	}
	c.through = true
	if err := c.writeHeld(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

type connKey struct{}

// ConnContext is for http.Server.ConnContext: it puts a connection (a
// *tls.Conn over a Conn) in the context of its requests, for FromContext.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		if rc, ok := tc.NetConn().(*Conn); ok {
			return context.WithValue(ctx, connKey{}, rc)
		}
	}
	return ctx
}

// FromContext returns the Conn a request came on (see ConnContext), or
// nil.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}
