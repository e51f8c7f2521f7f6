package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
)

// TLS makes the server require TLS with these files (with Listen).
func TLS(files bus.TLSFiles) Option { return func(o *options) { o.tls = &files } }

// CertUsers sets the users verified client certificates map to (with TLS VerifyClients).
func CertUsers(u []*server.User) Option { return func(o *options) { o.certs = u } }

// PKI is a certificate authority made for one test: its CA file, and the certificates
// and keys it signs, as PEM files (keys mode 0600) in a temp dir.
type PKI struct {
	t    testing.TB
	dir  string
	CA   string // path of the CA certificate
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	n    int64
}

// NewPKI makes a CA (ECDSA P-256, valid for a day).
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{t: t, dir: t.TempDir()}
	p.key = p.newKey()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "edgectl test CA", Organization: []string{"edgectl"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	if p.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.CA = p.write("ca.pem", "CERTIFICATE", der, 0o644)
	return p
}

// Server issues the server's certificate: CN localhost, SANs localhost and 127.0.0.1.
func (p *PKI) Server() bus.TLSFiles {
	p.t.Helper()
	cert, key := p.issue("server", pkix.Name{CommonName: "localhost"}, x509.ExtKeyUsageServerAuth, func(c *x509.Certificate) {
		c.DNSNames = []string{"localhost"}
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	})
	return bus.TLSFiles{Cert: cert, Key: key, CA: p.CA}
}

// Client issues a client certificate with this subject; the files include the CA.
func (p *PKI) Client(subject pkix.Name) bus.TLSFiles {
	p.t.Helper()
	cert, key := p.issue("client", subject, x509.ExtKeyUsageClientAuth, nil)
	return bus.TLSFiles{Cert: cert, Key: key, CA: p.CA}
}

// Ghost issues Ghost id's certificate by edgectl's rule: CN=<id>, OU=ghost, O=edgectl.
func (p *PKI) Ghost(id string) bus.TLSFiles {
	return p.Client(pkix.Name{CommonName: id, OrganizationalUnit: []string{bus.CertUnitGhost}, Organization: []string{bus.CertOrganization}})
}

// Expired issues a client certificate that expired an hour ago.
func (p *PKI) Expired(subject pkix.Name) bus.TLSFiles {
	p.t.Helper()
	cert, key := p.issue("expired", subject, x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
	})
	return bus.TLSFiles{Cert: cert, Key: key, CA: p.CA}
}

func (p *PKI) issue(name string, subject pkix.Name, usage x509.ExtKeyUsage, adjust func(*x509.Certificate)) (certPath, keyPath string) {
	p.t.Helper()
	p.n++
	key := p.newKey()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.n + 1),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if adjust != nil {
		adjust(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	base := name + "-" + big.NewInt(p.n).String()
	return p.write(base+".pem", "CERTIFICATE", der, 0o644), p.write(base+"-key.pem", "EC PRIVATE KEY", keyDER, 0o600)
}

func (p *PKI) newKey() *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	return key
}

func (p *PKI) write(name, typ string, der []byte, mode os.FileMode) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		p.t.Fatal(err)
	}
	return path
}
