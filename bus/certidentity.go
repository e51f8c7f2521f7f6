package bus

import (
	"fmt"
	"slices"

	"github.com/nats-io/nats-server/v2/server"
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

// CertUsers returns the certificate-mapped server users of Ghosts ids, each with its
// own permissions (GhostPermissions). They have no password: nats-server only selects
// them from a verified client certificate, which is why StartServer and SetAuth refuse
// them unless client certificates are verified and mapped.
func CertUsers(ghostIDs []string) []*server.User {
	ids := slices.Clone(ghostIDs)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	users := make([]*server.User, 0, len(ids))
	for _, id := range ids {
		users = append(users, &server.User{Username: GhostCertSubject(id), Permissions: GhostPermissions(id)})
	}
	return users
}

// RoleCertUsers returns the certificate-mapped users of Mirage (MiragePermissions) and the
// operator (full access), for a server where they too connect by certificate. 'miragectl
// up' does not use them: its Mirage is in-process and its operator is an nkey.
func RoleCertUsers() []*server.User {
	return []*server.User{
		{Username: CertSubject(CertUnitMirage, "mirage"), Permissions: MiragePermissions()},
		{Username: CertSubject(CertUnitOperator, "operator")},
	}
}

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
