// Package natsdtest starts embedded servers and connects to them for tests.
package natsdtest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
)

// Start starts an embedded server (on a fresh store unless cfg names one) and shuts it
// down, waiting, when the test ends.
func Start(t testing.TB, cfg natsd.Config) *natsd.Server {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	ns, err := natsd.Start(cfg)
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// Connect opens a connection with bus.Connect, closed when the test ends.
func Connect(t testing.TB, cfg bus.ConnConfig) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}
