package opslab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Cert is a self-signed certificate made for a test run.
type Cert struct {
	TLS     tls.Certificate
	CertPEM []byte // for clients that want to trust it (curl --cacert)
}

// SelfSigned makes an ECDSA P-256 certificate for names, valid for a day.
func SelfSigned(names ...string) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("opslab: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("opslab: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"netward lab"}},
		DNSNames:              names,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("opslab: certificate: %w", err)
	}
	return &Cert{
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// ServerConfig is a TLS server config with the certificate. Session
// tickets are off, so a connection's bytes do not depend on whether the
// client reads a ticket it never uses.
func (c *Cert) ServerConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c.TLS}, SessionTicketsDisabled: true}
}

// ClientPool is a pool that trusts only the certificate.
func (c *Cert) ClientPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(c.CertPEM)
	return p
}

// WritePEM writes the certificate to dir/name and returns the path.
func (c *Cert) WritePEM(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, c.CertPEM, 0o644); err != nil {
		return "", fmt.Errorf("opslab: %w", err)
	}
	return p, nil
}
