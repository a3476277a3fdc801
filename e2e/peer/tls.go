package peer

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

// Cert is a self-signed certificate made for a test run. It is its own
// CA, so a client trusts the server by trusting CertPEM alone.
type Cert struct {
	TLS     tls.Certificate
	CertPEM []byte // for clients that want to trust it (curl --cacert)
	KeyPEM  []byte // for servers that read files (openssl s_server -key)
}

// SelfSigned makes an ECDSA P-256 certificate for names (the first is
// also its common name), valid for a day.
func SelfSigned(names ...string) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("peer: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("peer: serial: %w", err)
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
		return nil, fmt.Errorf("peer: certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("peer: certificate key: %w", err)
	}
	return &Cert{
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
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
		return "", fmt.Errorf("peer: %w", err)
	}
	return p, nil
}

// WriteCert makes a SelfSigned certificate for name and writes it and its
// key as PEM files into dir (name.crt, name.key), for ServerTLS and
// ClientTLS in another process.
func WriteCert(dir, name string) (certFile, keyFile string, err error) {
	c, err := SelfSigned(name)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.TLS.PrivateKey)
	if err != nil {
		return "", "", fmt.Errorf("peer: key: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, c.CertPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("peer: %w", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", fmt.Errorf("peer: %w", err)
	}
	return certFile, keyFile, nil
}

// ServerTLS is the server side of a WriteCert pair. Session tickets are
// off: every connection is a full handshake even for a client that would
// resume.
func ServerTLS(certFile, keyFile string) (*tls.Config, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, SessionTicketsDisabled: true}, nil
}

// ClientTLS is a client config that sends sni and trusts only caFile (a
// WriteCert certificate). It keeps no session cache, so every connection
// is a full handshake.
func ClientTLS(caFile, sni string) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("peer: no certificate in %s", caFile)
	}
	return &tls.Config{ServerName: sni, RootCAs: pool}, nil
}
