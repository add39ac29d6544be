package ambassador

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/valyala/fasthttp"
)

// credentials keeps the bearer token and the CA-verified upstream clients
// current. Projected service-account tokens rotate (kubelet rewrites them at
// 80 % of their lifetime by swapping a "..data" symlink in the volume), and
// the kube-root-ca.crt bundle can change on CA rotation, so both files are
// re-read when their directory changes, on a fallback poll, and when the API
// server answers 401. Requests never touch the filesystem: they read the
// current values from atomic pointers.
type credentials struct {
	tokenFile, caFile string
	log               *slog.Logger
	m                 *metrics
	newUpstream       func(*x509.CertPool) upstreamClients

	token atomic.Pointer[tokenState]
	ca    atomic.Pointer[caState]

	mu    sync.Mutex // serialises reloads
	nudge chan struct{}
}

type tokenState struct {
	raw    []byte // file content as read, to detect changes cheaply
	bearer string // "Bearer <token>", empty if never loaded
	err    error  // last read error; the previous bearer keeps being used
}

type caState struct {
	pem     []byte
	clients upstreamClients // zero if never loaded
	err     error
}

// upstreamClients are the two ways to the API server for one CA bundle:
// plain requests go over a pool of HTTP/1.1 keep-alive connections
// (fasthttp, the cheapest path per request), streams and upgrades over
// net/http's HTTP/2 transport (one multiplexed connection for any number of
// watches, like kubectl proxy).
type upstreamClients struct {
	plain   *fasthttp.HostClient
	streams *http.Transport
}

func (u upstreamClients) closeIdle() {
	u.plain.CloseIdleConnections()
	u.streams.CloseIdleConnections()
}

func newCredentials(tokenFile, caFile string, log *slog.Logger, m *metrics, newUpstream func(*x509.CertPool) upstreamClients) *credentials {
	c := &credentials{
		tokenFile:   tokenFile,
		caFile:      caFile,
		log:         log,
		m:           m,
		newUpstream: newUpstream,
		nudge:       make(chan struct{}, 1),
	}
	c.token.Store(&tokenState{err: errors.New("token not loaded yet")})
	c.ca.Store(&caState{err: errors.New("CA not loaded yet")})
	c.reload()
	return c
}

// bearer returns the Authorization value, or an error saying why there is
// none. A token that was loaded once keeps being used when a later read
// fails: it is still valid for a while, and a transient read error must not
// break every request.
func (c *credentials) bearer() (string, error) {
	t := c.token.Load()
	if t.bearer == "" {
		return "", t.err
	}
	return t.bearer, nil
}

// transport returns the current upstream transport for streams and
// upgrades, or why there is none.
func (c *credentials) transport() (*http.Transport, error) {
	s := c.ca.Load()
	if s.clients.streams == nil {
		return nil, s.err
	}
	return s.clients.streams, nil
}

// client returns the current upstream client for plain requests, or why
// there is none.
func (c *credentials) client() (*fasthttp.HostClient, error) {
	s := c.ca.Load()
	if s.clients.plain == nil {
		return nil, s.err
	}
	return s.clients.plain, nil
}

// ready reports whether the token and the CA are currently readable.
func (c *credentials) ready() error {
	if err := c.token.Load().err; err != nil {
		return err
	}
	return c.ca.Load().err
}

// requestReload asks the watcher loop for a reload without blocking.
func (c *credentials) requestReload() {
	select {
	case c.nudge <- struct{}{}:
	default:
	}
}

func (c *credentials) reload() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadToken()
	c.reloadCA()
}

func (c *credentials) reloadToken() {
	old := c.token.Load()
	raw, err := os.ReadFile(c.tokenFile)
	if err == nil && old.err == nil && bytes.Equal(raw, old.raw) {
		return
	}
	next := &tokenState{raw: raw, bearer: old.bearer}
	switch tok := strings.TrimSpace(string(raw)); {
	case errors.Is(err, fs.ErrNotExist):
		next.err = fmt.Errorf("token file missing: %s", c.tokenFile)
	case err != nil:
		next.err = fmt.Errorf("token file unreadable: %w", err)
	case tok == "":
		next.err = fmt.Errorf("token file empty: %s", c.tokenFile)
	default:
		next.bearer = "Bearer " + tok
	}
	c.token.Store(next)
	if next.err != nil {
		c.m.tokenReloads.WithLabelValues("error").Inc()
		if old.err == nil || old.err.Error() != next.err.Error() {
			c.log.Warn("token not loaded", "file", c.tokenFile, "error", next.err.Error(), "keeping_previous", next.bearer != "")
		}
		return
	}
	c.m.tokenReloads.WithLabelValues("success").Inc()
	c.log.Info("token loaded", "file", c.tokenFile)
}

func (c *credentials) reloadCA() {
	old := c.ca.Load()
	pem, err := os.ReadFile(c.caFile)
	if err == nil && old.err == nil && bytes.Equal(pem, old.pem) {
		return
	}
	next := &caState{pem: pem, clients: old.clients}
	pool := x509.NewCertPool()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		next.err = fmt.Errorf("CA file missing: %s", c.caFile)
	case err != nil:
		next.err = fmt.Errorf("CA file unreadable: %w", err)
	case !pool.AppendCertsFromPEM(pem):
		next.err = fmt.Errorf("CA file has no PEM certificates: %s", c.caFile)
	default:
		next.clients = c.newUpstream(pool)
	}
	c.ca.Store(next)
	if next.err != nil {
		c.m.caReloads.WithLabelValues("error").Inc()
		if old.err == nil || old.err.Error() != next.err.Error() {
			c.log.Warn("CA not loaded", "file", c.caFile, "error", next.err.Error(), "keeping_previous", next.clients.plain != nil)
		}
		return
	}
	if old.clients.plain != nil {
		// Connections verified against the old bundle finish their
		// requests; no new request uses them.
		old.clients.closeIdle()
	}
	c.m.caReloads.WithLabelValues("success").Inc()
	c.log.Info("CA loaded", "file", c.caFile)
}

// watch reloads on filesystem events in the files' directories, on every
// poll tick and on requestReload until ctx ends.
func (c *credentials) watch(ctx context.Context, poll time.Duration, fileEvents bool) {
	dirs := []string{filepath.Dir(c.tokenFile)}
	if d := filepath.Dir(c.caFile); d != dirs[0] {
		dirs = append(dirs, d)
	}
	var w *fsnotify.Watcher
	if fileEvents {
		var err error
		if w, err = fsnotify.NewWatcher(); err != nil {
			c.log.Warn("file watching unavailable, polling only", "error", err.Error())
		}
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	watched := map[string]bool{}
	addWatches := func() {
		for _, d := range dirs {
			if w == nil || watched[d] {
				continue
			}
			// A directory that does not exist yet is retried each poll.
			if err := w.Add(d); err == nil {
				watched[d] = true
			}
		}
	}
	addWatches()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Has(fsnotify.Remove) && watched[ev.Name] {
				// The watched directory itself went away; re-add
				// it when it comes back.
				watched[ev.Name] = false
			}
			c.reload()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			c.log.Warn("file watch error", "error", err.Error())
		case <-tick.C:
			addWatches()
			c.reload()
		case <-c.nudge:
			c.reload()
		}
	}
}
