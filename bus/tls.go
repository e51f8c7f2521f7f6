package bus

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// TLS file roles, as TLSFileError.Field names them; a config key is "tls_" + Field and a
// flag "--tls-" + Field.
const (
	TLSFieldCert = "cert"
	TLSFieldKey  = "key"
	TLSFieldCA   = "ca"
)

// TLSFiles are the PEM files of one side of a TLS connection.
//
// On a server: Cert and Key are its certificate; with VerifyClients every client must
// present a certificate signed by CA (mTLS), and a client that sends no nkey is identified
// by its certificate's subject (nats-server's verify_and_map, see natsd.CertUsers).
// On a client: CA verifies the server (default: the system roots); Cert and Key are the
// client certificate presented to a server that verifies clients.
type TLSFiles struct {
	Cert, Key, CA string
	VerifyClients bool
}

// TLSFileError names the TLS file that is missing, unreadable or invalid.
type TLSFileError struct {
	Field  string // TLSFieldCert, TLSFieldKey or TLSFieldCA
	Path   string
	Reason string
	Err    error // the underlying error, if any
}

func (e *TLSFileError) Error() string {
	what := map[string]string{TLSFieldCert: "certificate", TLSFieldKey: "private key", TLSFieldCA: "CA"}[e.Field]
	if e.Path == "" {
		return fmt.Sprintf("TLS %s: %s", what, e.Reason)
	}
	return fmt.Sprintf("TLS %s %s: %s", what, e.Path, e.Reason)
}

func (e *TLSFileError) Unwrap() error { return e.Err }

// Enabled reports whether any TLS file is set.
func (f TLSFiles) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// CheckClient validates the files of a client: a readable CA, and a certificate with its
// key (both or neither) that belong together. It returns a *TLSFileError.
func (f TLSFiles) CheckClient() error {
	if f.CA != "" {
		if _, err := readCerts(TLSFieldCA, f.CA); err != nil {
			return err
		}
	}
	switch {
	case f.Cert == "" && f.Key == "":
		return nil
	case f.Cert == "":
		return &TLSFileError{Field: TLSFieldCert, Reason: "missing: a private key was given without its certificate"}
	case f.Key == "":
		return &TLSFileError{Field: TLSFieldKey, Reason: "missing: a certificate was given without its private key"}
	}
	_, err := loadPair(f.Cert, f.Key)
	return err
}

// CheckServer validates the files of a server: a certificate and key are required, and a
// CA when clients are verified.
func (f TLSFiles) CheckServer() error {
	if f.Cert == "" {
		return &TLSFileError{Field: TLSFieldCert, Reason: "missing: a TLS server needs a certificate"}
	}
	if f.Key == "" {
		return &TLSFileError{Field: TLSFieldKey, Reason: "missing: a TLS server needs a private key"}
	}
	if f.VerifyClients && f.CA == "" {
		return &TLSFileError{Field: TLSFieldCA, Reason: "missing: verifying client certificates needs the CA that signs them"}
	}
	return f.CheckClient()
}

// ClientOptions returns the nats options of a TLS client: the CA that verifies the server
// and the client certificate, when given. The files are re-read on every (re)connect, so
// a renewed certificate is picked up without a restart.
func (f TLSFiles) ClientOptions() ([]nats.Option, error) {
	if err := f.CheckClient(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	if f.CA != "" {
		opts = append(opts, nats.RootCAs(f.CA))
	}
	if f.Cert != "" {
		opts = append(opts, nats.ClientCert(f.Cert, f.Key))
	}
	return opts, nil
}

// PlaintextURLs returns the URLs of a comma-separated server list that are not TLS
// (anything but tls:// and wss://).
func PlaintextURLs(servers string) []string {
	var out []string
	for _, s := range strings.Split(servers, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "tls" && u.Scheme != "wss") {
			out = append(out, redact(s))
		}
	}
	return out
}

// readCerts reads the PEM certificates of a file; it refuses a file with none.
func readCerts(field, path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &TLSFileError{Field: field, Path: path, Reason: "cannot read: " + pathErr(err), Err: err}
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, &TLSFileError{Field: field, Path: path, Reason: "not a valid certificate: " + err.Error(), Err: err}
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, &TLSFileError{Field: field, Path: path, Reason: "holds no PEM certificate"}
	}
	return certs, nil
}

// loadPair reads a certificate and its private key, refusing a key file readable by group
// or others (as for nkeys) and an expired or not yet valid certificate.
func loadPair(certPath, keyPath string) (*x509.Certificate, error) {
	certs, err := readCerts(TLSFieldCert, certPath)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(keyPath)
	if err != nil {
		return nil, &TLSFileError{Field: TLSFieldKey, Path: keyPath, Reason: "cannot read: " + pathErr(err), Err: err}
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &TLSFileError{Field: TLSFieldKey, Path: keyPath, Err: ErrKeyPermissions,
			Reason: fmt.Sprintf("%v: mode %04o; it holds a private key, run: chmod 600 %s", ErrKeyPermissions, st.Mode().Perm(), keyPath)}
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, &TLSFileError{Field: TLSFieldCert, Path: certPath, Reason: "cannot read: " + pathErr(err), Err: err}
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, &TLSFileError{Field: TLSFieldKey, Path: keyPath, Reason: "cannot read: " + pathErr(err), Err: err}
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		// The key's bytes never reach the message: crypto/tls reports only what is wrong.
		return nil, &TLSFileError{Field: TLSFieldKey, Path: keyPath, Reason: "not the private key of certificate " + certPath + ": " + err.Error(), Err: err}
	}
	leaf := certs[0]
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return nil, &TLSFileError{Field: TLSFieldCert, Path: certPath, Reason: "expired on " + leaf.NotAfter.UTC().Format(time.RFC3339)}
	case now.Before(leaf.NotBefore):
		return nil, &TLSFileError{Field: TLSFieldCert, Path: certPath, Reason: "not valid before " + leaf.NotBefore.UTC().Format(time.RFC3339)}
	}
	return leaf, nil
}

// pathErr is an os error without the path, which TLSFileError already names.
func pathErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
