package testcerts

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSecretVolumeSwap(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA()
	require.NoError(t, err)

	var serials []string
	for range 3 {
		s, err := ca.Issue()
		require.NoError(t, err)
		require.NoError(t, WriteSecretVolume(dir, ca, s))
		serials = append(serials, s.Serial.String())

		// The top-level names resolve through ..data to the current pair,
		// which loads and verifies against the CA for every host.
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
		require.NoError(t, err)
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		require.NoError(t, err)
		assert.Equal(t, s.Serial, leaf.SerialNumber)
		for _, h := range Hosts {
			_, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: ca.Pool()})
			assert.NoError(t, err, h)
		}
		link, err := os.Readlink(filepath.Join(dir, CertFile))
		require.NoError(t, err)
		assert.Equal(t, filepath.Join("..data", CertFile), link)
	}
	assert.Len(t, uniq(serials), 3, "every issue has a new serial")

	// Old data directories are cleaned up: one timestamped dir, ..data, 3 links.
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 5)
}

func uniq(s []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range s {
		m[v] = true
	}
	return m
}
