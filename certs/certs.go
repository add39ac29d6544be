// Package certs owns the webhook's serving certificate: it loads a
// certificate/key pair from files, keeps it current when the files change on
// disk, and hands it to crypto/tls through GetCertificate.
//
// Kubernetes Secret volumes (which is how cert-manager delivers certificates)
// update by writing a new timestamped directory and atomically swapping a
// "..data" symlink, so the files' own inodes never change and a watch on the
// files would miss the update. We therefore watch the directories holding the
// files, re-add a watch when its directory disappears, and poll as a fallback
// for filesystems where inotify events are unreliable. A pair that fails to
// load (half-written, mismatched, garbage) is logged and counted, and the
// previous certificate keeps being served: a bad rotation must never take the
// webhook down.
package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// DefaultPollInterval is how often the files are re-read even without a
// filesystem event (the same default as controller-runtime's certwatcher).
const DefaultPollInterval = 10 * time.Second

// Options configure a Reloader.
type Options struct {
	CertFile string // PEM certificate chain, leaf first
	KeyFile  string // PEM private key matching the leaf

	// PollInterval is the fallback re-read period; 0 means
	// DefaultPollInterval, a negative value disables polling.
	PollInterval time.Duration

	Logger     *slog.Logger          // nil: slog.Default()
	Registerer prometheus.Registerer // nil: metrics are not registered

	// disableWatch turns fsnotify off so tests can exercise the poll path alone.
	disableWatch bool
}

// pair is one successfully loaded certificate together with the bytes it was
// parsed from, so a reload can cheaply tell whether anything changed.
type pair struct {
	cert            *tls.Certificate
	certPEM, keyPEM []byte
}

// Reloader serves the current certificate and reloads it when the files
// change. Create it with New, then run Run in a goroutine.
type Reloader struct {
	opts    Options
	log     *slog.Logger
	current atomic.Pointer[pair]
	watcher *fsnotify.Watcher // nil when watching is disabled or unavailable
	dirs    []string

	mu sync.Mutex // serialises reloads so two events never race on current

	expiry  prometheus.Gauge
	reloads *prometheus.CounterVec
}

// New loads the certificate pair and starts watching its directories (events
// are only acted on once Run is running). It fails if the initial pair cannot
// be loaded: without a certificate there is nothing to serve, and exiting with
// a clear error is more useful than an endless "not ready".
func New(opts Options) (*Reloader, error) {
	if opts.CertFile == "" || opts.KeyFile == "" {
		return nil, errors.New("both a certificate file and a key file are required")
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	factory := promauto.With(opts.Registerer)
	r := &Reloader{
		opts: opts,
		log:  log.With("component", "certs", "cert_file", opts.CertFile, "key_file", opts.KeyFile),
		expiry: factory.NewGauge(prometheus.GaugeOpts{
			Name: "podmeta_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the serving certificate currently in use, as a Unix timestamp.",
		}),
		reloads: factory.NewCounterVec(prometheus.CounterOpts{
			Name: "podmeta_certificate_reloads_total",
			Help: "Attempts to load a changed serving certificate pair from disk, by result (success, error).",
		}, []string{"result"}),
	}
	// Pre-create both series so an alert on errors works before the first one.
	r.reloads.WithLabelValues("success")
	r.reloads.WithLabelValues("error")

	p, err := loadPair(opts.CertFile, opts.KeyFile)
	if err != nil {
		return nil, err
	}
	r.install(p)

	r.dirs = uniqueDirs(opts.CertFile, opts.KeyFile)
	if !opts.disableWatch {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			// Not fatal: polling still picks up rotations, only later.
			r.log.Warn("file watching unavailable, relying on polling", "error", err)
		} else {
			r.watcher = w
			for _, d := range r.dirs {
				if err := w.Add(d); err != nil {
					r.log.Warn("cannot watch certificate directory, relying on polling", "dir", d, "error", err)
				}
			}
		}
	}
	return r, nil
}

// GetCertificate returns the current certificate; use it as
// tls.Config.GetCertificate. It never blocks on a reload.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	p := r.current.Load()
	if p == nil {
		return nil, errors.New("no serving certificate loaded")
	}
	return p.cert, nil
}

// Ready reports whether a certificate is loaded and can be served.
func (r *Reloader) Ready() bool { return r.current.Load() != nil }

// Leaf returns the certificate currently served (for logs and tests).
func (r *Reloader) Leaf() *x509.Certificate {
	if p := r.current.Load(); p != nil {
		return p.cert.Leaf
	}
	return nil
}

// Run reacts to filesystem events and poll ticks until ctx is done, then
// releases the watcher. It always returns nil after ctx is cancelled; the
// error return is for symmetry with the servers it runs beside.
func (r *Reloader) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if r.watcher != nil {
		defer r.watcher.Close()
		events, errs = r.watcher.Events, r.watcher.Errors
	}
	var tick <-chan time.Time
	if r.opts.PollInterval > 0 {
		t := time.NewTicker(r.opts.PollInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil // watcher closed underneath us; polling carries on
				continue
			}
			if ev.Has(fsnotify.Chmod) && !ev.Has(fsnotify.Create|fsnotify.Write|fsnotify.Remove|fsnotify.Rename) {
				continue // attribute changes never change content
			}
			if ev.Has(fsnotify.Remove|fsnotify.Rename) && r.isWatchedDir(ev.Name) {
				// The directory itself went away (inotify dropped the watch);
				// it may already be back, otherwise the next poll retries.
				r.rewatch()
			}
			r.Reload()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			r.log.Warn("file watch error", "error", err)
		case <-tick:
			r.rewatch()
			r.Reload()
		}
	}
}

// Reload re-reads the files and swaps in the new pair if it changed and is
// valid. A failure keeps the current certificate and is returned (and logged
// and counted). Unchanged files are a cheap no-op, so callers may call it on
// every event.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()

	certPEM, keyPEM, err := readPair(r.opts.CertFile, r.opts.KeyFile)
	if err == nil {
		if cur := r.current.Load(); cur != nil && bytes.Equal(cur.certPEM, certPEM) && bytes.Equal(cur.keyPEM, keyPEM) {
			return nil
		}
	}
	var p *pair
	if err == nil {
		p, err = parsePair(certPEM, keyPEM)
	}
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.log.Error("serving certificate not reloaded, keeping the previous one", "error", err)
		return err
	}
	r.install(p)
	r.reloads.WithLabelValues("success").Inc()
	return nil
}

func (r *Reloader) install(p *pair) {
	r.current.Store(p)
	leaf := p.cert.Leaf
	r.expiry.Set(float64(leaf.NotAfter.Unix()))
	attrs := []any{
		"subject", leaf.Subject.String(),
		"dns_names", leaf.DNSNames,
		"serial", leaf.SerialNumber.String(),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339),
	}
	// Served anyway (it is the best we have, and the API server will say
	// why it refuses it), but say so loudly.
	if now := time.Now(); now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		r.log.Warn("serving certificate loaded but not valid now", attrs...)
		return
	}
	r.log.Info("serving certificate loaded", attrs...)
}

func (r *Reloader) isWatchedDir(name string) bool {
	name = filepath.Clean(name)
	for _, d := range r.dirs {
		if name == d {
			return true
		}
	}
	return false
}

// rewatch (re-)adds the directory watches; adding an existing watch is
// harmless, and a directory that is gone for now is retried on the next poll.
func (r *Reloader) rewatch() {
	if r.watcher == nil {
		return
	}
	for _, d := range r.dirs {
		_ = r.watcher.Add(d)
	}
}

func loadPair(certFile, keyFile string) (*pair, error) {
	certPEM, keyPEM, err := readPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return parsePair(certPEM, keyPEM)
}

func readPair(certFile, keyFile string) (certPEM, keyPEM []byte, err error) {
	certPEM, err = os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err = os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read key: %w", err)
	}
	return certPEM, keyPEM, nil
}

// parsePair validates the pair: PEM decodes, the key matches the leaf (a
// rotation caught between writing the certificate and the key shows up here
// and is retried on the next event or poll), and the leaf parses.
func parsePair(certPEM, keyPEM []byte) (*pair, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load certificate/key pair: %w", err)
	}
	if cert.Leaf == nil { // X509KeyPair fills Leaf since Go 1.23; be safe anyway
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
	}
	return &pair{cert: &cert, certPEM: certPEM, keyPEM: keyPEM}, nil
}

func uniqueDirs(files ...string) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, f := range files {
		d := filepath.Clean(filepath.Dir(f))
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}
