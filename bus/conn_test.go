package bus_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

func TestConnectUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, bus.ConnConfig{URL: "nats://edge:s3cret@" + addr})
	if err == nil {
		nc.Close()
		t.Fatal("Connect to a closed port succeeded")
	}
	if !errors.Is(err, bus.ErrUnavailable) {
		t.Errorf("error %v does not wrap ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q leaks the password", err)
	}
}

func TestServerURL(t *testing.T) {
	t.Setenv("NATS_URL", "")
	if got := bus.ServerURL(""); got != bus.DefaultURL {
		t.Errorf("ServerURL() = %q, want %q", got, bus.DefaultURL)
	}
	t.Setenv("NATS_URL", "nats://env:4222")
	if got := bus.ServerURL(""); got != "nats://env:4222" {
		t.Errorf("ServerURL() = %q, want $NATS_URL", got)
	}
	if got := bus.ServerURL("nats://flag:4222"); got != "nats://flag:4222" {
		t.Errorf("ServerURL(flag) = %q, want the flag", got)
	}
}

func TestCheckServerURL(t *testing.T) {
	for _, ok := range []string{"nats://127.0.0.1:4222", "tls://nats.example.com:4222", "127.0.0.1:4222", "nats://a:4222, nats://b:4222", "wss://x.example", "nats://a:4222,,nats://b:4222", "nats://a:4222,"} {
		if err := bus.CheckServerURL(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://foo", "nats://", "", " , ", "nats://a b"} {
		if err := bus.CheckServerURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
