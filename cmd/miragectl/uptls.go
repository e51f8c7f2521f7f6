package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/natsd"
)

// upTLSHelp is the part of 'up --help' about TLS and production mode.
const upTLSHelp = `
TLS: --tls-cert and --tls-key make the embedded server require TLS of every client
(tls:// URLs; Mirage and the local Ghost are in-process and need none). Clients trust the
server's CA with $EDGE_TLS_CA (the nats CLI: --tlsca). --tls-verify-clients (with --tls-ca
and --auth) is mTLS: every client presents a certificate signed by that CA, and a Ghost's
certificate is its identity: subject CN=<ghost id>,OU=ghost,O=edgectl, enrolled with
'miragectl fleet add' as before. With --server, the TLS flags are Mirage's client side.

--production refuses to start without TLS (--tls-cert and --tls-key, or a tls:// --server)
and --auth. See docs/security.md.`

func registerUpTLSFlags(f *pflag.FlagSet) {
	f.Bool("production", false, "production mode: refuse to start without TLS and --auth")
	f.String("tls-cert", "", "PEM certificate of the embedded server (with --server: Mirage's client certificate)")
	f.String("tls-key", "", "PEM private key of --tls-cert (mode 0600)")
	f.String("tls-ca", "", "PEM CA that signs client certificates (with --server: the CA that signs the server's)")
	f.Bool("tls-verify-clients", false, "mTLS: require client certificates signed by --tls-ca; a Ghost's certificate (CN=<id>,OU=ghost,O=edgectl) is its identity")
}

// tlsFiles are the TLS files of 'up': the embedded server's, or with --server Mirage's
// client side.
func (c upConfig) tlsFiles() bus.TLSFiles {
	return bus.TLSFiles{Cert: c.TLSCert, Key: c.TLSKey, CA: c.TLSCA, VerifyClients: c.TLSVerifyClients && c.Server == ""}
}

// checkUpTLS refuses, with one clear line (exit 2), a production mode without TLS or auth
// and TLS settings that do not fit together or name unusable files.
func checkUpTLS(c upConfig) error {
	if c.Production {
		if c.Server == "" && (c.TLSCert == "" || c.TLSKey == "") {
			return cli.Invalid("production mode needs TLS: pass --tls-cert and --tls-key (config keys nats_tls_cert, nats_tls_key)")
		}
		if c.Server != "" {
			if plain := bus.PlaintextURLs(c.Server); len(plain) > 0 {
				return cli.Invalid("production mode refuses plaintext --server %s: use tls://HOST:PORT", strings.Join(plain, ", "))
			}
		}
		if !c.Auth {
			return cli.Invalid("production mode needs authentication: pass --auth")
		}
	}
	if c.TLSVerifyClients {
		switch {
		case c.Server != "":
			return cli.Invalid("--tls-verify-clients configures the embedded server; with --server, verify clients on that server")
		case !c.Auth:
			return cli.Invalid("--tls-verify-clients maps client certificates to enrolled Ghosts: it needs --auth")
		case c.TLSCA == "":
			return cli.Invalid("--tls-verify-clients needs --tls-ca, the CA that signs the client certificates")
		}
	}
	files := c.tlsFiles()
	if !files.Enabled() {
		return nil
	}
	check := files.CheckServer
	if c.Server != "" {
		check = files.CheckClient
	}
	if err := check(); err != nil {
		var fe *bus.TLSFileError
		if errors.As(err, &fe) {
			return cli.Invalid("--tls-%s: %v", fe.Field, err)
		}
		return cli.Invalid("%v", err)
	}
	return nil
}

// fleetChange applies Mirage's enrollments to the embedded server. With mTLS the enrolled
// Ghosts connect by certificate (CertUsers) and the nkey users are the operator, Mirage
// and the in-process local Ghost only; otherwise every Ghost is its nkey.
func fleetChange(ns *natsd.Server, auth *upAuth, cfg upConfig) func(map[string]string) error {
	local := !cfg.NoLocalGhost
	if !cfg.tlsFiles().VerifyClients {
		return func(enrolled map[string]string) error { return ns.SetUsers(auth.users(enrolled, local)) }
	}
	return func(enrolled map[string]string) error {
		ids := make([]string, 0, len(enrolled))
		for id := range enrolled {
			ids = append(ids, id)
		}
		return ns.SetAuth(auth.users(nil, local), natsd.CertUsers(ids))
	}
}

// explainTLS tells the operator what TLS asks of clients; it prints paths only.
func explainTLS(w io.Writer, c upConfig) {
	files := c.tlsFiles()
	if !files.Enabled() || c.Server != "" {
		return
	}
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	ca := abs(c.TLSCA)
	if c.TLSCA == "" {
		ca = "<the CA that signed " + abs(c.TLSCert) + ">"
	}
	fmt.Fprintf(w, `TLS is on: clients connect with tls:// and trust the server's CA.
  miragectl:        export EDGE_TLS_CA=%[1]s
  nats CLI:         nats --tlsca %[1]s ...
  Ghost config:     server = "tls://...", tls_ca = "%[1]s"
`, ca)
	if files.VerifyClients {
		fmt.Fprintf(w, `mTLS is on: every client presents a certificate signed by %[1]s.
  a Ghost:          subject CN=<ghost id>,OU=ghost,O=edgectl; tls_cert and tls_key in its config
  miragectl:        export EDGE_TLS_CERT=FILE EDGE_TLS_KEY=FILE (any certificate of the CA; --nkey still says who you are)
`, ca)
	}
}
