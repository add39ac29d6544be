package scenario

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podmeta/podmeta/hack/loadtest/target"
	"github.com/podmeta/podmeta/internal/testcerts"
)

// Env is the shared setup of a scenario: a CA and a Secret-volume
// directory holding the current serving certificate.
type Env struct {
	CA      *testcerts.CA
	CertDir string
	Roots   *x509.CertPool
	Serving *testcerts.Serving // the certificate in CertDir now
	dir     string
}

// NewEnv issues a serving certificate into dir/certs.
func NewEnv(dir string) (*Env, error) {
	ca, err := testcerts.NewCA()
	if err != nil {
		return nil, err
	}
	e := &Env{CA: ca, CertDir: filepath.Join(dir, "certs"), Roots: ca.Pool(), dir: dir}
	if err := os.MkdirAll(e.CertDir, 0o755); err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	if _, err := e.Rotate(); err != nil {
		return nil, err
	}
	return e, nil
}

// Rotate issues a new serving certificate and swaps it in the way kubelet
// updates a Secret volume.
func (e *Env) Rotate() (*testcerts.Serving, error) {
	s, err := e.CA.Issue("podmeta-webhook", 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	files := map[string][]byte{"tls.crt": s.CertPEM, "tls.key": s.KeyPEM, "ca.crt": e.CA.PEM}
	if err := testcerts.WriteSecretDir(e.CertDir, files); err != nil {
		return nil, fmt.Errorf("write serving certificate: %w", err)
	}
	e.Serving = s
	return s, nil
}

// Servers says how to start the two servers every scenario may use.
type Servers struct {
	// Webhook is the real server: program and subcommand (e.g.
	// [bin/webhook, "serve"]) and its extra flags.
	WebhookArgv []string
	WebhookArgs []string
	// WebhookEnv is extra environment for the webhook only (e.g. GOGC=50),
	// so runtime settings are compared without touching the null server or
	// the load generator.
	WebhookEnv  []string
	WebhookPath string // default /mutate
	// NullArgv starts the null baseline, e.g. [loadtest, "null"].
	NullArgv []string
	// CPU pins servers to this CPU (-1: not pinned).
	CPU int
}

// Names of the two targets.
const (
	Null    = "null"
	Webhook = "webhook"
)

// Start starts the named server with its output in dir/<name>.log.
func (e *Env) Start(ctx context.Context, s Servers, name string) (*target.Process, error) {
	spec := target.Spec{Name: name, CertDir: e.CertDir, CPU: s.CPU, Path: s.WebhookPath}
	if spec.Path == "" {
		spec.Path = "/mutate"
	}
	switch name {
	case Null:
		spec.Argv = s.NullArgv
	case Webhook:
		spec.Argv, spec.Args, spec.Env = s.WebhookArgv, s.WebhookArgs, s.WebhookEnv
	default:
		return nil, fmt.Errorf("scenario: unknown target %q", name)
	}
	if len(spec.Argv) == 0 {
		return nil, fmt.Errorf("scenario: no command to start the %s server", name)
	}
	f, err := os.OpenFile(filepath.Join(e.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	spec.Log = f
	p, err := target.Start(ctx, spec)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (log: %s)", err, f.Name())
	}
	go func() { <-p.Done(); f.Close() }()
	return p, nil
}

// LogTail returns the last bytes of a server's log, for error messages.
func (e *Env) LogTail(name string) string {
	b, err := os.ReadFile(filepath.Join(e.dir, name+".log"))
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
