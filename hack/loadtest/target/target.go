// Package target starts a webhook server process for a load or fault run
// (the real webhook or the null baseline), optionally pinned to one CPU,
// with certificates in a Secret-volume layout, and measures how long it
// takes from process start to ready.
package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Spec describes how to start a server. The server must accept the
// webhook's serving flags: --listen, --tls-cert-file, --tls-key-file,
// --metrics-listen (serving /readyz).
type Spec struct {
	Name    string   // for messages: "null", "webhook"
	Argv    []string // program and leading arguments, e.g. [bin, "serve"]
	Args    []string // extra arguments after the serving flags
	Path    string   // admission endpoint path, e.g. /mutate
	CertDir string   // Secret-volume directory holding tls.crt and tls.key
	CPU     int      // pin to this CPU with taskset; -1: no pinning
	Env     []string // extra environment
	Log     io.Writer
	// ReadyTimeout bounds the wait for /readyz (default 10s).
	ReadyTimeout time.Duration
}

// Process is a started server.
type Process struct {
	Spec       Spec
	Cmd        *exec.Cmd
	PID        int
	URL        string // admission endpoint
	MetricsURL string // base URL of the metrics/health listener
	Ready      time.Duration
	done       chan struct{}
	waitErr    error
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs the server and waits until its /readyz answers 200.
func Start(ctx context.Context, s Spec) (*Process, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	mport, err := FreePort()
	if err != nil {
		return nil, err
	}
	argv := append([]string{}, s.Argv...)
	argv = append(argv,
		"--listen=127.0.0.1:"+strconv.Itoa(port),
		"--tls-cert-file="+filepath.Join(s.CertDir, "tls.crt"),
		"--tls-key-file="+filepath.Join(s.CertDir, "tls.key"),
		"--metrics-listen=127.0.0.1:"+strconv.Itoa(mport),
	)
	argv = append(argv, s.Args...)
	if s.CPU >= 0 {
		// taskset sets the affinity and execs, so the PID is the server's
		// and every thread the Go runtime starts inherits the mask (and
		// GOMAXPROCS follows it).
		argv = append([]string{"taskset", "-c", strconv.Itoa(s.CPU)}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = s.Log, s.Log
	p := &Process{
		Spec: s, Cmd: cmd, done: make(chan struct{}),
		URL:        "https://127.0.0.1:" + strconv.Itoa(port) + s.Path,
		MetricsURL: "http://127.0.0.1:" + strconv.Itoa(mport),
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	p.PID = cmd.Process.Pid
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()

	timeout := s.ReadyTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	client := &http.Client{Timeout: 200 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := start.Add(timeout)
	for {
		if ok := probe(ctx, client, p.MetricsURL+"/readyz"); ok {
			p.Ready = time.Since(start)
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited before it was ready: %v", s.Name, p.waitErr)
		case <-ctx.Done():
			p.Kill()
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%s not ready after %s", s.Name, timeout)
		}
	}
}

func probe(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitErr is the process's exit status; valid after Done.
func (p *Process) ExitErr() error { return p.waitErr }

// Terminate sends SIGTERM and waits up to grace for the process to exit.
// It returns how long the exit took; past grace it kills the process and
// returns an error.
func (p *Process) Terminate(grace time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, fmt.Errorf("signal %s: %w", p.Spec.Name, err)
	}
	select {
	case <-p.done:
		took := time.Since(start)
		if p.waitErr != nil {
			return took, fmt.Errorf("%s exited with %v after SIGTERM", p.Spec.Name, p.waitErr)
		}
		return took, nil
	case <-time.After(grace):
		p.Kill()
		return time.Since(start), fmt.Errorf("%s still running %s after SIGTERM: killed", p.Spec.Name, grace)
	}
}

// Kill ends the process at once and waits for it.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.done
}
