package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
)

// probeServer checks, before Mirage starts, that the server 'up --server' names can be
// reached and has JetStream. Mirage's own connection retries forever (a daemon outlives a server restart),
// so without this a wrong URL or a stopped server would surface only as provisioning
// timing out half a minute later, as "context deadline exceeded".
//
// keyFile is Mirage's key with --auth ("" without): a server that refuses the connection
// was reached, and the operator is told what it wants instead of to check the URL.
func probeServer(ctx context.Context, conn bus.ConnConfig, keyFile string) error {
	conn.Persistent = false
	conn.Name += " (probe)"
	conn.Logger = nil
	nc, err := bus.Connect(ctx, conn)
	if err != nil {
		var fe *bus.TLSFileError
		if errors.As(err, &fe) {
			return err
		}
		why := strings.TrimPrefix(err.Error(), fmt.Sprintf("%v: connect to %s: ", bus.ErrUnavailable, conn.URL))
		if strings.Contains(strings.ToLower(why), "authorization violation") {
			if keyFile == "" {
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("NATS at %s requires authentication (%s): run up with --auth and a --data-dir whose keys/mirage.nk the server admits (see docs/security.md)", conn.URL, why))
			}
			return cli.Exit(cli.ExitUnavailable, fmt.Errorf("NATS at %s refuses Mirage's key %s (%s): the server must admit it (the key of the 'up --auth' that runs the server, or one in every node's accounts block: for keys it does not know yet, print that block with a short 'up --auth' on a spare port and 'miragectl fleet auth-config', then reload the nodes: deploy/README.md, step 2; docs/security.md)", conn.URL, keyFile, why))
		}
		return cli.Exit(cli.ExitUnavailable, fmt.Errorf("NATS at %s cannot be reached: %s (check --server: up needs a running nats-server with JetStream there)", conn.URL, why))
	}
	defer nc.Close()
	// A server without JetStream answers no JetStream API request: say so now, rather
	// than "no responders" once provisioning gave up. Other answers (a cluster still
	// electing its meta leader) are left to provisioning, which waits for them.
	js, err := jetstream.New(nc)
	if err != nil {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(actx); mirage.IsNoJetStream(err) {
		return cli.Exit(cli.ExitUnavailable, &mirage.NoJetStreamError{URL: conn.URL})
	}
	return nil
}
