package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// The relay is the floor of any proxy that runs as its own process: it
// forwards the client's bytes to the upstream and back (here TLS and HTTP/2
// straight through, end to end) with nothing else to do. Measured as one
// more target, it shows what the extra hop alone costs on the machine at
// hand (two more process wake-ups and two more trips through the loopback
// TCP stack per request), which the ambassador cannot go below.
//
// It is this same binary started as `ambassador-bench relay-serve LISTEN
// UPSTREAM`, so it needs nothing built or installed.
const relayCommand = "relay-serve"

// relayBufSize is each direction's copy buffer: a whole 21 KB list (or a
// 16 KiB TLS record) moves in one read and one write.
const relayBufSize = 32 << 10

func relayMain(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: %s LISTEN UPSTREAM", relayCommand)
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
		ln.Close()
	}()
	err = relay(ln, args[1])
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// relay serves ln until it is closed, forwarding every connection to
// upstream.
func relay(ln net.Listener, upstream string) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				fmt.Fprintln(os.Stderr, "relay:", err)
				return
			}
			defer u.Close()
			var wg sync.WaitGroup
			wg.Go(func() { pipe(u.(*net.TCPConn), c.(*net.TCPConn)) })
			pipe(c.(*net.TCPConn), u.(*net.TCPConn))
			wg.Wait()
		}()
	}
}

// pipe copies src to dst through a user-space buffer, as every proxy that
// looks at the bytes must (io.Copy between two TCP connections would splice
// them inside the kernel instead), then passes the end of stream on.
func pipe(dst, src *net.TCPConn) {
	buf := make([]byte, relayBufSize)
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	_ = dst.CloseWrite()
}
