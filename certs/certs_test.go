package certs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmeta/podmeta/internal/testcerts"
)

type fixture struct {
	ca  *testcerts.CA
	dir string
	reg *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ca, err := testcerts.NewCA()
	require.NoError(t, err)
	return &fixture{ca: ca, dir: t.TempDir(), reg: prometheus.NewRegistry()}
}

func (f *fixture) issue(t *testing.T, cn string) *testcerts.Serving {
	t.Helper()
	s, err := f.ca.Issue(cn, time.Hour)
	require.NoError(t, err)
	return s
}

func (f *fixture) opts() Options {
	return Options{
		CertFile:     filepath.Join(f.dir, "tls.crt"),
		KeyFile:      filepath.Join(f.dir, "tls.key"),
		PollInterval: -1,
		Registerer:   f.reg,
	}
}

// start runs the reloader until the test ends.
func start(t *testing.T, r *Reloader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// tlsEcho serves a line echo over TLS with the reloader's certificate.
func tlsEcho(t *testing.T, r *Reloader) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: r.GetCertificate, MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, f *fixture, addr string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"})
	require.NoError(t, err)
	return c
}

// servedCN does a fresh handshake and returns the server certificate's CN.
func servedCN(t *testing.T, f *fixture, addr string) string {
	t.Helper()
	c := dial(t, f, addr)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	_, err := c.Write([]byte(msg + "\n"))
	require.NoError(t, err)
	got, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, msg+"\n", got)
}

func TestSymlinkSwapReachesNextHandshake(t *testing.T) {
	f := newFixture(t)
	one, two := f.issue(t, "one"), f.issue(t, "two")
	require.NoError(t, testcerts.WriteServing(f.dir, one))

	r, err := New(f.opts())
	require.NoError(t, err)
	assert.True(t, r.Ready())
	start(t, r)
	addr := tlsEcho(t, r)

	assert.Equal(t, "one", servedCN(t, f, addr))
	assert.Equal(t, float64(one.Cert.NotAfter.Unix()), testutil.ToFloat64(r.expiry))
	open := dial(t, f, addr)
	defer open.Close()
	echo(t, open, "before")

	require.NoError(t, testcerts.WriteServing(f.dir, two))

	// The watcher is asynchronous: wait for the event to be handled, then the
	// very next handshake must present the new certificate.
	require.Eventually(t, func() bool { return r.Leaf().Subject.CommonName == "two" }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, "two", servedCN(t, f, addr))
	assert.Equal(t, float64(two.Cert.NotAfter.Unix()), testutil.ToFloat64(r.expiry))
	assert.Equal(t, 1.0, testutil.ToFloat64(r.reloads.WithLabelValues("success")))
	assert.Equal(t, 0.0, testutil.ToFloat64(r.reloads.WithLabelValues("error")))

	// The connection made with the old certificate is not dropped.
	echo(t, open, "after")
}

func TestPollFallbackWithoutWatcher(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, testcerts.WriteServing(f.dir, f.issue(t, "one")))
	o := f.opts()
	o.disableWatch = true
	o.PollInterval = 20 * time.Millisecond
	r, err := New(o)
	require.NoError(t, err)
	require.Nil(t, r.watcher)
	start(t, r)

	require.NoError(t, testcerts.WriteServing(f.dir, f.issue(t, "two")))
	require.Eventually(t, func() bool { return r.Leaf().Subject.CommonName == "two" }, 10*time.Second, 10*time.Millisecond)
}

// Plain files replaced by rename (mv, or a config-management tool) are picked
// up by the directory watch alone.
func TestPlainFilesReplacedByRename(t *testing.T) {
	f := newFixture(t)
	one, two := f.issue(t, "one"), f.issue(t, "two")
	o := f.opts()
	require.NoError(t, os.WriteFile(o.CertFile, one.CertPEM, 0o600))
	require.NoError(t, os.WriteFile(o.KeyFile, one.KeyPEM, 0o600))
	r, err := New(o)
	require.NoError(t, err)
	start(t, r)

	// Key first, then certificate: in between the pair mismatches, which must
	// be survived and then resolved by the second event.
	for _, w := range []struct {
		path string
		data []byte
	}{{o.KeyFile, two.KeyPEM}, {o.CertFile, two.CertPEM}} {
		tmp := w.path + ".tmp"
		require.NoError(t, os.WriteFile(tmp, w.data, 0o600))
		require.NoError(t, os.Rename(tmp, w.path))
	}
	require.Eventually(t, func() bool { return r.Leaf().Subject.CommonName == "two" }, 10*time.Second, 10*time.Millisecond)
}

// If the watched directory itself goes away (the whole mount replaced),
// inotify drops the watch; it is re-added once the directory is back.
func TestWatchReaddedAfterDirectoryRemoved(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, testcerts.WriteServing(f.dir, f.issue(t, "one")))
	o := f.opts()
	o.PollInterval = 20 * time.Millisecond
	r, err := New(o)
	require.NoError(t, err)
	start(t, r)

	require.NoError(t, os.RemoveAll(f.dir))
	require.Eventually(t, func() bool { return len(r.watcher.WatchList()) == 0 }, 10*time.Second, 10*time.Millisecond,
		"the kernel drops the watch of a removed directory")
	assert.Equal(t, "one", r.Leaf().Subject.CommonName, "still serving the old certificate")

	require.NoError(t, os.Mkdir(f.dir, 0o755))
	require.NoError(t, testcerts.WriteServing(f.dir, f.issue(t, "two")))
	require.Eventually(t, func() bool {
		return r.Leaf().Subject.CommonName == "two" && len(r.watcher.WatchList()) == 1
	}, 10*time.Second, 10*time.Millisecond)
}

func TestInvalidPairKeepsServingOld(t *testing.T) {
	f := newFixture(t)
	one, other := f.issue(t, "one"), f.issue(t, "other")
	garbage := []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")

	tests := []struct {
		name    string
		files   map[string][]byte
		wantErr string
	}{
		{"mismatched key", map[string][]byte{"tls.crt": one.CertPEM, "tls.key": other.KeyPEM}, "private key does not match public key"},
		{"garbage certificate", map[string][]byte{"tls.crt": garbage, "tls.key": one.KeyPEM}, "load certificate/key pair"},
		{"empty files", map[string][]byte{"tls.crt": nil, "tls.key": nil}, "failed to find any PEM data"},
		{"key file missing", map[string][]byte{"tls.crt": other.CertPEM}, "read key"},
		{"key where the certificate belongs", map[string][]byte{"tls.crt": one.KeyPEM, "tls.key": one.KeyPEM}, "load certificate/key pair"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, testcerts.WriteServing(dir, one))
			reg := prometheus.NewRegistry()
			r, err := New(Options{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), PollInterval: -1, Registerer: reg, disableWatch: true})
			require.NoError(t, err)
			addr := tlsEcho(t, r)

			require.NoError(t, testcerts.WriteSecretDir(dir, tc.files))
			err = r.Reload()
			require.ErrorContains(t, err, tc.wantErr)

			assert.Equal(t, "one", r.Leaf().Subject.CommonName)
			assert.Equal(t, "one", servedCN(t, f, addr))
			assert.True(t, r.Ready())
			assert.Equal(t, 1.0, testutil.ToFloat64(r.reloads.WithLabelValues("error")))
			assert.Equal(t, float64(one.Cert.NotAfter.Unix()), testutil.ToFloat64(r.expiry))

			// A later valid pair is taken again.
			require.NoError(t, testcerts.WriteServing(dir, other))
			require.NoError(t, r.Reload())
			assert.Equal(t, "other", servedCN(t, f, addr))
			assert.Equal(t, 1.0, testutil.ToFloat64(r.reloads.WithLabelValues("success")))
		})
	}
}

func TestReloadUnchangedIsNoop(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, testcerts.WriteServing(f.dir, f.issue(t, "one")))
	r, err := New(f.opts())
	require.NoError(t, err)
	before := r.current.Load()
	require.NoError(t, r.Reload())
	assert.Same(t, before, r.current.Load())
	assert.Equal(t, 0.0, testutil.ToFloat64(r.reloads.WithLabelValues("success")))
}

func TestNewErrors(t *testing.T) {
	f := newFixture(t)
	one, other := f.issue(t, "one"), f.issue(t, "other")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))
		return p
	}
	crt, key, otherKey := write("a.crt", one.CertPEM), write("a.key", one.KeyPEM), write("b.key", other.KeyPEM)

	tests := []struct {
		name      string
		cert, key string
		wantErr   string
	}{
		{"no paths", "", "", "both a certificate file and a key file are required"},
		{"no key path", crt, "", "both a certificate file and a key file are required"},
		{"missing certificate", filepath.Join(dir, "nope.crt"), key, "read certificate: open " + filepath.Join(dir, "nope.crt")},
		{"missing key", crt, filepath.Join(dir, "nope.key"), "read key: open " + filepath.Join(dir, "nope.key")},
		{"mismatch", crt, otherKey, "private key does not match public key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Options{CertFile: tc.cert, KeyFile: tc.key, disableWatch: true})
			require.ErrorContains(t, err, tc.wantErr)
		})
	}

	r, err := New(Options{CertFile: crt, KeyFile: key, disableWatch: true})
	require.NoError(t, err)
	assert.Equal(t, "one", r.Leaf().Subject.CommonName)
}

// The registry sees both metrics, with both reload series present before the
// first reload; a Reloader without a Registerer registers nothing.
func TestMetricsRegistered(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, testcerts.WriteServing(f.dir, f.issue(t, "one")))
	_, err := New(f.opts())
	require.NoError(t, err)
	n, err := testutil.GatherAndCount(f.reg, "podmeta_certificate_expiry_timestamp_seconds", "podmeta_certificate_reloads_total")
	require.NoError(t, err)
	assert.Equal(t, 3, n) // one gauge, two counter series
	_, err = New(Options{CertFile: f.opts().CertFile, KeyFile: f.opts().KeyFile, disableWatch: true})
	require.NoError(t, err)
}

func TestUniqueDirs(t *testing.T) {
	tests := []struct {
		files []string
		want  []string
	}{
		{[]string{"/a/tls.crt", "/a/tls.key"}, []string{"/a"}},
		{[]string{"/a/tls.crt", "/b/tls.key"}, []string{"/a", "/b"}},
		{[]string{"tls.crt", "./tls.key"}, []string{"."}},
		{[]string{"/a/../b/x", "/b/y"}, []string{"/b"}},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, uniqueDirs(tc.files...), "%v", tc.files)
	}
}

func TestExpiredCertificateIsServedWithWarning(t *testing.T) {
	f := newFixture(t)
	expired, err := f.ca.Issue("old", -30*time.Second)
	require.NoError(t, err)
	require.NoError(t, testcerts.WriteServing(f.dir, expired))
	var logs bytes.Buffer
	o := f.opts()
	o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	r, err := New(o)
	require.NoError(t, err)
	assert.Equal(t, "old", r.Leaf().Subject.CommonName)
	assert.Contains(t, logs.String(), `"level":"WARN","msg":"serving certificate loaded but not valid now"`)
}
