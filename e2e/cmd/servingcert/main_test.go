package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestServingCertVerifiesAgainstItsCA(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	require.NoError(t, run([]string{"-dir", dir, "-dns", "podmeta.podmeta-system.svc", "-dns", "podmeta"}, now))

	_, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	require.NoError(t, err, "tls.crt and tls.key form a pair")
	ca, err := readCert(filepath.Join(dir, "ca.crt"))
	require.NoError(t, err)
	leaf, err := readCert(filepath.Join(dir, "tls.crt"))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	_, err = leaf.Verify(x509.VerifyOptions{DNSName: "podmeta.podmeta-system.svc", Roots: pool, CurrentTime: now})
	assert.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{DNSName: "other.podmeta-system.svc", Roots: pool, CurrentTime: now})
	assert.Error(t, err, "a name not asked for must not verify")
	st, err := os.Stat(filepath.Join(dir, "tls.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

func TestServingCertReusedOnlyWhileItFits(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	args := []string{"-dir", dir, "-dns", "a.ns.svc"}
	require.NoError(t, run(args, now))
	first, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	require.NoError(t, err)

	require.NoError(t, run(args, now.Add(time.Hour)))
	again, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	assert.Equal(t, first, again, "same names, still valid: the CA (and so the caBundle) is kept")

	require.NoError(t, run([]string{"-dir", dir, "-dns", "b.ns.svc"}, now))
	changed, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	assert.NotEqual(t, first, changed, "other names: a new set")

	dir = t.TempDir()
	require.NoError(t, run([]string{"-dir", dir, "-dns", "b.ns.svc", "-validity", "1h"}, now))
	short, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	require.NoError(t, run([]string{"-dir", dir, "-dns", "b.ns.svc"}, now))
	renewed, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	assert.NotEqual(t, short, renewed, "a certificate expiring within a day is replaced")
}

func TestServingCertUsage(t *testing.T) {
	assert.Error(t, run([]string{"-dns", "x"}, time.Now()))
	assert.Error(t, run([]string{"-dir", t.TempDir()}, time.Now()))
}
