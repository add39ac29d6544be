package ambassador

import (
	"net"
	"sync"
	"syscall"
	"time"
)

// hangupWatch watches an app's connection, without reading it, for a
// hang-up while the API server has not answered yet: a plain request's
// head (call) or an upgrade's 101 (stream). Reading would take bytes that
// belong to fasthttp or to the upgraded protocol; waitHangup only peeks.
type hangupWatch struct {
	conn net.Conn // for its read deadline, which is how stop wakes run
	raw  syscall.RawConn

	mu      sync.Mutex
	running bool // run has started waiting
	stopped bool // stop has run
	done    chan struct{}
}

// newHangupWatch returns a watch of conn, or nil if conn has no socket to
// peek at (tests' in-memory connections).
func newHangupWatch(conn net.Conn) *hangupWatch {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &hangupWatch{conn: conn, raw: raw}
}

// run waits until the connection is readable and calls onGone if the app
// hung up (end of stream, reset, or the connection closed under the wait,
// the shutdown's last step). Anything else readable (a pipelined request)
// ends the watch; so does stop. run does nothing after stop.
func (w *hangupWatch) run(onGone func()) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	// A read deadline of the request being served (fasthttp's) would
	// end the watch early; fasthttp sets its own again before the next
	// read. Under the lock: stop's deadline in the past comes after this.
	_ = w.conn.SetReadDeadline(time.Time{})
	w.running = true
	w.done = make(chan struct{})
	w.mu.Unlock()
	defer close(w.done)
	if waitHangup(w.raw) {
		onGone()
	}
}

// stop ends the watch, waiting for run, and leaves the connection without
// a read deadline.
func (w *hangupWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	running := w.running
	if running {
		_ = w.conn.SetReadDeadline(time.Unix(1, 0)) // wakes run
	}
	w.mu.Unlock()
	if running {
		<-w.done
		_ = w.conn.SetReadDeadline(time.Time{})
	}
}
