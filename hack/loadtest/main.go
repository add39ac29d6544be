// Command loadtest loads a podmeta webhook with AdmissionReview requests
// and measures it against a null baseline; see BENCHMARKS.md.
//
//	loadtest run     --url URL --ca-file F [--pid PID]   load a running server
//	loadtest null    --listen ... --tls-cert-file ...     serve the null baseline
//	loadtest bench   --webhook-bin BIN                    null vs webhook, all figures as ratios
//	loadtest rotate  --webhook-bin BIN                    swap certificates during load
//	loadtest sigterm --webhook-bin BIN                    SIGTERM during load
//	loadtest soak    --webhook-bin BIN --duration 30m     steady rate, memory over time
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
		}
		os.Exit(1)
	}
}

const usage = `usage: loadtest COMMAND [flags]

commands:
  run      load a running webhook (or null server) and report
  null     serve the null baseline (the webhook's serving flags)
  bench    start the null baseline and the webhook, measure both, report ratios
  rotate   swap the serving certificate Secret-style during load
  sigterm  send SIGTERM during load; every accepted request must be answered
  soak     steady rate for a long time; zero errors, RSS flat

"loadtest COMMAND -h" lists a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "run":
		return runLoad(ctx, args, stdout, stderr)
	case "null":
		return runNull(ctx, args, stderr)
	case "bench":
		return runBench(ctx, args, stdout, stderr)
	case "rotate":
		return runRotate(ctx, args, stdout, stderr)
	case "sigterm":
		return runSigterm(ctx, args, stdout, stderr)
	case "soak":
		return runSoak(ctx, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// intList is a comma-separated list of positive integers flag.
type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, v := range *l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a positive integer", f)
		}
		*l = append(*l, n)
	}
	return nil
}

// stringList is a comma-separated list flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*l = append(*l, f)
		}
	}
	return nil
}

// repeated is a flag that may be given several times.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, " ") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func writeJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode json report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write json report: %w", err)
	}
	return nil
}
