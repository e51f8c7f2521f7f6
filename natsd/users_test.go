package natsd_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/test/testenv"
)

func TestCertUsers(t *testing.T) {
	users := natsd.CertUsers([]string{"ghost-b", "ghost-a", "ghost-b"})
	if len(users) != 2 || users[0].Username != "CN=ghost-a,OU=ghost,O=edgectl" || users[1].Username != "CN=ghost-b,OU=ghost,O=edgectl" {
		t.Fatalf("CertUsers = %+v", users)
	}
	if !slices.Contains(users[0].Permissions.Subscribe.Allow, "cmd.ghost-a") || slices.Contains(users[0].Permissions.Subscribe.Allow, "cmd.ghost-b") {
		t.Errorf("ghost-a's permissions: %+v", users[0].Permissions.Subscribe.Allow)
	}
	for _, u := range users {
		if u.Password != "" {
			t.Errorf("certificate user %s has a password", u.Username)
		}
	}
	roles := natsd.RoleCertUsers()
	if len(roles) != 2 || roles[0].Username != "CN=mirage,OU=mirage,O=edgectl" || roles[1].Username != "CN=operator,OU=operator,O=edgectl" {
		t.Errorf("RoleCertUsers = %+v", roles)
	}
}

// Certificate users have no password: without client verification and mapping anyone
// could claim one, so the server refuses them.
func TestCertUsersNeedVerification(t *testing.T) {
	pki := testenv.NewPKI(t)
	users := natsd.CertUsers([]string{"ghost-a"})
	for name, cfg := range map[string]natsd.Config{
		"no TLS":         {DontListen: true, StoreDir: t.TempDir(), CertUsers: users},
		"TLS, no verify": {Listen: "127.0.0.1:0", StoreDir: t.TempDir(), CertUsers: users, TLS: new(pki.Server())},
	} {
		ns, err := natsd.Start(cfg)
		if err == nil {
			ns.Shutdown()
			ns.WaitForShutdown()
			t.Fatalf("%s: the server started with certificate users", name)
		}
		if !strings.Contains(err.Error(), "client verification") {
			t.Errorf("%s: %v", name, err)
		}
	}
	ns := startServer(t, natsd.Config{Listen: "127.0.0.1:0", TLS: new(pki.Server())})
	if err := ns.SetAuth(nil, users); err == nil || !strings.Contains(err.Error(), "client verification") {
		t.Errorf("SetAuth with certificate users on a server that does not verify clients: %v", err)
	}
	if !ns.TLSRequired() || ns.AuthRequired() {
		t.Errorf("TLSRequired=%v AuthRequired=%v, want true, false", ns.TLSRequired(), ns.AuthRequired())
	}
}
