package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/corpus"
	"github.com/podmeta/podmeta/hack/loadtest/load"
	"github.com/podmeta/podmeta/hack/loadtest/nullserver"
	"github.com/podmeta/podmeta/hack/loadtest/scenario"
)

func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "webhook URL, https on loopback only (e.g. https://127.0.0.1:8443/mutate)")
	caFile := fs.String("ca-file", "", "PEM CA bundle to verify the server with")
	pod := fs.String("pod", "medium", "corpus pod: small, medium or large")
	workers := fs.Int("workers", 64, fmt.Sprintf("concurrent connections (1..%d)", load.MaxWorkers))
	duration := fs.Duration("duration", 10*time.Second, fmt.Sprintf("run length (at most %s)", load.MaxDuration))
	count := fs.Int64("count", 0, "stop after this many requests (0: only the duration bounds the run)")
	rate := fs.Float64("rate", 0, "total requests per second (0: as fast as the server answers)")
	warmup := fs.Duration("warmup", time.Second, "not measured at the start of the run")
	timeout := fs.Duration("timeout", 10*time.Second, "per request")
	reconnect := fs.Int("reconnect-every", 0, "close each connection after this many requests (0: keep-alive)")
	null := fs.Bool("null", false, "the target is the null baseline: expect no patch")
	pid := fs.Int("pid", 0, "server PID: report its CPU time per request and peak RSS")
	jsonOut := fs.String("json", "", "also write the result as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || *caFile == "" {
		return fmt.Errorf("run: --url and --ca-file are required")
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("run: no certificate in %s", *caFile)
	}
	review, err := corpus.NewReview(*pod)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	name := scenario.Webhook
	if *null {
		name = scenario.Null
	}
	m, err := scenario.Measure(ctx, name, load.Config{
		URL: *url, RootCAs: roots, Review: review, ExpectPatch: !*null,
		Workers: *workers, Duration: *duration, Count: *count, Rate: *rate, Warmup: *warmup,
		Timeout: *timeout, ReconnectEvery: *reconnect,
	}, *pid)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	fmt.Fprintf(stdout, "%s: %s pod (%d-byte review), %d workers, %d connections, %s measured\n",
		*url, *pod, review.Len(), *workers, m.Conns, m.Elapsed.Round(time.Millisecond))
	printMeasurements(stdout, m)
	if err := writeJSON(*jsonOut, m); err != nil {
		return err
	}
	if f := m.Failures(); f > 0 || len(m.Errors) > 0 {
		return fmt.Errorf("run: %d of %d requests failed", m.Requests-m.OK, m.Requests)
	}
	return nil
}

func runNull(ctx context.Context, args []string, stderr io.Writer) error {
	return nullserver.Run(ctx, args, stderr)
}

// serverFlags are the flags shared by the commands that start servers.
type serverFlags struct {
	webhookBin  string
	webhookArgs repeated
	path        string
	cpu         int
	workDir     string
}

func (s *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.webhookBin, "webhook-bin", "", "webhook binary, started as BIN serve --listen ... (see BENCHMARKS.md)")
	fs.Var(&s.webhookArgs, "webhook-arg", "extra flag for the webhook's serve command (repeatable), e.g. --webhook-arg=--config=FILE")
	fs.StringVar(&s.path, "path", "/mutate", "admission endpoint path")
	fs.IntVar(&s.cpu, "server-cpu", -1, "pin servers to this CPU with taskset (-1: no pinning)")
	fs.StringVar(&s.workDir, "work-dir", "", "keep certificates and server logs here (default: a temporary directory, removed)")
}

func (s *serverFlags) setup(name string) (*scenario.Env, scenario.Servers, func(), error) {
	if s.webhookBin == "" {
		return nil, scenario.Servers{}, nil, fmt.Errorf("%s: --webhook-bin is required", name)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, scenario.Servers{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	bin, err := filepath.Abs(s.webhookBin)
	if err != nil {
		return nil, scenario.Servers{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	dir, cleanup := s.workDir, func() {}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "podmeta-loadtest-"); err != nil {
			return nil, scenario.Servers{}, nil, fmt.Errorf("%s: %w", name, err)
		}
		cleanup = func() { os.RemoveAll(dir) }
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, scenario.Servers{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	env, err := scenario.NewEnv(dir)
	if err != nil {
		cleanup()
		return nil, scenario.Servers{}, nil, err
	}
	return env, scenario.Servers{
		WebhookArgv: []string{bin, "serve"}, WebhookArgs: s.webhookArgs, WebhookPath: s.path,
		NullArgv: []string{self, "null"}, CPU: s.cpu,
	}, cleanup, nil
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var sf serverFlags
	sf.register(fs)
	pods := stringList{"small", "medium", "large"}
	workers := intList{1, 64}
	fs.Var(&pods, "pods", "corpus pods to measure")
	fs.Var(&workers, "workers", "concurrency levels to measure")
	duration := fs.Duration("duration", 6*time.Second, "per measurement, warmup included")
	warmup := fs.Duration("warmup", time.Second, "not measured at the start of each measurement")
	rounds := fs.Int("rounds", 3, "measurements per target and scenario, interleaved; medians are reported")
	readyRuns := fs.Int("ready-runs", 7, "process starts timed per target")
	check := fs.Bool("check", false, "exit non-zero when a target of issue 6 is missed")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, p := range pods {
		if _, err := corpus.Pod(p); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if *duration > 10*time.Minute || *rounds > 20 || *readyRuns > 50 {
		return fmt.Errorf("bench: at most 10m per measurement, 20 rounds, 50 ready runs")
	}
	env, servers, cleanup, err := sf.setup("bench")
	if err != nil {
		return err
	}
	defer cleanup()
	rep, err := scenario.Bench(ctx, env, scenario.BenchConfig{
		Servers: servers, Pods: pods, Workers: workers, Duration: *duration, Warmup: *warmup,
		Rounds: *rounds, ReadyRuns: *readyRuns, Progress: stderr,
	})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	printBench(stdout, rep)
	if err := writeJSON(*jsonOut, rep); err != nil {
		return err
	}
	if *check {
		for _, c := range rep.Checks {
			if !c.OK {
				return fmt.Errorf("bench: target missed: %s is %s (target %s)", c.Name, c.Value, c.Limit)
			}
		}
	}
	return nil
}
