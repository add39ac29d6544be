// Package testcerts issues throwaway serving certificates for load and fault
// runs and writes them the way kubelet updates a Secret volume, so the
// webhook's reload path is exercised exactly as in a cluster.
package testcerts

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Hosts are the names the issued serving certificates are valid for:
// loopback only, like every target of the load tool.
var Hosts = []string{"localhost", "127.0.0.1", "::1"}

// File names inside a kubernetes.io/tls Secret volume.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	CAFile   = "ca.crt"
)

// CA is a self-signed certificate authority, the role cert-manager's CA
// Issuer plays in a cluster: rotations re-issue the serving certificate
// under the same CA, so clients keep trusting the server.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
	PEM  []byte
}

// NewCA creates a CA valid for a day.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "podmeta loadtest CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Pool returns a pool trusting only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Serving is an issued serving certificate and its key, PEM-encoded.
type Serving struct {
	CertPEM, KeyPEM []byte
	Serial          *big.Int
}

// Issue signs a fresh key for Hosts, valid for a day.
func (ca *CA) Issue() (*Serving, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "podmeta-webhook"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode serving key: %w", err)
	}
	return &Serving{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Serial:  serial,
	}, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return s, nil
}

// dataLink is the symlink kubelet swaps to update a Secret volume at once.
const dataLink = "..data"

// WriteSecretVolume makes dir look like a kubernetes.io/tls Secret volume
// holding s and the CA, or updates it the way kubelet's atomic writer does:
// the files go into a new timestamped directory, a temporary symlink to it
// is renamed over ..data (one atomic rename), and the old directory is
// removed. The top-level tls.crt etc. are symlinks through ..data, so a
// reader sees either the old or the new pair, never a mix.
func WriteSecretVolume(dir string, ca *CA, s *Serving) error {
	ts := filepath.Join(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05.000000000"))
	if err := os.MkdirAll(ts, 0o755); err != nil {
		return fmt.Errorf("write secret volume: %w", err)
	}
	for name, data := range map[string][]byte{CertFile: s.CertPEM, KeyFile: s.KeyPEM, CAFile: ca.PEM} {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o600); err != nil {
			return fmt.Errorf("write secret volume: %w", err)
		}
	}
	old, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("write secret volume: %w", err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return fmt.Errorf("write secret volume: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		return fmt.Errorf("write secret volume: swap %s: %w", dataLink, err)
	}
	for _, name := range []string{CertFile, KeyFile, CAFile} {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join(dataLink, name), link); err != nil {
				return fmt.Errorf("write secret volume: %w", err)
			}
		}
	}
	if old != "" && old != filepath.Base(ts) {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			return fmt.Errorf("write secret volume: remove old data: %w", err)
		}
	}
	return nil
}
