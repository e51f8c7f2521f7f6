package test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// Under auth, the digests travel in a command Mirage signs, and a Ghost with its own
// permissions only (natsd.GhostPermissions: no JetStream API on edge_seeds, no consumer,
// no write) installs and runs a seed of a few MiB, read through Mirage
// (mirage.seed.<id>); its connection cannot reach the store itself.
func TestSeedPushUnderAuth(t *testing.T) {
	f := newAuthFleet(t, "edge-a")
	key := f.keys["edge-a"]
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
	var asked, busy atomic.Int64
	sub, err := f.op.Subscribe(subjects.SeedFor("edge-a"), func(*nats.Msg) { asked.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// A request Mirage answers busy (its gate spaces one Ghost's reads; a loaded machine
	// may bring two closer) is asked again: that one is not a read.
	answers, err := f.op.Subscribe(bus.GhostInbox("edge-a")+".>", func(m *nats.Msg) {
		var ans bus.SeedAnswer
		if json.Unmarshal(m.Data, &ans) == nil && ans.Status == bus.SeedBusy {
			busy.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = answers.Unsubscribe() }()
	if err := f.op.Flush(); err != nil {
		t.Fatal(err)
	}
	// A script of a few MiB: many chunks, read by Mirage, sent in several messages.
	script := append(example(t, "service.example.sh"), bytes.Repeat([]byte("# padding\n"), 400<<10)...)
	svc, _ := publish(t, seedStore(t, js), example(t, "service.example.toml"), map[string][]byte{"service.example.sh": script})
	if res, ch := install(t, f.env, f.client, "edge-a", svc.InstallArgs()); ch.Action != "installed" {
		t.Fatalf("install under auth: %+v", res)
	}
	if res := succeed(t, f.env, f.client, "edge-a", "service.example", "greet", map[string]string{"name": "auth"}); res.Stdout != "hello, auth\n" {
		t.Fatalf("greet stdout %q", res.Stdout)
	}
	if n := asked.Load() - busy.Load(); n != 2 {
		t.Errorf("%d seed read requests on %s not answered busy, want 2 (the spec and the script)", n, subjects.SeedFor("edge-a"))
	}

	// The Ghost's own connection has no JetStream API access to the store: it cannot
	// even bind to it, let alone read or write it.
	gjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := gjs.ObjectStore(ctx, bus.BucketSeeds); err == nil {
		t.Fatal("a Ghost bound to edge_seeds through the JetStream API")
	}
}

// The Done-when with the real programs: 'ghostctl run' with a config listing no
// seeds, 'miragectl seed push', 'miragectl issue' of the new seed, 'miragectl ghosts'. A
// spec with an error is refused (exit 2) with the key named, before anything is stored.
func TestSeedPushCLI(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	g := newGhostProc(t, env, "edge-1")
	cfg, err := os.ReadFile(g.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("seeds = ['seed.flow', 'seed.kv']"), []byte("seeds = []"), 1)
	cfg = bytes.Replace(cfg, []byte("seed_allowlist = []"), []byte("seed_allowlist = ['node.*']"), 1)
	if !bytes.Contains(cfg, []byte("seed_allowlist = ['node.*']")) || !bytes.Contains(cfg, []byte("seeds = []")) {
		t.Fatalf("unexpected config from init:\n%s", cfg)
	}
	if err := os.WriteFile(g.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	g.start(m)
	miragectl, _ := testenv.Binaries(t)
	run := func(args ...string) (int, string) {
		p := testenv.Start(t, miragectl, append(args, "--server", env.URL)...)
		return p.Wait(60 * time.Second), p.Output()
	}
	spec := filepath.Join("..", "deploy", "seeds", "node.system.toml")

	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, bytes.Replace(example(t, "node.system.toml"), []byte(`argv = ["uptime"]`), []byte(`argv = ["./uptime"]`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := run("seed", "push", "--target", "edge-1", bad); code != 2 || !strings.Contains(out, "operations.uptime.argv[0]") {
		t.Fatalf("a bad spec: exit %d: %s", code, out)
	}
	if code, out := run("seed", "push", "--target", "edge-1", filepath.Join("..", "deploy", "seeds", "service.example.toml")); code != 2 || !strings.Contains(out, "--file") {
		t.Fatalf("a missing --file: exit %d: %s", code, out)
	}
	if code, out := run("seed", "push", "--target", "edge-1", spec); code != 0 || !strings.Contains(out, "edge-1  success") || !strings.Contains(out, "satisfied") {
		t.Fatalf("seed push: exit %d: %s", code, out)
	}
	if code, out := run("issue", "--target", "edge-1", "node.system", "uname"); code != 0 || !strings.Contains(out, "satisfied") {
		t.Fatalf("issue node.system uname: exit %d: %s", code, out)
	}
	code, out := run("ghosts", "--json")
	var ghosts []mirage.GhostStatus
	if err := json.Unmarshal([]byte(out), &ghosts); code != 0 || err != nil || len(ghosts) != 1 || strings.Join(ghosts[0].Seeds, ",") != "ghost,node.system" {
		t.Fatalf("ghosts --json: exit %d: %s", code, out)
	}
	// The same push again: stored already, installed already, still exit 0.
	if code, out := run("seed", "push", "--target", "edge-1", spec, "--json"); code != 0 || !strings.Contains(out, "already stored") || !strings.Contains(out, `\"action\":\"unchanged\"`) {
		t.Fatalf("re-push: exit %d: %s", code, out)
	}
	// Off the allowlist: refused by the Ghost, exit 1, with a note saying how to allow it
	// in a way that lasts (the config file, not the environment of one run).
	if code, out := run("seed", "push", "--target", "edge-1", filepath.Join("..", "deploy", "seeds", "service.example.toml"),
		"--file", filepath.Join("..", "deploy", "seeds", "service.example.sh")); code != 1 || !strings.Contains(out, "seed_allowlist") ||
		!strings.Contains(out, `note: not on the seed_allowlist of: edge-1; to allow service.example, set seed_allowlist in each Ghost's config file (e.g. seed_allowlist = ["service.*"], or 'ghostctl init --allow-seeds service.*'`) {
		t.Fatalf("push off the allowlist: exit %d: %s", code, out)
	}
	// A target no Ghost registered as: said at once, as issue says it, not only by the
	// timeout at the end.
	if code, out := run("seed", "push", "--target", "nobody-2", spec, "--timeout", "1s"); code != 1 ||
		!strings.Contains(out, "note: not registered with Mirage: nobody-2; a command waits for a Ghost of that id to connect, up to the timeout (1s)") {
		t.Fatalf("push to an unknown target: exit %d: %s", code, out)
	}
}
