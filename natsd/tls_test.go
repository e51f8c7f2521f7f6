package natsd_test

import (
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/test/testenv"
)

func TestApplyTLS(t *testing.T) {
	pki := testenv.NewPKI(t)
	srv := pki.Server()
	var o server.Options
	if err := natsd.ApplyTLS(&o, srv); err != nil {
		t.Fatal(err)
	}
	if !o.TLS || o.TLSConfig == nil || o.TLSVerify || o.TLSMap || o.TLSTimeout != natsd.TLSTimeout.Seconds() {
		t.Errorf("TLS options: TLS=%v config=%v verify=%v map=%v timeout=%v", o.TLS, o.TLSConfig != nil, o.TLSVerify, o.TLSMap, o.TLSTimeout)
	}
	srv.VerifyClients = true
	o = server.Options{}
	if err := natsd.ApplyTLS(&o, srv); err != nil {
		t.Fatal(err)
	}
	if !o.TLSVerify || !o.TLSMap || o.TLSConfig.ClientCAs == nil {
		t.Errorf("mTLS options: verify=%v map=%v client CAs=%v", o.TLSVerify, o.TLSMap, o.TLSConfig.ClientCAs != nil)
	}
	if err := natsd.ApplyTLS(&server.Options{}, bus.TLSFiles{CA: pki.CA}); err == nil {
		t.Error("a server without a certificate was configured")
	}
}

// A server reachable from other hosts must authenticate its clients.
func TestStartNonLoopbackNeedsAuth(t *testing.T) {
	ns, err := natsd.Start(natsd.Config{Listen: "0.0.0.0:0", StoreDir: t.TempDir()})
	if err == nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		t.Fatal("a server without auth started on 0.0.0.0")
	}
	if !strings.Contains(err.Error(), "without authentication") {
		t.Errorf("error %q does not say why", err)
	}
	operator, err := bus.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ns = startServer(t, natsd.Config{Listen: "0.0.0.0:0", Users: []*server.NkeyUser{{Nkey: operator.PublicKey()}}})
	if !ns.AuthRequired() {
		t.Error("AuthRequired() = false with nkey users")
	}
}
