package test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
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

// ghostProc is a real ghostctl process with a config made by 'ghostctl init'.
type ghostProc struct {
	t      *testing.T
	bin    string
	id     string
	dir    string
	config string
	proc   *testenv.Process
}

func newGhostProc(t *testing.T, env *testenv.Env, id string) *ghostProc {
	t.Helper()
	_, ghostctl := testenv.Binaries(t)
	dir := filepath.Join(t.TempDir(), id)
	init := testenv.Start(t, ghostctl, "init", "--id", id, "--out", dir, "--server", env.URL, "--seeds", "seed.flow,seed.kv")
	if code := init.Wait(30 * time.Second); code != 0 {
		t.Fatalf("ghostctl init exited %d: %s", code, init.Output())
	}
	return &ghostProc{t: t, bin: ghostctl, id: id, dir: dir, config: filepath.Join(dir, "config.toml")}
}

func (g *ghostProc) start(m *mirage.Mirage) {
	g.t.Helper()
	before := int64(0)
	if rec, ok := m.Fleet().Get(g.id); ok {
		before = rec.RegisteredMS
	}
	g.proc = testenv.Start(g.t, g.bin, "run", "--config", g.config, "--log-level", "debug")
	testenv.Eventually(g.t, 20*time.Second, g.id+" to register", func() bool {
		rec, ok := m.Fleet().Get(g.id)
		return ok && rec.RegisteredMS > before
	})
}

// kill -9 of a ghostctl process during seed.flow sleep: the operation is idempotent, so it
// runs again after the restart, and the intent ends satisfied with one event.
func TestKillGhostDuringIdempotentExecution(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	g := newGhostProc(t, env, "edge-k9")
	g.start(m)
	client := env.Client()
	is := testenv.NewIssue("edge-k9", "seed.flow", "sleep", map[string]string{"ms": "1500"}, 30*time.Second)
	issueNoWait(t, client, is)
	time.Sleep(500 * time.Millisecond) // well inside the sleep
	g.proc.Kill()
	g.start(m)
	r := waitReport(t, client, is.IntentID, 20*time.Second)
	if r.Phase != bus.PhaseSatisfied {
		t.Fatalf("after kill -9 and restart: %s %+v", r.Summary, r.Results)
	}
	if n := eventsFor(t, env, env.JetStream(), mirage.CommandID(is.IntentID, 0)); n != 1 {
		t.Fatalf("%d events for the command, want 1", n)
	}
}

// kill -9 of a ghostctl process while seed.kv incr commands stream in: after the restart
// every intent has exactly one terminal outcome and every command one event; none is
// silently run twice (an incr caught mid-way ends as interrupted, 1700).
func TestKillGhostDuringNonIdempotentStream(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	g := newGhostProc(t, env, "edge-incr")
	g.start(m)
	client := env.Client()
	var intents []*bus.Issue
	for i := 0; i < 40; i++ {
		is := testenv.NewIssue("edge-incr", "seed.kv", "incr", map[string]string{"key": "hits"}, 30*time.Second)
		issueNoWait(t, client, is)
		intents = append(intents, is)
		if i == 20 {
			g.proc.Kill()
		}
	}
	g.start(m)
	js := env.JetStream()
	for _, is := range intents {
		r := waitReport(t, client, is.IntentID, 20*time.Second)
		res := r.Results[0]
		switch {
		case r.Phase == bus.PhaseSatisfied:
		case res.Error != nil && res.Error.Code == bus.CodeInterrupted:
		default:
			t.Errorf("intent %s: %s %+v", is.IntentID, r.Summary, res)
		}
	}
	counts := map[string]int{}
	for _, ev := range env.Events(js) {
		counts[ev.CommandID]++
	}
	for _, is := range intents {
		if n := counts[mirage.CommandID(is.IntentID, 0)]; n != 1 {
			t.Errorf("%d events for intent %s, want 1", n, is.IntentID)
		}
	}
}

// The exact state kill -9 leaves when it lands inside seed.kv incr: "started" recorded,
// no event. On restart the non-idempotent incr is not run again: its intent fails with
// interrupted (1700), and the counter was never incremented.
func TestCrashInsideNonIdempotentExecutionIsInterrupted(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	g := newGhostProc(t, env, "edge-crash")
	g.start(m)
	if code := g.proc.Stop(15 * time.Second); code != 0 {
		t.Fatalf("ghostctl exited %d on SIGTERM, want 0", code)
	}
	client := env.Client()
	is := testenv.NewIssue("edge-crash", "seed.kv", "incr", map[string]string{"key": "once"}, 30*time.Second)
	issueNoWait(t, client, is)

	// Record "started" for the command, as the Ghost does just before the seed runs.
	ctx := context.Background()
	stream, err := env.JetStream().Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	// The answer to an issue does not wait for its commands' store acks: wait for it.
	var raw *jetstream.RawStreamMsg
	testenv.Eventually(t, 10*time.Second, "the command stored in EDGE_CMD", func() bool {
		raw, err = stream.GetLastMsgForSubject(ctx, subjects.Command("edge-crash"))
		return err == nil
	})
	var cmd bus.Command
	if err := bus.Decode(raw.Data, &cmd); err != nil {
		t.Fatal(err)
	}
	store, err := ghost.OpenBoltStore(filepath.Join(g.dir, "state", "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	exec := ghost.Execution{ExecutionID: subjects.NewID(subjects.PrefixExecution), CommandID: cmd.CommandID, MessageID: cmd.MessageID,
		IntentID: cmd.IntentID, TraceID: cmd.TraceID, SeedID: cmd.SeedSelector, Operation: cmd.Operation, Args: cmd.Args,
		Idempotent: false, StartedMS: time.Now().UnixMilli(), Command: &cmd}
	if _, fresh, err := store.Begin(ctx, exec); err != nil || !fresh {
		t.Fatalf("begin: fresh %v err %v", fresh, err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	g.start(m)
	r := waitReport(t, client, is.IntentID, 20*time.Second)
	res := r.Results[0]
	if r.Phase != bus.PhaseFailed || res.Error == nil || res.Error.Code != bus.CodeInterrupted || res.Error.Class != bus.ClassInterrupted || res.ExecutionID != exec.ExecutionID {
		t.Fatalf("report %s, result %+v", r.Summary, res)
	}
	get := env.Run(client, testenv.NewIssue("edge-crash", "seed.kv", "get", map[string]string{"key": "once"}, 10*time.Second))
	if get.Phase != bus.PhaseFailed || get.Results[0].Error == nil {
		t.Fatalf("the interrupted incr ran after all: get returned %+v", get.Results[0])
	}
}

// kill -9 of a Mirage process (miragectl up against an existing server) mid-intent, then a
// restart: the intent completes with every result counted once.
func TestKillMirageMidIntent(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	miragectl, _ := testenv.Binaries(t)
	data := t.TempDir()
	up := func() *testenv.Process {
		p := testenv.Start(t, miragectl, "up", "--server", env.URL, "--no-local-ghost", "--data-dir", data)
		testenv.Eventually(t, 20*time.Second, "Mirage to serve", func() bool {
			nc := env.Conn("probe")
			defer nc.Close()
			_, err := nc.Request(subjects.Issue, []byte("ping"), time.Second)
			return err == nil
		})
		return p
	}
	p := up()
	a := newFixture(t, env, "edge-m1")
	b := newFixture(t, env, "edge-m2")
	a.start()
	b.start()
	client := env.Client()
	incr := testenv.NewIssue("edge-m1,edge-m2", "seed.kv", "incr", map[string]string{"key": "k"}, 30*time.Second)
	sleep := testenv.NewIssue("edge-m1,edge-m2", "seed.flow", "sleep", map[string]string{"ms": "800"}, 30*time.Second)
	issueNoWait(t, client, incr)
	issueNoWait(t, client, sleep)
	time.Sleep(150 * time.Millisecond)
	p.Kill()
	time.Sleep(time.Second)
	up()
	for _, is := range []*bus.Issue{incr, sleep} {
		r := waitReport(t, client, is.IntentID, 20*time.Second)
		if r.Phase != bus.PhaseSatisfied || r.Counts != (bus.Counts{Targets: 2, Success: 2}) {
			t.Fatalf("after kill -9 of Mirage: %s %+v", r.Summary, r.Counts)
		}
	}
	for _, f := range []*fixture{a, b} {
		if got := f.counter("k"); got != "1" {
			t.Fatalf("%s counter %q, want 1", f.id, got)
		}
	}
}

// kill -9 of 'miragectl up', which runs Mirage, its embedded nats-server and the local
// Ghost in one process, right after intents were accepted; then 'up' again on the same data
// directory: every accepted intent gets its terminal report, satisfied. With --sync
// interval too: nats-server writes each message to its file before acknowledging it and
// only fsyncs later, so a process crash loses nothing (an OS crash may lose the last
// interval). With --auth the store is that of account EDGE (natsd/accounts.go).
func TestKillUpWithItsEmbeddedServerLosesNoAcceptedIntent(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"always", []string{"--sync", "always"}},
		{"interval", []string{"--sync", "interval"}},
		{"interval-auth", []string{"--sync", "interval", "--auth"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			miragectl, _ := testenv.Binaries(t)
			data := t.TempDir()
			listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			auth := slices.Contains(tt.args, "--auth")
			up := func() (*testenv.Process, *mirage.Client) {
				p := testenv.Start(t, miragectl, append([]string{"up", "--data-dir", data, "--nats-listen", listen}, tt.args...)...)
				var opts []nats.Option
				var nc *nats.Conn
				testenv.Eventually(t, 30*time.Second, "up to serve", func() bool {
					if auth && opts == nil {
						op, err := bus.LoadIdentity(filepath.Join(data, "keys", "operator.nk"))
						if err != nil {
							return false
						}
						opts = []nats.Option{op.NATSOption()}
					}
					c, err := nats.Connect("nats://"+listen, opts...)
					if err != nil {
						return false
					}
					if _, err := c.Request(subjects.Issue, []byte("ping"), time.Second); err != nil {
						c.Close()
						return false
					}
					nc = c
					return true
				})
				t.Cleanup(nc.Close)
				client, err := mirage.NewClient(nc)
				if err != nil {
					t.Fatal(err)
				}
				return p, client
			}
			p, client := up()
			// The local Ghost is registered once an intent to it is satisfied.
			warm := testenv.NewIssue("local", "seed.flow", "status", nil, 30*time.Second)
			issueNoWait(t, client, warm)
			if r := waitReport(t, client, warm.IntentID, 30*time.Second); r.Phase != bus.PhaseSatisfied {
				t.Fatalf("first intent: %s", r.Summary)
			}
			var accepted []*bus.Issue
			for i := 0; i < 20; i++ {
				is := testenv.NewIssue("local", "seed.flow", "sleep", map[string]string{"ms": "1000"}, 60*time.Second)
				issueNoWait(t, client, is)
				accepted = append(accepted, is)
			}
			p.Kill()
			_, client = up()
			for _, is := range accepted {
				r := waitReport(t, client, is.IntentID, 60*time.Second)
				if r.Phase != bus.PhaseSatisfied || r.Counts != (bus.Counts{Targets: 1, Success: 1}) {
					t.Fatalf("accepted intent %s after kill -9 of up: %s %+v", is.IntentID, r.Summary, r.Counts)
				}
			}
		})
	}
}

// A second 'miragectl up' on a data directory another one serves is refused at once, before
// it opens anything there (two nats-servers on one JetStream store corrupt it): exit 3, one
// line naming the directory and the holder's pid. The first keeps serving, and once it has
// stopped the directory is free again.
func TestSecondUpOnTheSameDataDirIsRefused(t *testing.T) {
	miragectl, _ := testenv.Binaries(t)
	data := t.TempDir()
	first := testenv.Start(t, miragectl, "up", "--data-dir", data, "--nats-listen", "127.0.0.1:0")
	url := waitUp(t, first)
	for _, extra := range [][]string{nil, {"--no-local-ghost"}} {
		r := execRun(t, miragectl, nil, append([]string{"up", "--data-dir", data, "--nats-listen", "127.0.0.1:0"}, extra...)...)
		want := fmt.Sprintf("%s is in use by another miragectl up (pid %d)", data, first.Pid())
		if r.code != 3 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, want) {
			t.Fatalf("second up %v: exit %d, stderr %q; want exit 3 and one line with %q", extra, r.code, r.stderr, want)
		}
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	client, err := mirage.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	is := testenv.NewIssue("local", "seed.flow", "status", nil, 30*time.Second)
	issueNoWait(t, client, is)
	if r := waitReport(t, client, is.IntentID, 30*time.Second); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("the first up after the refused second: %s", r.Summary)
	}
	nc.Close()
	if code := first.Stop(30 * time.Second); code != 0 {
		t.Fatalf("first up exited %d", code)
	}
	again := testenv.Start(t, miragectl, "up", "--data-dir", data, "--nats-listen", "127.0.0.1:0")
	waitUp(t, again)
	if code := again.Stop(30 * time.Second); code != 0 {
		t.Fatalf("up after the first stopped exited %d", code)
	}
}
