package pki

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/tools/clientcmd"
)

func testOptions(t *testing.T) Options {
	return Options{
		Dir:         t.TempDir(),
		ClusterName: "test",
		NodeName:    "test-node",
		NodeIP:      net.ParseIP("10.233.7.1"),
		ServiceIP:   net.ParseIP("10.96.0.1"),
		ExtraIPs:    []net.IP{net.ParseIP("10.233.6.2")},
		InternalURL: "https://10.233.7.1:6443",
		ExternalURL: "https://10.233.6.2:6443",
	}
}

func readCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(data)
	require.NotNil(t, b, "no PEM block")
	c, err := x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	return c
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	require.NoError(t, err)
	return b
}

func TestGenerateServingCertsVerifyForEveryNameClientsUse(t *testing.T) {
	o := testOptions(t)
	require.NoError(t, Generate(o))
	ca := readCert(t, readFile(t, o.Dir, "ca.crt"))
	assert.True(t, ca.IsCA)
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	api := readCert(t, readFile(t, o.Dir, "apiserver.crt"))
	// In-pod clients use the Service IP or kubernetes.default.svc; the
	// host uses the extra IP; node components the node IP or 127.0.0.1.
	for _, name := range []string{"10.96.0.1", "10.233.7.1", "10.233.6.2", "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		_, err := api.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		assert.NoError(t, err, "apiserver cert for %s", name)
	}
	_, err := api.Verify(x509.VerifyOptions{DNSName: "10.0.0.1", Roots: roots})
	assert.Error(t, err, "an address not asked for must not verify")

	kubelet := readCert(t, readFile(t, o.Dir, "kubelet.crt"))
	_, err = kubelet.Verify(x509.VerifyOptions{DNSName: "10.233.7.1", Roots: roots})
	assert.NoError(t, err, "the apiserver verifies the kubelet at the node IP")

	kc := readCert(t, readFile(t, o.Dir, "apiserver-kubelet-client.crt"))
	assert.Equal(t, []string{"system:masters"}, kc.Subject.Organization)
	_, err = kc.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.NoError(t, err)
}

func TestGenerateKubeconfigsCarryTheRightIdentities(t *testing.T) {
	o := testOptions(t)
	require.NoError(t, Generate(o))
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, readFile(t, o.Dir, "ca.crt")))
	for _, tc := range []struct {
		file, cn, org, server string
	}{
		{"admin", "kubernetes-admin", "system:masters", o.ExternalURL},
		{"controller-manager", "system:kube-controller-manager", "", o.InternalURL},
		{"scheduler", "system:kube-scheduler", "", o.InternalURL},
		{"kubelet", "system:node:test-node", "system:nodes", o.InternalURL},
		{"kube-proxy", "system:kube-proxy", "", o.InternalURL},
	} {
		t.Run(tc.file, func(t *testing.T) {
			cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(o.Dir, tc.file+".kubeconfig"))
			require.NoError(t, err)
			assert.Equal(t, tc.server, cfg.Host)
			cert := readCert(t, cfg.CertData)
			assert.Equal(t, tc.cn, cert.Subject.CommonName)
			if tc.org != "" {
				assert.Equal(t, []string{tc.org}, cert.Subject.Organization)
			} else {
				assert.Empty(t, cert.Subject.Organization)
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			assert.NoError(t, err)
			assert.Equal(t, readFile(t, o.Dir, "ca.crt"), cfg.CAData)
		})
	}
}

func TestGenerateServiceAccountKeysMatch(t *testing.T) {
	o := testOptions(t)
	require.NoError(t, Generate(o))
	kb, _ := pem.Decode(readFile(t, o.Dir, "sa.key"))
	require.NotNil(t, kb)
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	require.NoError(t, err)
	pb, _ := pem.Decode(readFile(t, o.Dir, "sa.pub"))
	require.NotNil(t, pb)
	pub, err := x509.ParsePKIXPublicKey(pb.Bytes)
	require.NoError(t, err)
	rsaKey, ok := key.(*rsa.PrivateKey)
	require.True(t, ok, "sa.key is RSA (RS256 is what every token consumer supports)")
	assert.True(t, rsaKey.PublicKey.Equal(pub), "sa.pub is the public half of sa.key")
	st, err := os.Stat(filepath.Join(o.Dir, "sa.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "private keys are not world-readable")
}

func TestGenerateValidity(t *testing.T) {
	o := testOptions(t)
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	o.now = func() time.Time { return now }
	o.Validity = 48 * time.Hour
	require.NoError(t, Generate(o))
	c := readCert(t, readFile(t, o.Dir, "apiserver.crt"))
	assert.Equal(t, now.Add(-time.Hour), c.NotBefore)
	assert.Equal(t, now.Add(48*time.Hour), c.NotAfter)
}

func TestGenerateRequiresTheClusterAddresses(t *testing.T) {
	o := testOptions(t)
	o.NodeIP = nil
	assert.ErrorContains(t, Generate(o), "NodeIP")
}
