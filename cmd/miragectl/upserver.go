package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
)

// probeServer checks, before Mirage starts, that the server 'up --server' names can be
// reached. Mirage's own connection retries forever (a daemon outlives a server restart),
// so without this a wrong URL or a stopped server would surface only as provisioning
// timing out half a minute later, as "context deadline exceeded".
func probeServer(ctx context.Context, conn bus.ConnConfig) error {
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
		return cli.Exit(cli.ExitUnavailable, fmt.Errorf("NATS at %s cannot be reached: %s (check --server: up needs a running nats-server with JetStream there)", conn.URL, why))
	}
	defer nc.Close()
	return nil
}
