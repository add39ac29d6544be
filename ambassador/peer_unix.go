//go:build unix

package ambassador

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// peerClosed peeks at an idle connection's socket without blocking: only
// "nothing to read yet" means it is still open. A poller error other than a
// passed deadline (none is set on the pool's connections today) also means
// closed; a false "closed" only costs a retry on a fresh connection.
func peerClosed(raw syscall.RawConn) bool {
	var err error
	var b [1]byte
	if cerr := raw.Read(func(fd uintptr) bool {
		for {
			_, _, err = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err != syscall.EINTR {
				return true
			}
		}
	}); cerr != nil {
		return !errors.Is(cerr, os.ErrDeadlineExceeded)
	}
	return !errors.Is(err, syscall.EAGAIN)
}

// waitHangup blocks until the app's connection is readable, without
// reading it, and reports whether the app hung up (end of stream or reset)
// or the connection was closed under the wait (the shutdown's last step).
// Anything readable (a pipelined request) ends the wait with false, and so
// does a read deadline.
func waitHangup(raw syscall.RawConn) bool {
	var gone bool
	err := raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err == syscall.EAGAIN || err == syscall.EINTR {
			return false // wait until readable
		}
		gone = err != nil || n == 0
		return true
	})
	return gone || errors.Is(err, net.ErrClosed)
}
