package natsd_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
)

var (
	startServer = natsdtest.Start
	connect     = natsdtest.Connect
)

func TestStartRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  natsd.Config
		want string
	}{
		{"bogus sync", natsd.Config{DontListen: true, StoreDir: t.TempDir(), Sync: "bogus"}, "bogus"},
		{"no store", natsd.Config{DontListen: true}, "store"},
		{"listen without port", natsd.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1"}, "127.0.0.1"},
		{"listen port not a number", natsd.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:nats"}, "nats"},
		{"customize fails", natsd.Config{DontListen: true, StoreDir: t.TempDir(),
			Customize: func(*server.Options) error { return errors.New("no TLS key") }}, "no TLS key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := natsd.Start(tt.cfg)
			if err == nil {
				ns.Shutdown()
				ns.WaitForShutdown()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

// logCounter counts the records a slog.Logger receives.
type logCounter struct {
	mu sync.Mutex
	n  int
}

func (c *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCounter) Handle(context.Context, slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return nil
}
func (c *logCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *logCounter) WithGroup(string) slog.Handler      { return c }

func TestStartListen(t *testing.T) {
	logs := &logCounter{}
	ns := startServer(t, natsd.Config{
		Listen: "127.0.0.1:0", Sync: natsd.SyncInterval, SyncEvery: time.Second,
		ServerName: "edge-test", Logger: slog.New(logs),
	})
	url := ns.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") || strings.HasSuffix(url, ":0") || strings.HasSuffix(url, ":-1") {
		t.Fatalf("ClientURL() = %q, want a random port on 127.0.0.1", url)
	}
	nc := connect(t, bus.ConnConfig{URL: url, Name: "test"})
	if _, err := nc.RTT(); err != nil {
		t.Fatalf("RTT: %v", err)
	}
	if got := nc.ConnectedServerName(); got != "edge-test" {
		t.Errorf("server name = %q, want edge-test", got)
	}
	logs.mu.Lock()
	n := logs.n
	logs.mu.Unlock()
	if n == 0 {
		t.Error("the server logged nothing to the given logger")
	}
}

// An address in use is refused at once, naming it, instead of after the 30 s wait for a
// server that never becomes ready.
func TestStartAddressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	ns, err := natsd.Start(natsd.Config{Listen: l.Addr().String(), StoreDir: t.TempDir()})
	if err == nil {
		ns.Shutdown()
		t.Fatal("started on an address in use")
	}
	if !strings.Contains(err.Error(), l.Addr().String()) || !strings.Contains(err.Error(), "in use") || time.Since(start) > 5*time.Second {
		t.Fatalf("after %s: %v; want an immediate error naming the address in use", time.Since(start), err)
	}
}
