package natsd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

func newIdentity(t testing.TB) *bus.Identity {
	t.Helper()
	id, err := bus.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// storedMsgs runs one embedded server on store, with users (nil: no authentication),
// connected as operator when users are set, and returns the message count of stream name
// (-1 when there is none) after adding add messages to it (creating it when add > 0).
func storedMsgs(t *testing.T, store string, users []*server.NkeyUser, operator *bus.Identity, name string, add int) int {
	t.Helper()
	ns, err := natsd.Start(natsd.Config{DontListen: true, StoreDir: store, Users: users})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	cc := bus.ConnConfig{InProcess: ns, Name: "operator"}
	if users != nil {
		cc.Options = []nats.Option{operator.NATSOption()}
	}
	nc := connect(t, cc)
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if add > 0 {
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"kept.>"}, Storage: jetstream.FileStorage}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < add; i++ {
			if _, err := js.Publish(ctx, "kept.x", []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Msgs)
}

// With users the fleet runs in accounts EDGE and EDGE_GHOSTS, and JetStream lives in
// EDGE; without, in the server's global account. The store follows the setting, both
// ways, so 'up' and 'up --auth' on one data directory find the same streams.
func TestStoreFollowsTheAccountBothWays(t *testing.T) {
	store := t.TempDir()
	op := newIdentity(t)
	users := natsd.Users(op.PublicKey(), newIdentity(t).PublicKey(), nil)
	if n := storedMsgs(t, store, nil, nil, "KEPT", 2); n != 2 {
		t.Fatalf("without auth: %d messages", n)
	}
	if n := storedMsgs(t, store, users, op, "KEPT", 1); n != 3 {
		t.Fatalf("with auth, after a store written without: %d messages, want 3", n)
	}
	if _, err := os.Stat(filepath.Join(store, "jetstream", natsd.AccountEdge, "streams", "KEPT")); err != nil {
		t.Fatalf("the stream is not in account %s's store: %v", natsd.AccountEdge, err)
	}
	if n := storedMsgs(t, store, nil, nil, "KEPT", 0); n != 3 {
		t.Fatalf("without auth again: %d messages, want 3", n)
	}
}

// A store holding streams of both accounts is not merged or chosen silently.
func TestStoreWithStreamsOfBothAccountsIsRefused(t *testing.T) {
	store := t.TempDir()
	op := newIdentity(t)
	users := natsd.Users(op.PublicKey(), newIdentity(t).PublicKey(), nil)
	storedMsgs(t, store, users, op, "KEPT", 1)
	edge := filepath.Join(store, "jetstream", natsd.AccountEdge)
	keep := filepath.Join(t.TempDir(), "edge")
	if err := os.Rename(edge, keep); err != nil {
		t.Fatal(err)
	}
	storedMsgs(t, store, nil, nil, "OTHER", 1) // a fresh $G store
	if err := os.Rename(keep, edge); err != nil {
		t.Fatal(err)
	}
	ns, err := natsd.Start(natsd.Config{DontListen: true, StoreDir: store, Users: users})
	if err == nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		t.Fatal("started on a store with streams of both accounts")
	}
	if !strings.Contains(err.Error(), natsd.AccountEdge) || !strings.Contains(err.Error(), "$G") {
		t.Errorf("error does not name both accounts: %v", err)
	}
}

// The accounts are fixed when the server starts: users of the other kind are refused
// rather than landing in an account without JetStream.
func TestSetUsersKeepsTheAccounts(t *testing.T) {
	op := newIdentity(t)
	ns := startServer(t, natsd.Config{DontListen: true, Users: natsd.Users(op.PublicKey(), newIdentity(t).PublicKey(), nil)})
	if err := ns.SetUsers([]*server.NkeyUser{{Nkey: op.PublicKey()}}); err == nil {
		t.Error("SetUsers accepted a user outside the fleet accounts")
	}
	if err := ns.SetUsers(natsd.Users(op.PublicKey(), newIdentity(t).PublicKey(), map[string]string{"edge-1": newIdentity(t).PublicKey()})); err != nil {
		t.Errorf("SetUsers with the fleet's users: %v", err)
	}
}

// A reload re-configures the accounts, during which JetStream's API has no responders
// for a moment: SetUsers with the users the server already has (every 'up --auth' start
// enrolls its local Ghost again) reloads nothing, and JetStream calls made meanwhile are
// all answered.
func TestSetUsersWithTheSameUsersKeepsJetStreamAnswering(t *testing.T) {
	op, mir, ghostKey := newIdentity(t), newIdentity(t), newIdentity(t).PublicKey()
	users := func() []*server.NkeyUser {
		return natsd.Users(op.PublicKey(), mir.PublicKey(), map[string]string{"edge-1": ghostKey})
	}
	ns := startServer(t, natsd.Config{DontListen: true, StoreDir: t.TempDir(), Users: users()})
	nc := connect(t, bus.ConnConfig{InProcess: ns, Name: "operator", Options: []nats.Option{op.NATSOption()}})
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "KEPT", Subjects: []string{"kept.>"}}); err != nil {
		t.Fatal(err)
	}
	var calls, failed atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := js.Stream(cctx, "KEPT")
			cancel()
			calls.Add(1)
			if err != nil {
				failed.Add(1)
			}
		}
	}()
	for range 20 {
		if err := ns.SetUsers(users()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-done
	if failed.Load() > 0 || calls.Load() == 0 {
		t.Fatalf("%d of %d JetStream calls failed while the same users were set again", failed.Load(), calls.Load())
	}
}

// In a cluster, a Ghost's inbox reaches account EDGE through a stream import, so the
// interest of a subscription made just before a request travels on EDGE's route while the
// request travels on EDGE_GHOSTS's, and may arrive after Mirage answered. bus.Answers
// subscribes once: every answer of a few hundred requests arrives.
func TestAnswersReachAGhostAcrossAClusterOfTwoAccounts(t *testing.T) {
	op, mk, gk := newIdentity(t), newIdentity(t), newIdentity(t)
	users := natsd.Users(op.PublicKey(), mk.PublicKey(), map[string]string{"g1": gk.PublicKey()})
	clientPorts, routePorts := []int{freePort(t), freePort(t)}, []int{freePort(t), freePort(t)}
	nodes := make([]*natsd.Server, 2)
	for i := range nodes {
		other := routePorts[1-i]
		nodes[i] = startServer(t, natsd.Config{
			Listen: fmt.Sprintf("127.0.0.1:%d", clientPorts[i]), ServerName: fmt.Sprintf("n%d", i), Users: users,
			Customize: func(o *server.Options) error {
				o.Cluster = server.ClusterOpts{Name: "edge", Host: "127.0.0.1", Port: routePorts[i]}
				o.Routes = server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", other))
				return nil
			},
		})
	}
	mc := connect(t, bus.ConnConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[1]), Name: "mirage",
		Options: []nats.Option{mk.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox())}})
	if _, err := mc.Subscribe(subjects.AllReplays, func(m *nats.Msg) {
		if strings.HasPrefix(m.Reply, bus.GhostInbox("g1")+".") {
			_ = mc.Publish(m.Reply, []byte("command"))
			_ = mc.Publish(m.Reply, []byte("reply"))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := mc.Flush(); err != nil {
		t.Fatal(err)
	}
	gc := connect(t, bus.ConnConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[0]), Name: "ghost g1",
		Options: []nats.Option{gk.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("g1"))}})
	answers, err := bus.NewAnswers(gc, bus.GhostInbox("g1"))
	if err != nil {
		t.Fatal(err)
	}
	ask := func(wait time.Duration) int {
		box := answers.Open(4)
		defer box.Close()
		if err := gc.PublishRequest(subjects.ReplayFor("g1"), box.Inbox, nil); err != nil {
			t.Fatal(err)
		}
		got := 0
		for got < 2 {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			_, err := box.Next(ctx)
			cancel()
			if err != nil {
				break
			}
			got++
		}
		return got
	}
	// The routes are up and Mirage's subscription known on the Ghost's server.
	deadline := time.Now().Add(30 * time.Second)
	for ask(200*time.Millisecond) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("no answer across the cluster within 30s")
		}
	}
	lost := 0
	for i := 0; i < 300; i++ {
		if ask(2*time.Second) != 2 {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of 300 answers lost on the way", lost)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
