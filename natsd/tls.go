package natsd

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
)

// TLSTimeout is how long the server waits for a client's TLS handshake. Edge links are
// slow; nats-server's default of 2 s is tight for them.
const TLSTimeout = 5 * time.Second

// ApplyTLS turns TLS on in a nats-server's options with the server's files f. Every
// socket client must then use TLS (in-process connections are not sockets and need none);
// with f.VerifyClients every client must present a certificate signed by f.CA, and
// certificates map to users (CertUsers). A missing or invalid file is a *bus.TLSFileError.
func ApplyTLS(o *server.Options, f bus.TLSFiles) error {
	if err := f.CheckServer(); err != nil {
		return err
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: f.Cert, KeyFile: f.Key, CaFile: f.CA,
		Verify: f.VerifyClients, Map: f.VerifyClients, Timeout: TLSTimeout.Seconds(),
	})
	if err != nil {
		return fmt.Errorf("TLS configuration: %w", err)
	}
	o.TLSConfig = tc
	o.TLS = true
	o.TLSVerify = f.VerifyClients
	o.TLSMap = f.VerifyClients
	o.TLSTimeout = TLSTimeout.Seconds()
	return nil
}
