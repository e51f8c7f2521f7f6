package test

import (
	"bufio"
	"context"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// dialOnce opens a client connection that fails fast, with these TLS files.
func dialOnce(url string, files bus.TLSFiles, opts ...nats.Option) (*nats.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return bus.Connect(ctx, bus.ConnConfig{URL: url, Name: "tls test", TLS: files, Options: append(opts, nats.MaxReconnects(0))})
}

func tlsOptions(t *testing.T, files bus.TLSFiles) []nats.Option {
	t.Helper()
	opts, err := files.ClientOptions()
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// A TLS server serves clients that trust its CA, and refuses clients that do not.
func TestTLSConnect(t *testing.T) {
	pki := testenv.NewPKI(t)
	env := testenv.New(t, testenv.Listen(), testenv.TLS(pki.Server()))
	if !strings.HasPrefix(env.URL, "tls://127.0.0.1:") {
		t.Fatalf("client URL %q is not tls://", env.URL)
	}
	nc, err := dialOnce(env.URL, bus.TLSFiles{CA: pki.CA})
	if err != nil {
		t.Fatalf("a client trusting the CA was refused: %v", err)
	}
	defer nc.Close()
	if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete {
		t.Fatalf("connection is not TLS: %v", err)
	}
	if _, err := nc.RTT(); err != nil {
		t.Fatal(err)
	}
	// A nats:// URL to a TLS server still talks TLS (the server requires it).
	u, _ := url.Parse(env.URL)
	nc2, err := dialOnce("nats://"+u.Host, bus.TLSFiles{CA: pki.CA})
	if err != nil {
		t.Fatalf("nats:// URL with the CA: %v", err)
	}
	nc2.Close()

	for name, files := range map[string]bus.TLSFiles{
		"another CA": {CA: testenv.NewPKI(t).CA},
		"system CAs": {},
	} {
		if nc, err := dialOnce(env.URL, files); err == nil {
			nc.Close()
			t.Errorf("%s: a client that does not trust the server's CA connected", name)
		} else if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: error %q does not say the certificate is not trusted", name, err)
		}
	}
}

// A plaintext client gets no service from a TLS server: it is told TLS is required and
// cut off when it speaks the protocol in the clear.
func TestTLSPlaintextClientRefused(t *testing.T) {
	pki := testenv.NewPKI(t)
	env := testenv.New(t, testenv.Listen(), testenv.TLS(pki.Server()))
	u, _ := url.Parse(env.URL)
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * natsd.TLSTimeout))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(info, "INFO ") || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("INFO %q (%v) does not require TLS", info, err)
	}
	if _, err := conn.Write([]byte("CONNECT {\"verbose\":false}\r\nPING\r\nSUB cmd.> 1\r\n")); err != nil {
		t.Fatal(err)
	}
	rest, err := r.ReadString('\n')
	if strings.Contains(rest, "PONG") {
		t.Fatalf("a plaintext client was served: %q", rest)
	}
	t.Logf("plaintext client: read %q, %v", rest, err)
}

// mtlsFleet is an embedded server that verifies client certificates: the operator and
// Mirage are nkeys, each enrolled Ghost is its certificate (CN=<id>,OU=ghost,O=edgectl).
type mtlsFleet struct {
	env              *testenv.Env
	pki              *testenv.PKI
	operator, mirage *bus.Identity
}

func newMTLSFleet(t *testing.T, ghosts ...string) *mtlsFleet {
	t.Helper()
	f := &mtlsFleet{pki: testenv.NewPKI(t), operator: newIdentity(t), mirage: newIdentity(t)}
	files := f.pki.Server()
	files.VerifyClients = true
	f.env = testenv.New(t, testenv.Listen(), testenv.TLS(files), testenv.Users(f.nkeys()), testenv.CertUsers(natsd.CertUsers(ghosts)))
	return f
}

func (f *mtlsFleet) nkeys() []*server.NkeyUser {
	return natsd.Users(f.operator.PublicKey(), f.mirage.PublicKey(), nil)
}

// ghostConn connects with files' certificate, as Ghost id's connection would.
func (f *mtlsFleet) ghostConn(id string, files bus.TLSFiles, v *violations) (*nats.Conn, error) {
	opts := []nats.Option{nats.CustomInboxPrefix(bus.GhostInbox(id))}
	if v != nil {
		opts = append(opts, nats.ErrorHandler(v.handler))
	}
	return dialOnce(f.env.URL, files, opts...)
}

// With client verification, a client without a certificate, with one from another CA, or
// with one that names no enrolled Ghost is refused.
func TestMTLSRefusesClientsWithoutAValidCertificate(t *testing.T) {
	f := newMTLSFleet(t, "ghost-a")
	edgectl := func(cn, ou string) pkix.Name {
		return pkix.Name{CommonName: cn, OrganizationalUnit: []string{ou}, Organization: []string{bus.CertOrganization}}
	}
	const unauthorized = "Authorization Violation"
	tests := map[string]struct {
		files bus.TLSFiles
		want  string
	}{
		"no certificate": {bus.TLSFiles{CA: f.pki.CA}, "certificate required|closed by remote after TLS handshake"},
		// The server's alert may be lost when it closes first: then the write fails.
		"certificate of another CA": {func() bus.TLSFiles { c := testenv.NewPKI(t).Ghost("ghost-a"); c.CA = f.pki.CA; return c }(), "unknown certificate authority|closed by remote after TLS handshake"},
		"ghost not enrolled":        {f.pki.Ghost("ghost-c"), unauthorized},
		"ghost-a without OU=ghost":  {f.pki.Client(pkix.Name{CommonName: "ghost-a", Organization: []string{bus.CertOrganization}}), unauthorized},
		"ghost-a as a mirage":       {f.pki.Client(edgectl("ghost-a", bus.CertUnitMirage)), unauthorized},
		"operator certificate":      {f.pki.Client(edgectl("operator", bus.CertUnitOperator)), unauthorized},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			nc, err := f.ghostConn("ghost-a", tt.files, nil)
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			if !regexp.MustCompile(tt.want).MatchString(err.Error()) {
				t.Errorf("refused with %q, want %q", err, tt.want)
			}
		})
	}
	// The operator's nkey still works, with any certificate of the CA.
	nc, err := dialOnce(f.env.URL, f.pki.Client(edgectl("operator", bus.CertUnitOperator)), f.operator.NATSOption())
	if err != nil {
		t.Fatalf("the operator's nkey over mTLS: %v", err)
	}
	nc.Close()
}

// ghost-a's certificate is ghost-a: it may subscribe to cmd.ghost-a, but not to
// cmd.ghost-b nor publish evt.ghost-b.
func TestMTLSCertificateIsTheGhostIdentity(t *testing.T) {
	f := newMTLSFleet(t, "ghost-a", "ghost-b")
	var v violations
	nc, err := f.ghostConn("ghost-a", f.pki.Ghost("ghost-a"), &v)
	if err != nil {
		t.Fatalf("ghost-a's certificate was refused: %v", err)
	}
	defer nc.Close()
	for _, s := range []string{subjects.Command("ghost-a"), subjects.Command("ghost-b")} {
		if _, err := nc.SubscribeSync(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Publish(subjects.Event("ghost-b"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	testenv.Eventually(t, 5*time.Second, "permission violations for cmd.ghost-b and evt.ghost-b", func() bool {
		return v.saw(`"cmd.ghost-b"`) && v.saw(`"evt.ghost-b"`)
	})
	if v.saw(`"cmd.ghost-a"`) {
		t.Error("ghost-a may not subscribe to its own commands")
	}
}

// A Mirage and Ghosts over TLS run an intent to satisfied: with TLS and nkeys, and with
// mTLS where the Ghost's certificate is its identity; revoking the mTLS Ghost cuts it off.
func TestTLSEndToEnd(t *testing.T) {
	for _, mtls := range []bool{false, true} {
		name := map[bool]string{false: "tls+nkey", true: "mtls"}[mtls]
		t.Run(name, func(t *testing.T) {
			pki := testenv.NewPKI(t)
			operator, mkey, gkey := newIdentity(t), newIdentity(t), newIdentity(t)
			nkeys := func(enrolled map[string]string) []*server.NkeyUser {
				if mtls {
					enrolled = nil // Ghosts connect by certificate
				}
				return natsd.Users(operator.PublicKey(), mkey.PublicKey(), enrolled)
			}
			files := pki.Server()
			files.VerifyClients = mtls
			env := testenv.New(t, testenv.Listen(), testenv.TLS(files), testenv.Users(nkeys(nil)))
			m := env.StartMirageOn(env.ConnWith("mirage", mkey.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox())), mirage.Config{
				Identity: mkey, RequireSignedEvents: true,
				OnFleetChange: func(enrolled map[string]string) error {
					if !mtls {
						return env.Server.SetUsers(nkeys(enrolled))
					}
					var ids []string
					for id := range enrolled {
						ids = append(ids, id)
					}
					return env.Server.SetAuth(nkeys(nil), natsd.CertUsers(ids))
				},
			})
			if err := m.Enroll(context.Background(), "edge-1", gkey.PublicKey()); err != nil {
				t.Fatal(err)
			}
			client := bus.TLSFiles{CA: pki.CA}
			opts := []nats.Option{nats.CustomInboxPrefix(bus.GhostInbox("edge-1"))}
			if mtls {
				client = pki.Ghost("edge-1")
			} else {
				opts = append(opts, gkey.NATSOption())
			}
			gnc := env.URLConn("ghost edge-1", "", append(tlsOptions(t, client), append(opts, bus.GhostRequests())...)...)
			if st, err := gnc.TLSConnectionState(); err != nil || !st.HandshakeComplete {
				t.Fatalf("the Ghost's connection is not TLS: %v", err)
			}
			env.StartGhost("edge-1", testenv.Via(gnc), testenv.Seeds("seed.flow"), testenv.Tune(func(c *ghost.Config) {
				c.Identity = gkey
				c.TrustedMirageKeys = []string{mkey.PublicKey()}
			}))
			c, err := mirage.NewClient(env.ConnWith("operator", operator.NATSOption()))
			if err != nil {
				t.Fatal(err)
			}
			r := env.Run(c, testenv.NewIssue("edge-1", "seed.flow", "echo", map[string]string{"message": "over-tls"}, 10*time.Second))
			if r.Phase != bus.PhaseSatisfied || len(r.Results) != 1 || !strings.Contains(r.Results[0].Stdout, "over-tls") {
				t.Fatalf("intent over %s: %s %+v", name, r.Summary, r.Results)
			}
			// The revocation reloads the server's configuration, which nats-server 2.15.2
			// does while a direct get may read the options unlocked (server.go setOpts
			// against stream.go getDirectRequest): harmless, but the race detector fails
			// the test. The Ghost's looks at cmd.<id> make such gets through Mirage, spaced
			// 250 ms apart: where its new store began (before it subscribed), its first
			// catch-up, and the second look 100 ms later. They have ended by now.
			time.Sleep(time.Second)
			if err := m.Revoke(context.Background(), "edge-1"); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 5*time.Second, "the revoked Ghost to be disconnected", func() bool { return !gnc.IsConnected() })
		})
	}
}
