// Command servingcert writes a CA and a TLS serving certificate signed by it
// for the DNS names given, so the podmeta webhook can be installed with the
// chart's certificates.mode=secret on a cluster without cert-manager (the
// local harness). An existing, still valid set for the same names is kept, so
// redeploying does not change the webhook's caBundle.
//
//	servingcert -dir DIR -dns podmeta.podmeta-system.svc [-dns ...]
//
// writes DIR/ca.crt, DIR/tls.crt and DIR/tls.key.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(os.Args[1:], time.Now()); err != nil {
		fmt.Fprintln(os.Stderr, "servingcert:", err)
		os.Exit(1)
	}
}

func run(args []string, now time.Time) error {
	fs := flag.NewFlagSet("servingcert", flag.ContinueOnError)
	dir := fs.String("dir", "", "output directory")
	validity := fs.Duration("validity", 365*24*time.Hour, "lifetime of the certificates")
	var dns list
	fs.Var(&dns, "dns", "DNS name of the serving certificate (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || len(dns) == 0 {
		return errors.New("-dir and at least one -dns are required")
	}
	if valid(*dir, dns, now) {
		return nil
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	return generate(*dir, dns, now, *validity)
}

// valid reports whether dir already holds a certificate for exactly these
// names, signed by the ca.crt beside it, valid for at least another day.
func valid(dir string, dns []string, now time.Time) bool {
	ca, err := readCert(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return false
	}
	leaf, err := readCert(filepath.Join(dir, "tls.crt"))
	if err != nil {
		return false
	}
	if _, err := os.Stat(filepath.Join(dir, "tls.key")); err != nil {
		return false
	}
	if !slices.Equal(leaf.DNSNames, dns) || now.Add(24*time.Hour).After(leaf.NotAfter) {
		return false
	}
	return leaf.CheckSignatureFrom(ca) == nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM data", path)
	}
	return x509.ParseCertificate(block.Bytes)
}

func generate(dir string, dns []string, now time.Time, validity time.Duration) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := template("podmeta-webhook-ca", now, validity)
	caTmpl.IsCA = true
	caTmpl.BasicConstraintsValid = true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := template(dns[0], now, validity)
	tmpl.DNSNames = dns
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		typ  string
		der  []byte
		mode os.FileMode
	}{
		{"ca.crt", "CERTIFICATE", caDER, 0o644},
		{"tls.crt", "CERTIFICATE", der, 0o644},
		{"tls.key", "PRIVATE KEY", keyDER, 0o600},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return nil
}

func template(cn string, now time.Time, validity time.Duration) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour), // tolerate small clock differences
		NotAfter:     now.Add(validity),
	}
}
