// Command podmeta-ambassador is the sidecar podmeta injects: plain HTTP on
// 127.0.0.1:8001, forwarded to the API server over verified TLS with the
// pod's rotating service-account token, under a method/path policy.
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
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/podmeta/podmeta/ambassador"
	"github.com/podmeta/podmeta/internal/buildinfo"
	"github.com/podmeta/podmeta/ops"
	"github.com/podmeta/podmeta/policy"
)

func main() {
	// One P unless the operator says otherwise: the sidecar serves one
	// pod, its default CPU limit (200m) is far below a core (the runtime
	// would still pick 2), and with one P a proxied request needs no
	// cross-thread wakeups: fewer futex/nanosleep calls and lower latency
	// (BENCHMARKS.md, "Ambassador").
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	// The live heap is a couple of MiB, so collecting at +50 % instead of
	// +100 % costs no measurable CPU per request and keeps RSS under
	// 15 MiB under load (same benchmark). GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	// A repeated signal changes nothing: the shutdown delay and the drain
	// run their course (the kubelet's SIGKILL ends them at the grace
	// period). Exiting at once would drop the app's last API calls.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv, nil); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "podmeta-ambassador:", err)
		}
		os.Exit(2)
	}
}

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// run is the whole program; started, when non-nil, receives the server once
// its listeners are open (tests use it to learn the ports).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, started func(*ambassador.Server)) error {
	fs := flag.NewFlagSet("podmeta-ambassador", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg               ambassador.Config
		mode, allow, lvl  string
		showVersion       bool
		defaultUpstream   = ambassador.UpstreamFromEnv(getenv)
		upstreamHelpExtra = ""
	)
	if defaultUpstream == "" {
		upstreamHelpExtra = " (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)"
	}
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8001", "proxy address; must be loopback unless --allow-non-loopback")
	fs.BoolVar(&cfg.AllowNonLoopback, "allow-non-loopback", false, "allow --listen on a non-loopback address (exposes the pod's API access)")
	fs.StringVar(&cfg.HealthListen, "health-listen", ":8002", "address of /healthz, /readyz and /metrics (no credentials)")
	fs.StringVar(&cfg.Upstream, "upstream", defaultUpstream, "API server URL"+upstreamHelpExtra)
	fs.StringVar(&cfg.TokenFile, "token-file", saDir+"/token", "service-account token file, re-read when it changes")
	fs.StringVar(&cfg.CAFile, "ca-file", saDir+"/ca.crt", "CA bundle the API server certificate must chain to")
	fs.StringVar(&mode, "policy", string(policy.ReadOnly), "read-only, full or allow-list")
	fs.StringVar(&allow, "allow", "", `allow rules, e.g. "GET /api/v1/namespaces/*/pods/**; PUT /api/v1/namespaces/a/configmaps/b"`)
	fs.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", 0, "on SIGTERM, keep serving this long (with /readyz failing) before draining; podmeta sets it when the ambassador is a regular container, which is stopped together with the app")
	fs.StringVar(&lvl, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&showVersion, "version", false, "print version information as JSON and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if showVersion {
		return json.NewEncoder(stdout).Encode(buildinfo.Get())
	}
	log, err := ops.NewLogger(stderr, lvl)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if cfg.Policy, err = policy.New(mode, allow); err != nil {
		return fmt.Errorf("--policy/--allow: %w", err)
	}
	log.Info("starting", "build", buildinfo.Get())
	reg := ops.NewRegistry()
	srv, err := ambassador.New(cfg, log, reg, reg)
	if err != nil {
		return err
	}
	if started != nil {
		started(srv)
	}
	return srv.Run(ctx)
}
