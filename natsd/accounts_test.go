package natsd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
)

func newIdentity(t *testing.T) *bus.Identity {
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
