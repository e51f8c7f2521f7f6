package natsd

import (
	"slices"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
)

// Users returns the nkey users of a fleet: the operator (full access: the administrator)
// and Mirage in account EDGE, and each enrolled Ghost with its own permissions in account
// EDGE_GHOSTS (accounts.go).
func Users(operator, mirage string, ghosts map[string]string) []*server.NkeyUser {
	users := []*server.NkeyUser{
		{Nkey: operator, Account: inAccount(AccountEdge)},
		{Nkey: mirage, Permissions: MiragePermissions(), Account: inAccount(AccountEdge)},
	}
	for id, pub := range ghosts {
		users = append(users, &server.NkeyUser{Nkey: pub, Permissions: GhostPermissions(id), Account: inAccount(AccountGhosts)})
	}
	return users
}

// CertUsers returns the certificate-mapped server users of Ghosts ids, each with its
// own permissions (GhostPermissions), in account EDGE_GHOSTS. They have no password: nats-server only selects
// them from a verified client certificate, which is why Start and Server.SetAuth refuse
// them unless client certificates are verified and mapped.
func CertUsers(ghostIDs []string) []*server.User {
	ids := slices.Clone(ghostIDs)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	users := make([]*server.User, 0, len(ids))
	for _, id := range ids {
		users = append(users, &server.User{Username: bus.GhostCertSubject(id), Permissions: GhostPermissions(id), Account: inAccount(AccountGhosts)})
	}
	return users
}

// RoleCertUsers returns the certificate-mapped users of Mirage (MiragePermissions) and the
// operator (full access), for a server where they too connect by certificate. 'miragectl
// up' does not use them: its Mirage is in-process and its operator is an nkey.
func RoleCertUsers() []*server.User {
	return []*server.User{
		{Username: bus.CertSubject(bus.CertUnitMirage, "mirage"), Permissions: MiragePermissions(), Account: inAccount(AccountEdge)},
		{Username: bus.CertSubject(bus.CertUnitOperator, "operator"), Account: inAccount(AccountEdge)},
	}
}
