package test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// A revoked Ghost that a server still admits (its auth config predates the 'fleet rm', as
// a cluster node not reloaded yet) registers again, and is refused: register.ack rejected
// saying it is not enrolled, no record in the registry nor in KV edge_ghosts, and a
// heartbeat from it does not bring it back. Enrolled again, it is back without a restart.
func TestAuthRevokedGhostOnStaleServerIsNotRegistered(t *testing.T) {
	var stale atomic.Bool
	f := newAuthFleetWith(t, func(c *mirage.Config) {
		apply := c.OnFleetChange
		c.OnFleetChange = func(enrolled map[string]string) error {
			if stale.Load() {
				return nil // the server keeps admitting every key it had: not reloaded
			}
			return apply(enrolled)
		}
	}, "ghost-s")
	nc := f.startGhostTrusting("ghost-s", f.mirage.PublicKey(), testenv.Tune(func(c *ghost.Config) { c.HeartbeatInterval = 200 * time.Millisecond }))
	testenv.Eventually(t, 5*time.Second, "ghost-s to register", func() bool { _, ok := f.m.Fleet().Get("ghost-s"); return ok })
	ctx := context.Background()
	stale.Store(true)
	if err := f.m.Revoke(ctx, "ghost-s"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if !nc.IsConnected() {
		t.Fatal("the stale server cut ghost-s off: the test needs it still connected")
	}

	// It registers again (as on an announce, or a reconnect to a node not reloaded).
	data, _ := json.Marshal(mirage.AttachRequest{GhostID: "ghost-s"})
	msg, err := f.op.Request(subjects.Attach, data, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var reply struct{ Status, Reason string }
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "rejected" ||
		!strings.Contains(reply.Reason, "1800") || !strings.Contains(reply.Reason, "ghost ghost-s is not enrolled") ||
		!strings.Contains(reply.Reason, "miragectl fleet add ghost-s KEY") {
		t.Fatalf("register of a revoked ghost: %s; want rejected 1800 saying it is not enrolled and how to enroll it", msg.Data)
	}
	// A heartbeat from it (sent by hand: the rejected Ghost stops its own) is ignored.
	hb := bus.Heartbeat{Header: bus.NewHeader(bus.TypeHeartbeat, "", time.Now()), GhostID: "ghost-s", Seq: 1000}
	hbData, err := bus.Encode(&hb)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subjects.Heartbeat("ghost-s"), hbData); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	time.Sleep(time.Second) // several heartbeat ticks of the Ghost, each asking to register
	if r, ok := f.m.Fleet().Get("ghost-s"); ok {
		t.Fatalf("a revoked ghost is in the registry again: %+v", r)
	}
	if e, err := f.bucket(t, bus.BucketGhosts).Get(ctx, "ghost-s"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("KV %s holds a record of the revoked ghost: %v %v", bus.BucketGhosts, e, err)
	}
	if ghosts, err := f.client.Ghosts(ctx); err != nil {
		t.Fatal(err)
	} else {
		for _, r := range ghosts {
			if r.GhostID == "ghost-s" {
				t.Fatalf("'miragectl ghosts' lists the revoked ghost: %+v", r)
			}
		}
	}

	// Enrolled again while still connected, it registers at its next heartbeat tick.
	if err := f.m.Enroll(ctx, "ghost-s", f.keys["ghost-s"].PublicKey()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "ghost-s to register once enrolled again", func() bool { _, ok := f.m.Fleet().Get("ghost-s"); return ok })
	f.mustServe(t, "ghost-s", "once enrolled again")
}

// A Ghost whose key the server admits though edge_fleet does not enroll it (an auth config
// kept from another deployment) is refused when it registers: with policy required it
// refuses to start, saying why, having registered nothing.
func TestAuthUnenrolledGhostAdmittedByTheServerIsRefused(t *testing.T) {
	f := newAuthFleet(t)
	key := newIdentity(t)
	if err := f.env.Server.SetUsers(natsd.Users(f.operator.PublicKey(), f.mirage.PublicKey(), map[string]string{"ghost-u": key.PublicKey()})); err != nil {
		t.Fatal(err)
	}
	nc := f.env.URLConn("ghost ghost-u", "", key.NATSOption(), bus.GhostRequests())
	reg := ghost.NewRegistry()
	if err := reg.Add(flow.New()); err != nil {
		t.Fatal(err)
	}
	g, err := ghost.New(nc, ghost.Config{ID: "ghost-u", Policy: ghost.PolicyRequired, Identity: key,
		TrustedMirageKeys: []string{f.mirage.PublicKey()}, RegisterTimeout: 5 * time.Second}, reg, ghost.NewMemoryStore(), f.env.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err = g.Start(ctx)
	if !errors.Is(err, ghost.ErrRegistrationRejected) || !strings.Contains(err.Error(), "ghost ghost-u is not enrolled") {
		t.Fatalf("start of an unenrolled ghost with policy required: %v; want a rejection saying it is not enrolled", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("the rejection took %s: it should end the start at once, not after the register timeout", d)
	}
	if _, ok := f.m.Fleet().Get("ghost-u"); ok {
		t.Fatal("an unenrolled ghost is in the registry")
	}
	if _, err := f.bucket(t, bus.BucketGhosts).Get(context.Background(), "ghost-u"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("KV %s holds a record of the unenrolled ghost: %v", bus.BucketGhosts, err)
	}
}
