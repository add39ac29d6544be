package framework

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseKubeletMap(t *testing.T) {
	m, err := ParseKubeletMap("a=\"1\"\npodmeta.io/status=\"{\\\"injected\\\":[\\\"env\\\"]}\"\nx=\"with\\nnewline\"")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"a": "1", "podmeta.io/status": `{"injected":["env"]}`, "x": "with\nnewline"}, m)

	_, err = ParseKubeletMap("noequals")
	assert.Error(t, err)
	_, err = ParseKubeletMap("a=unquoted")
	assert.Error(t, err)
}

func TestServingCert(t *testing.T) {
	caPEM, certPEM, keyPEM, err := ServingCert("svc.ns.svc")
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(caPEM))
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	_, err = leaf.Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: pool})
	assert.NoError(t, err)
}
