package bus

import (
	"fmt"
	"slices"
)

// Certificate identity (mTLS with client verification).
//
// A client that presents a certificate and no nkey is the user whose name is its
// certificate's subject (nats-server's verify_and_map compares distinguished names). The
// rule: a Ghost's certificate has exactly the subject CN=<ghost id>, OU=ghost, O=edgectl;
// Mirage's CN=mirage, OU=mirage, O=edgectl; the operator's CN=operator, OU=operator,
// O=edgectl. The OU keeps roles apart, so a Ghost whose id is "mirage" or "operator" gets
// no more than a Ghost's permissions. A certificate for ghost-a is the user of ghost-a
// and has ghost-a's permissions only: it cannot act as ghost-b.
const (
	CertOrganization = "edgectl"
	CertUnitGhost    = "ghost"
	CertUnitMirage   = "mirage"
	CertUnitOperator = "operator"
)

// CertSubject is the subject distinguished name of a certificate identity, as nats-server
// derives it (RFC 4514 order, most specific first).
func CertSubject(unit, commonName string) string {
	return "CN=" + commonName + ",OU=" + unit + ",O=" + CertOrganization
}

// GhostCertSubject is the certificate subject of Ghost id: CN=<id>,OU=ghost,O=edgectl.
func GhostCertSubject(id string) string { return CertSubject(CertUnitGhost, id) }

// CheckGhostCert checks that the certificate at path names Ghost id by the rule above
// (subject exactly CN=<id>, OU=ghost, O=edgectl); with any other subject the server would
// refuse the Ghost or map it to someone else. It returns a *TLSFileError.
func CheckGhostCert(path, id string) error {
	certs, err := readCerts(TLSFieldCert, path)
	if err != nil {
		return err
	}
	s := certs[0].Subject
	want := GhostCertSubject(id)
	if s.CommonName != id || !slices.Equal(s.OrganizationalUnit, []string{CertUnitGhost}) ||
		!slices.Equal(s.Organization, []string{CertOrganization}) || len(s.Names) != 3 {
		return &TLSFileError{Field: TLSFieldCert, Path: path,
			Reason: fmt.Sprintf("subject is %q; a Ghost's certificate is its identity and must have the subject %q", s.String(), want)}
	}
	return nil
}
