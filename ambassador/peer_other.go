//go:build !unix

package ambassador

import "syscall"

// peerClosed cannot peek here: the request is written, and a connection
// the API server had closed fails it as before (GET, HEAD and PUT are
// retried by fasthttp, other methods answered with 502).
func peerClosed(syscall.RawConn) bool { return false }

// waitHangup cannot peek here: a plain request, or an upgrade awaiting its
// 101, runs to its end upstream even if its app hung up.
func waitHangup(syscall.RawConn) bool { return false }
