package test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
)

// seedReadPermissions is what a Ghost needs, beyond bus.GhostPermissions, to read the
// object store edge_seeds (and nothing else of it: no writes, no deletes).
var seedReadPermissions = []string{
	"$JS.API.STREAM.INFO.OBJ_" + bus.BucketSeeds,
	"$JS.API.DIRECT.GET.OBJ_" + bus.BucketSeeds + ".$O." + bus.BucketSeeds + ".M.*",
	"$JS.API.CONSUMER.CREATE.OBJ_" + bus.BucketSeeds + ".*.$O." + bus.BucketSeeds + ".C.*",
	"$JS.API.CONSUMER.DELETE.OBJ_" + bus.BucketSeeds + ".*",
	"$JS.FC.OBJ_" + bus.BucketSeeds + ".>",
}

// Under auth, the digests travel in a command Mirage signs, and a Ghost with read-only
// access to edge_seeds installs and runs the seed; it cannot write to the store.
func TestSeedPushUnderAuth(t *testing.T) {
	f := newAuthFleet(t, "edge-a")
	key := f.keys["edge-a"]
	users := bus.Users(f.operator.PublicKey(), f.mirage.PublicKey(), map[string]string{"edge-a": key.PublicKey()})
	for _, u := range users {
		if u.Nkey == key.PublicKey() {
			u.Permissions.Publish.Allow = append(u.Permissions.Publish.Allow, seedReadPermissions...)
		}
	}
	if err := f.env.Server.SetUsers(users); err != nil {
		t.Fatal(err)
	}
	nc := f.env.URLConn("ghost edge-a", "", key.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("edge-a")))
	state := filepath.Join(f.env.Dir, "edge-a")
	startBareGhost(t, f.env, "edge-a", state, bare{nc: nc, allow: []string{"service.*"}, tune: func(c *ghost.Config) {
		c.Identity = key
		c.TrustedMirageKeys = []string{f.mirage.PublicKey()}
	}})

	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	// A script of a few MiB: reading it takes JetStream flow control.
	script := append(example(t, "service.example.sh"), bytes.Repeat([]byte("# padding\n"), 400<<10)...)
	svc, _ := publish(t, seedStore(t, js), example(t, "service.example.toml"), map[string][]byte{"service.example.sh": script})
	if res, ch := install(t, f.env, f.client, "edge-a", svc.InstallArgs()); ch.Action != "installed" {
		t.Fatalf("install under auth: %+v", res)
	}
	if res := succeed(t, f.env, f.client, "edge-a", "service.example", "greet", map[string]string{"name": "auth"}); res.Stdout != "hello, auth\n" {
		t.Fatalf("greet stdout %q", res.Stdout)
	}

	// The Ghost's own connection can read the store but not write to it.
	gjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := seedStore(t, gjs).PutBytes(ctx, "service.example/9/spec.toml", []byte("x")); err == nil {
		t.Fatal("a Ghost wrote to edge_seeds")
	}
}
