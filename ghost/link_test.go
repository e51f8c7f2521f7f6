package ghost

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
)

// A look at the connection that read it down, then applied what it read after another look
// had seen it back (the connection came back in between), does not leave the link down:
// a publish waiting for the connection gets it. (Two looks run at once whenever publishes
// do: every attempt looks, and the link's own goroutine looks at each status change.)
func TestLinkIsNotLeftDownByALookThatReadItBeforeAReconnect(t *testing.T) {
	dir := t.TempDir()
	start := func(listen string) *natsd.Server {
		ns, err := natsd.Start(natsd.Config{Listen: listen, StoreDir: filepath.Join(dir, "js")})
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	ns := start("127.0.0.1:0")
	port := ns.Addr().(*net.TCPAddr).Port
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{URL: ns.ClientURL(), Name: "ghost", Persistent: true})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	l := newLink(nc)
	paused, release := make(chan struct{}), make(chan struct{})
	armed := make(chan struct{}, 1)
	l.afterRead = func() {
		select {
		case <-armed: // only the look armed for
			close(paused)
			<-release
		default:
		}
	}
	stop := make(chan struct{})
	l.follow(stop)
	defer func() { close(stop); l.wait() }()
	if l.current() == nil {
		t.Fatal("the link is down on a connected connection")
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, "the connection lost", func() bool { return !nc.IsConnected() })
	armed <- struct{}{}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := l.await(ctx) // its look reads the connection down, and stops there
		got <- err
	}()
	<-paused
	ns = start(fmt.Sprintf("127.0.0.1:%d", port))
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	waitFor(t, "the connection back", nc.IsConnected)
	time.Sleep(300 * time.Millisecond) // the link's goroutine has looked at the reconnect
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("a publish waiting for the connection, which is back: %v", err)
	}
}
