// Package pki writes the certificates, keys and kubeconfigs of the local test
// cluster: one CA signs everything, as kubeadm does, so every component and
// every in-pod client verifies with the same ca.crt.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options describe the cluster the certificates are for.
type Options struct {
	Dir         string   // output directory, created if missing
	ClusterName string   // kubeconfig cluster/context name
	NodeName    string   // kubelet's node name (system:node:<NodeName>)
	NodeIP      net.IP   // node and advertise address (on the cluster bridge)
	ServiceIP   net.IP   // first IP of the Service CIDR: the "kubernetes" Service
	ExtraIPs    []net.IP // more addresses the apiserver answers on (e.g. the host-facing one)
	InternalURL string   // apiserver URL for components on the node
	ExternalURL string   // apiserver URL written into admin.kubeconfig
	Validity    time.Duration
	now         func() time.Time
}

// Client is one kubeconfig to write: file name and the identity it carries.
type client struct {
	file, cn string
	orgs     []string
	url      string
}

// Generate writes ca.{crt,key}, apiserver.{crt,key}, apiserver-kubelet-client.{crt,key},
// kubelet.{crt,key} (serving), sa.{key,pub} and the kubeconfigs admin,
// controller-manager, scheduler, kubelet and kube-proxy.
func Generate(o Options) error {
	if o.NodeName == "" || o.NodeIP == nil || o.ServiceIP == nil || o.InternalURL == "" || o.ExternalURL == "" {
		return errors.New("pki: NodeName, NodeIP, ServiceIP, InternalURL and ExternalURL are required")
	}
	if o.ClusterName == "" {
		o.ClusterName = "podmeta"
	}
	if o.Validity == 0 {
		o.Validity = 30 * 24 * time.Hour
	}
	if o.now == nil {
		o.now = time.Now
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	ca, caKey, err := o.newCA()
	if err != nil {
		return err
	}
	if err := o.writePair("ca", ca, caKey); err != nil {
		return err
	}
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1), o.NodeIP, o.ServiceIP}, o.ExtraIPs...)
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := o.issue(ca, caKey, "apiserver", "kube-apiserver", nil, dns, ips, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	if err := o.issue(ca, caKey, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
		return err
	}
	if err := o.issue(ca, caKey, "kubelet", o.NodeName, nil, []string{o.NodeName, "localhost"}, []net.IP{o.NodeIP, net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	if err := o.serviceAccountKeys(); err != nil {
		return err
	}
	clients := []client{
		{"admin", "kubernetes-admin", []string{"system:masters"}, o.ExternalURL},
		{"controller-manager", "system:kube-controller-manager", nil, o.InternalURL},
		{"scheduler", "system:kube-scheduler", nil, o.InternalURL},
		{"kubelet", "system:node:" + o.NodeName, []string{"system:nodes"}, o.InternalURL},
		{"kube-proxy", "system:kube-proxy", nil, o.InternalURL},
	}
	caPEM := pemCert(ca)
	for _, c := range clients {
		cert, key, err := o.sign(ca, caKey, c.cn, c.orgs, nil, nil, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return err
		}
		if err := o.writeKubeconfig(c, caPEM, cert, key); err != nil {
			return err
		}
	}
	return nil
}

func (o Options) newCA() (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA key: %w", err)
	}
	tmpl := o.template(o.ClusterName + "-ca")
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	return cert, key, nil
}

func (o Options) template(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	now := o.now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour), // tolerate small clock differences
		NotAfter:     now.Add(o.Validity),
	}
}

func (o Options) sign(ca *x509.Certificate, caKey crypto.Signer, cn string, orgs, dns []string, ips []net.IP, usage x509.ExtKeyUsage) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: key for %s: %w", cn, err)
	}
	tmpl := o.template(cn)
	tmpl.Subject.Organization = orgs
	tmpl.DNSNames = dns
	tmpl.IPAddresses = ips
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: certificate for %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: certificate for %s: %w", cn, err)
	}
	return cert, key, nil
}

func (o Options) issue(ca *x509.Certificate, caKey crypto.Signer, name, cn string, orgs, dns []string, ips []net.IP, usage x509.ExtKeyUsage) error {
	cert, key, err := o.sign(ca, caKey, cn, orgs, dns, ips, usage)
	if err != nil {
		return err
	}
	return o.writePair(name, cert, key)
}

func (o Options) writePair(name string, cert *x509.Certificate, key crypto.Signer) error {
	keyPEM, err := pemKey(key)
	if err != nil {
		return fmt.Errorf("pki: %s key: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(o.Dir, name+".crt"), pemCert(cert), 0o644); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.WriteFile(filepath.Join(o.Dir, name+".key"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// serviceAccountKeys writes the key pair that signs ServiceAccount tokens.
// RSA because every token consumer supports RS256.
func (o Options) serviceAccountKeys() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("pki: service account key: %w", err)
	}
	keyPEM, err := pemKey(key)
	if err != nil {
		return fmt.Errorf("pki: service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("pki: service account public key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(o.Dir, "sa.key"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.WriteFile(filepath.Join(o.Dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

func (o Options) writeKubeconfig(c client, caPEM []byte, cert *x509.Certificate, key crypto.Signer) error {
	keyPEM, err := pemKey(key)
	if err != nil {
		return fmt.Errorf("pki: %s key: %w", c.file, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[o.ClusterName] = &clientcmdapi.Cluster{Server: c.url, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[c.cn] = &clientcmdapi.AuthInfo{ClientCertificateData: pemCert(cert), ClientKeyData: keyPEM}
	cfg.Contexts[o.ClusterName] = &clientcmdapi.Context{Cluster: o.ClusterName, AuthInfo: c.cn}
	cfg.CurrentContext = o.ClusterName
	if err := clientcmd.WriteToFile(*cfg, filepath.Join(o.Dir, c.file+".kubeconfig")); err != nil {
		return fmt.Errorf("pki: %s kubeconfig: %w", c.file, err)
	}
	return nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pemKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
