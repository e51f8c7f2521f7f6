package bus_test

import (
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/test/testenv"
)

func TestTLSFilesCheck(t *testing.T) {
	pki := testenv.NewPKI(t)
	srv := pki.Server()
	other := testenv.NewPKI(t).Server()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	openKey := filepath.Join(dir, "open-key.pem")
	data, err := os.ReadFile(srv.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(openKey, data, 0o644); err != nil {
		t.Fatal(err)
	}
	expired := pki.Expired(pkix.Name{CommonName: "old"})

	tests := []struct {
		name   string
		files  bus.TLSFiles
		server bool
		field  string // "" when valid
		want   string
	}{
		{"client CA only", bus.TLSFiles{CA: pki.CA}, false, "", ""},
		{"client with certificate", pki.Ghost("ghost-a"), false, "", ""},
		{"server", srv, true, "", ""},
		{"server verifying clients", bus.TLSFiles{Cert: srv.Cert, Key: srv.Key, CA: pki.CA, VerifyClients: true}, true, "", ""},
		{"CA missing", bus.TLSFiles{CA: missing}, false, bus.TLSFieldCA, missing + ": cannot read: no such file"},
		{"CA not PEM", bus.TLSFiles{CA: garbage}, false, bus.TLSFieldCA, garbage + ": holds no PEM certificate"},
		{"certificate without key", bus.TLSFiles{Cert: srv.Cert}, false, bus.TLSFieldKey, "without its private key"},
		{"key without certificate", bus.TLSFiles{Key: srv.Key}, false, bus.TLSFieldCert, "without its certificate"},
		{"certificate missing", bus.TLSFiles{Cert: missing, Key: srv.Key}, false, bus.TLSFieldCert, missing},
		{"certificate not PEM", bus.TLSFiles{Cert: garbage, Key: srv.Key}, false, bus.TLSFieldCert, garbage},
		{"key of another certificate", bus.TLSFiles{Cert: srv.Cert, Key: other.Key}, false, bus.TLSFieldKey, "not the private key of certificate " + srv.Cert},
		{"key readable by others", bus.TLSFiles{Cert: srv.Cert, Key: openKey}, false, bus.TLSFieldKey, "chmod 600 " + openKey},
		{"expired certificate", expired, false, bus.TLSFieldCert, "expired on"},
		{"server without certificate", bus.TLSFiles{CA: pki.CA}, true, bus.TLSFieldCert, "a TLS server needs a certificate"},
		{"server without key", bus.TLSFiles{Cert: srv.Cert}, true, bus.TLSFieldKey, "a TLS server needs a private key"},
		{"verify without CA", bus.TLSFiles{Cert: srv.Cert, Key: srv.Key, VerifyClients: true}, true, bus.TLSFieldCA, "verifying client certificates needs the CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := tt.files.CheckClient
			if tt.server {
				check = tt.files.CheckServer
			}
			err := check()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("valid files refused: %v", err)
				}
				return
			}
			var fe *bus.TLSFileError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *TLSFileError", err)
			}
			if fe.Field != tt.field || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q (field %s), want field %s mentioning %q", err, fe.Field, tt.field, tt.want)
			}
		})
	}
	var fe *bus.TLSFileError
	err = bus.TLSFiles{Cert: srv.Cert, Key: openKey}.CheckClient()
	if !errors.As(err, &fe) || !errors.Is(err, bus.ErrKeyPermissions) {
		t.Errorf("an open key file: %v, want ErrKeyPermissions", err)
	}
}

func TestPlaintextURLs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"tls://a:4222", nil},
		{"tls://a:4222, tls://b:4222", nil},
		{"wss://a:443", nil},
		{"nats://a:4222", []string{"nats://a:4222"}},
		{"tls://a:4222,nats://u:secret@b:4222", []string{"nats://***@b:4222"}},
		{"a:4222", []string{"a:4222"}},
	}
	for _, tt := range tests {
		if got := bus.PlaintextURLs(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("PlaintextURLs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCertIdentity(t *testing.T) {
	if got := bus.GhostCertSubject("ghost-a"); got != "CN=ghost-a,OU=ghost,O=edgectl" {
		t.Errorf("GhostCertSubject = %q", got)
	}
	pki := testenv.NewPKI(t)
	if err := bus.CheckGhostCert(pki.Ghost("ghost-a").Cert, "ghost-a"); err != nil {
		t.Errorf("ghost-a's own certificate: %v", err)
	}
	for name, subject := range map[string]pkix.Name{
		"another ghost": {CommonName: "ghost-b", OrganizationalUnit: []string{"ghost"}, Organization: []string{"edgectl"}},
		"no OU":         {CommonName: "ghost-a", Organization: []string{"edgectl"}},
		"mirage role":   {CommonName: "ghost-a", OrganizationalUnit: []string{"mirage"}, Organization: []string{"edgectl"}},
		"extra field":   {CommonName: "ghost-a", OrganizationalUnit: []string{"ghost"}, Organization: []string{"edgectl"}, Country: []string{"NL"}},
	} {
		err := bus.CheckGhostCert(pki.Client(subject).Cert, "ghost-a")
		if err == nil || !strings.Contains(err.Error(), `"CN=ghost-a,OU=ghost,O=edgectl"`) {
			t.Errorf("%s: %v, want a refusal naming the expected subject", name, err)
		}
	}
}
