// Command podmeta-webhook is podmeta's mutating admission webhook (`serve`)
// and its offline twin (`inject`), which applies the same injection to YAML
// manifests.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/podmeta/podmeta/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	// After the first signal starts the graceful shutdown, a second one
	// kills the process the default way.
	go func() { <-ctx.Done(); stop() }()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "podmeta-webhook:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// stdin is where `inject -f -` reads; a variable so tests can feed it.
var stdin io.Reader = os.Stdin

const usage = `podmeta-webhook: podmeta's mutating admission webhook

Usage:
  podmeta-webhook serve   [flags]           serve AdmissionReviews over HTTPS on /mutate
  podmeta-webhook inject  -f FILE|- [flags] inject into YAML manifests, print the result
  podmeta-webhook version                   print version information

Run "podmeta-webhook COMMAND -h" for the flags of a command.
`

// usageError marks a mistake on the command line (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// run is the whole program, minus signal handling and exit codes, so tests
// can drive it in-process: ctx cancellation is the shutdown signal.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{errors.New("no command given")}
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, rest, stderr)
	case "inject":
		return injectCmd(rest, stdout, stderr)
	case "version":
		if len(rest) > 0 {
			return usageError{fmt.Errorf("version takes no arguments, got %q", rest)}
		}
		fmt.Fprintln(stdout, "podmeta-webhook", buildinfo.Get())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageError{fmt.Errorf("unknown command %q", cmd)}
	}
}
