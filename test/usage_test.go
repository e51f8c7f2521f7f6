package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// Usage errors (a wrong number of arguments, an unknown or missing subcommand, a missing
// required flag) exit 2 with one line on stderr, whatever part of the command line is
// wrong, and need no server.
func TestUsageErrorsExitTwo(t *testing.T) {
	mctl, gctl := testenv.Binaries(t)
	for _, tc := range []struct {
		bin  string
		args []string
	}{
		{mctl, []string{"report"}},
		{mctl, []string{"attach"}},
		{mctl, []string{"fleet", "add", "edge-1"}},
		{mctl, []string{"seed", "push"}},
		{mctl, []string{"bogus"}},
		{mctl, []string{"up", "extra"}},
		{mctl, []string{"ghosts", "extra"}},
		{mctl, []string{"fleet"}},
		{mctl, []string{"fleet", "bogus"}},
		{mctl, []string{"seed", "pusj", "x.toml"}},
		{mctl, []string{"issue", "--no-such-flag"}},
		{mctl, []string{"report", "int_x", "--wait", "--watch"}},
		{mctl, []string{"up", "--replicas", "6"}},
		{mctl, []string{"up", "--server", "nats://127.0.0.1:1", "--nats-listen", "127.0.0.1:4333"}},
		{mctl, []string{"up", "--server", "nats://127.0.0.1:1", "--sync", "interval"}},
		{mctl, []string{"up", "--server", "nats://127.0.0.1:1", "--sync-interval", "30s"}},
		{mctl, []string{"up", "--sync", "interval", "--sync-interval", "-5s"}},
		{mctl, []string{"up", "--sync", "interval", "--sync-interval", "0s"}},
		{mctl, []string{"up", "--sync-interval", "30s"}},
		{gctl, []string{"init"}},
		{gctl, []string{"init", "--id", "edge-1", "extra"}},
		{gctl, []string{"init", "--id", "edge-1", "--server", "http://foo"}},
		{gctl, []string{"bogus"}},
		{mctl, []string{"issue", "--server", "bogus://x", "--target", "local", "seed.flow", "status"}},
		{mctl, []string{"ghosts", "--server", "http://127.0.0.1:4222"}},
		{mctl, []string{"up", "--server", "http://127.0.0.1:4222"}},
		{mctl, []string{"issue", "--target", "local", "seed.flow", "status", "--max-concurrency", "-1"}},
		{mctl, []string{"issue", "--target", "local", "seed.flow", "status", "--max-errors", "200%"}},
		{mctl, []string{"issue", "--target", "local", "seed.flow", "status", "--timeout", "500us"}},
		{mctl, []string{"issue", "--target", "local", "seed.flow", "status", "--deliver-within", "1us"}},
		{mctl, []string{"fleet", "rm", "a.b"}},
		{mctl, []string{"up", "--auth", "--nats-listen", "foo", "--data-dir", filepath.Join(t.TempDir(), "d")}},
		{mctl, []string{"up", "--auth", "--nats-listen", "127.0.0.1:99999", "--data-dir", filepath.Join(t.TempDir(), "d")}},
		{gctl, []string{"init", "--id", "edge-1", "--out", "/dev/null/x"}},
	} {
		r := execRun(t, tc.bin, nil, tc.args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 2 || len(lines) != 1 || !strings.HasPrefix(lines[0], "error: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one error line", tc.args, r.code, r.stderr)
		}
	}
}

// Either program run without a command prints its help on stderr, nothing on stdout, and
// exits 2, as a group run without one does.
func TestBareProgramsExitTwoWithTheirHelp(t *testing.T) {
	mctl, gctl := testenv.Binaries(t)
	for _, bin := range []string{mctl, gctl} {
		r := execRun(t, bin, nil)
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "Usage:") {
			t.Errorf("%s alone: exit %d, stdout %q, stderr %q; want exit 2 and the help on stderr", filepath.Base(bin), r.code, r.stdout, r.stderr)
		}
		if r := execRun(t, bin, nil, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%s --help: exit %d, stdout %q; want exit 0 and the help", filepath.Base(bin), r.code, r.stdout)
		}
	}
}

// A key file that cannot be read is a config error naming the file and key.
func TestGhostKeyFileErrorNamesTheConfig(t *testing.T) {
	_, gctl := testenv.Binaries(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	missing := filepath.Join(dir, "none.nk")
	if err := os.WriteFile(path, []byte("id = \"edge-k\"\nstate_dir = \"state\"\nauth = true\nnkey_file = \""+missing+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := execRun(t, gctl, nil, "run", "--config", path)
	want := fmt.Sprintf("config %s: key \"nkey_file\": ", path)
	if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, missing) {
		t.Fatalf("exit %d, stderr %q; want exit 2 and one line with %q naming %s", r.code, r.stderr, want, missing)
	}
}

// Against a server no Mirage has run on, the client commands say so and exit 3, rather
// than listing nothing or printing a raw JetStream error.
func TestClientsOnAServerWithoutEdgectl(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	for _, args := range [][]string{{"ghosts"}, {"intents"}, {"report", "int_abc"}} {
		r := miragectl(t, env.URL, args...)
		if r.code != 3 || !strings.Contains(r.stderr, "no edgectl on this server") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit 3 and one line saying the server has no edgectl", args, r.code, r.stderr)
		}
	}
	// Nobody subscribes to mirage.issue: the server says so at once, and so does issue.
	r := miragectl(t, env.URL, "issue", "--target", "local", "seed.flow", "status")
	if r.code != 3 || !strings.Contains(r.stderr, "no Mirage is serving mirage.issue on this server") {
		t.Errorf("issue: exit %d, stderr %q; want exit 3 saying no Mirage is serving mirage.issue", r.code, r.stderr)
	}
}

// A server that cannot be reached is infrastructure unavailable (exit 3), and the error
// names the URL tried and where it came from: --server, or $NATS_URL when that is set.
func TestUnreachableServerNamesTheURLTried(t *testing.T) {
	mctl, _ := testenv.Binaries(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", testenv.FreePort(t))
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"--server", nil, []string{"ghosts", "--server", url}, "check --server " + url},
		{"$NATS_URL", []string{"NATS_URL=" + url}, []string{"ghosts"}, "check $NATS_URL (" + url + ") or pass --server URL"},
	} {
		r := execRun(t, mctl, c.env, c.args...)
		if r.code != 3 || !strings.Contains(r.stderr, c.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%s: exit %d, stderr %q; want exit 3 and one line with %q", c.name, r.code, r.stderr, c.want)
		}
	}
}

// An issue too large to send is the input's fault: exit 2 with the reason, not 3 as if
// the infrastructure were down.
func TestOversizedIssueExitsTwo(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{})
	args := []string{"issue", "--target", "edge-x", "seed.flow", "echo", "--server", env.URL}
	for i := range 10 { // one argument may hold at most 128 KiB (MAX_ARG_STRLEN)
		args = append(args, fmt.Sprintf("a%d=%s", i, strings.Repeat("x", 120<<10)))
	}
	// Run directly: the helpers log their arguments, a megabyte of them here.
	bin, _ := testenv.Binaries(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "NATS_URL=", "EDGE_NKEY=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "the limit is") {
		t.Fatalf("%v, stderr %.300q; want exit 2 naming the size and the limit", err, stderr.String())
	}
}

// 'fleet ls --json' on a fleet with no enrollment prints an empty array, which scripts
// (jq '.[]') can iterate, not null.
func TestEmptyFleetListIsAnEmptyArray(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{})
	r := miragectl(t, env.URL, "fleet", "ls", "--json")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("exit %d, stdout %q; want []", r.code, r.stdout)
	}
}

// A Ghost config error names where the refused value came from: the file and its key, the
// EDGE_ variable that set it, or the flag; and it exits 2.
func TestGhostConfigErrorsNameTheirSource(t *testing.T) {
	_, gctl := testenv.Binaries(t)
	dir := t.TempDir()
	file := func(extra string) string {
		p := filepath.Join(dir, fmt.Sprintf("g%d.toml", len(extra)))
		if err := os.WriteFile(p, []byte("id = \"edge-c\"\nstate_dir = \"state\"\n"+extra), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name  string
		extra string
		env   []string
		want  []string // in stderr
	}{
		{"log format", "log_format = \"yaml\"\n", nil, []string{"log_format", ".toml"}},
		{"negative heartbeat", "heartbeat_interval = \"-5s\"\n", nil, []string{"heartbeat_interval"}},
		{"heartbeat past the stale threshold", "heartbeat_interval = \"90s\"\n", nil, []string{"heartbeat_interval", "stale"}},
		{"negative command age", "command_max_age = \"-1h\"\n", nil, []string{"command_max_age"}},
		{"policy from the environment", "", []string{"EDGE_POLICY=bogus"}, []string{"EDGE_POLICY", "policy"}},
		{"labels from the environment", "", []string{"EDGE_LABELS=role=db"}, []string{"EDGE_LABELS"}},
		{"server scheme", "server = \"http://127.0.0.1:4222\"\n", nil, []string{"server", `scheme "http"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := execRun(t, gctl, tc.env, "seeds", "--config", file(tc.extra))
			if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q; want exit 2 and one line", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not name %q", r.stderr, w)
				}
			}
		})
	}
}

// A daemon that cannot start in its environment (here a state or data directory that
// cannot be made, a metrics port in use) exits 3, not 1, which says an intent finished unsatisfied.
func TestDaemonsThatCannotStartExitThree(t *testing.T) {
	mctl, gctl := testenv.Binaries(t)
	blocker := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "g.toml")
	if err := os.WriteFile(cfg, []byte("id = \"edge-d\"\npolicy = \"headless\"\nstate_dir = \""+filepath.Join(blocker, "state")+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, args := range [][]string{
		{mctl, "up", "--data-dir", filepath.Join(blocker, "data"), "--nats-listen", "127.0.0.1:0"},
		{gctl, "run", "--config", cfg},
		{mctl, "up", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--metrics-listen", busy.Addr().String()},
	} {
		r := execRun(t, args[0], nil, args[1:]...)
		if r.code != 3 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit 3 and one line", args[1:], r.code, r.stderr)
		}
	}
}

// A ghostctl stopped by SIGINT while it is still starting (policy required: it waits for
// Mirage's register.ack) exits 0, as 'ghostctl run --help' promises for SIGINT, not 3 with
// "context canceled".
func TestGhostctlInterruptedWhileStartingExitsZero(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	const id = "edge-int"
	_, ghostctl := testenv.Binaries(t)
	dir := filepath.Join(t.TempDir(), id)
	init := testenv.Start(t, ghostctl, "init", "--id", id, "--out", dir, "--server", env.URL, "--policy", "required", "--seeds", "seed.flow")
	if code := init.Wait(30 * time.Second); code != 0 {
		t.Fatalf("ghostctl init exited %d: %s", code, init.Output())
	}
	// A Mirage that never answers: the Ghost keeps registering.
	registering := registrations(t, env.Conn("silent mirage"), id)
	proc := testenv.Start(t, ghostctl, "run", "--config", filepath.Join(dir, "config.toml"))
	select {
	case <-registering:
	case <-time.After(30 * time.Second):
		t.Fatalf("ghostctl never registered:\n%s", proc.Output())
	}
	proc.Interrupt()
	if code := proc.Wait(8 * time.Second); code != 0 {
		t.Fatalf("ghostctl interrupted while registering exited %d, want 0:\n%s", code, proc.Output())
	}
	if strings.Contains(proc.Output(), "error:") {
		t.Fatalf("ghostctl interrupted while registering printed an error:\n%s", proc.Output())
	}
}

// fleet add and rm against a server without authentication warn that enrollment is not
// enforced there (the change is recorded, but any Ghost connects). What 'fleet rm' says of
// the running Ghost holds: it is out of the registry (and so of 'ghosts' and of globs)
// while it keeps running, and back once it registers again, here on attach.
func TestFleetWithoutAuthWarns(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-1", testenv.Tune(func(c *ghost.Config) { c.HeartbeatInterval = 200 * time.Millisecond }))
	id, err := bus.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"fleet", "add", "edge-1", id.PublicKey()}, {"fleet", "rm", "edge-1"}} {
		r := miragectl(t, env.URL, args...)
		if r.code != 0 || !strings.Contains(r.stderr, "warning: enrollment is not enforced") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want exit 0 and one warning line", args, r.code, r.stderr)
		}
		if args[1] == "rm" && !strings.Contains(r.stderr, "globs, label selectors and all leave it out") || args[1] == "rm" && !strings.Contains(r.stderr, "miragectl attach edge-1") {
			t.Errorf("fleet rm: stderr %q; want when edge-1 registers again", r.stderr)
		}
	}
	// Its heartbeats go on, and do not bring it back.
	time.Sleep(time.Second)
	if _, ok := m.Fleet().Get("edge-1"); ok {
		t.Fatal("edge-1 is in the registry again after fleet rm, before it registered again")
	}
	if r := miragectl(t, env.URL, "issue", "--target", "edge-*", "seed.flow", "status"); r.code != 2 {
		t.Errorf("issue --target 'edge-*' after fleet rm: exit %d, stderr %q; want it refused, no Ghost matching", r.code, r.stderr)
	}
	if r := miragectl(t, env.URL, "attach", "edge-1"); r.code != 0 {
		t.Fatalf("attach edge-1: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, ok := m.Fleet().Get("edge-1"); !ok {
		t.Fatal("edge-1 is not in the registry after attach")
	}
}

// A fleet of ten thousand enrolled Ghosts takes more than one message (about 130 bytes a
// Ghost): 'fleet add' still gets Mirage's answer (it no longer carries the whole fleet),
// and 'fleet ls' lists every one (it reads KV edge_fleet).
func TestFleetOfTenThousandEnrolled(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(env.Conn("enroller"), jetstream.WithPublishAsyncMaxPending(1<<15))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const n = 10_000
	key := func() string {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		return pub
	}
	var acks []jetstream.PubAckFuture
	for i := range n {
		id := fmt.Sprintf("edge-%05d", i)
		data, err := json.Marshal(mirage.Enrollment{GhostID: id, PublicKey: key(), EnrolledMS: time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		f, err := js.PublishAsync("$KV."+bus.BucketFleet+"."+id, data)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("enrollments not stored")
		}
	}
	env.StartMirage(mirage.Config{}) // reads the ten thousand

	if r := miragectl(t, env.URL, "fleet", "add", "edge-new", key()); r.code != 0 || !strings.Contains(r.stdout, "enrolled edge-new") {
		t.Fatalf("fleet add beside %d enrolled: exit %d, stdout %q, stderr %q; want it enrolled", n, r.code, r.stdout, r.stderr)
	}
	r := miragectl(t, env.URL, "fleet", "ls", "--json")
	var fleet []mirage.Enrollment
	if err := json.Unmarshal([]byte(r.stdout), &fleet); r.code != 0 || err != nil {
		t.Fatalf("fleet ls: exit %d, %v", r.code, err)
	}
	if len(fleet) != n+1 || fleet[n].GhostID != "edge-new" {
		t.Fatalf("fleet ls lists %d enrolled, want %d ending with edge-new", len(fleet), n+1)
	}
	// Mirage's own list request says why it cannot answer with the fleet.
	msg, err := env.Conn("operator").Request(subjects.FleetList, nil, 10*time.Second)
	if err != nil {
		t.Fatalf("mirage.fleet.list: %v, want an answer", err)
	}
	var reply mirage.FleetReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Status != "rejected" || reply.Error == nil || reply.Error.Code != bus.CodeTooLarge || !strings.Contains(reply.Error.Message, bus.BucketFleet) {
		t.Fatalf("mirage.fleet.list of %d: %s (%v); want a 1101 refusal pointing at KV %s", n+1, msg.Data, err, bus.BucketFleet)
	}
}

// 'miragectl up' stopped by SIGINT or SIGTERM while it is still starting (here: trying a
// server that accepts the connection and never speaks) exits 0 at once, as a stop asked
// for, not 3 once the attempt gives up.
func TestUpInterruptedWhileStartingExitsZero(t *testing.T) {
	mctl, _ := testenv.Binaries(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent: no INFO ever
		}
	}()
	p := testenv.Start(t, mctl, "up", "--server", "nats://"+ln.Addr().String(), "--data-dir", filepath.Join(t.TempDir(), "d"))
	time.Sleep(500 * time.Millisecond)
	begun := time.Now()
	if code := p.Stop(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM while starting, want 0:\n%s", code, p.Output())
	}
	if took := time.Since(begun); took > 3*time.Second {
		t.Fatalf("it took %s to stop, want at once", took)
	}
	if !strings.Contains(p.Output(), "stopped while starting") {
		t.Fatalf("no 'stopped while starting' in:\n%s", p.Output())
	}
}

// An issue nobody answers in time (a Mirage that took it but answers late, or one that is
// stuck) exits 3 naming the intent's id, so that the operator checks it before issuing
// again, which would be a second intent running the same commands.
func TestUnansweredIssueNamesItsIntent(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	silent := env.Conn("a Mirage that does not answer")
	if _, err := silent.Subscribe(subjects.Issue, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := silent.Flush(); err != nil {
		t.Fatal(err)
	}
	r := miragectl(t, env.URL, "issue", "--target", "edge-1", "seed.flow", "status")
	if r.code != 3 || !strings.Contains(r.stderr, "miragectl report int_") {
		t.Fatalf("exit %d, stderr %q; want exit 3 naming 'miragectl report <intent_id>'", r.code, r.stderr)
	}
}

// Exit 1 says an intent finished unsatisfied. A client that gets an answer it cannot read
// (something other than a Mirage of this version on the subject) has no intent to judge:
// it is the infrastructure that failed, exit 3, and 'ghostctl seeds' that cannot set up a
// seed's directory under its state directory exits 3 as 'ghostctl run' does.
func TestUnreadableAnswersAndStateExitThree(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	nc := env.Conn("not-mirage")
	for _, subject := range []string{subjects.Attach, subjects.FleetAdd} {
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) { _ = m.Respond([]byte("not json")) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	key, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey()
	for _, args := range [][]string{{"attach", "edge-1"}, {"fleet", "add", "edge-1", pub}} {
		r := miragectl(t, env.URL, args...)
		if r.code != 3 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "malformed") {
			t.Errorf("%v: exit %d, stderr %q; want exit 3 and one line saying the answer was malformed", args, r.code, r.stderr)
		}
	}

	_, gctl := testenv.Binaries(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "state", "files"), nil, 0o600); err != nil { // seed.fs's root
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte("id = \"edge-s\"\nstate_dir = \"state\"\nseeds = [\"seed.fs\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := execRun(t, gctl, nil, "seeds", "--config", cfg); r.code != 3 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("seeds: exit %d, stderr %q; want exit 3 and one line", r.code, r.stderr)
	}
}
