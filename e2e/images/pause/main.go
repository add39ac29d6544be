// Command pause is the pod sandbox ("infra") container of the local test
// cluster: containerd starts it first in every pod to hold the pod's
// namespaces. It does nothing but wait for SIGTERM or SIGINT, so a static Go
// binary in an otherwise empty image is enough and no registry is needed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
