package test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// fixture is a Ghost whose store and kv seed outlive it, so that a test can stop it and
// start it again as the same machine.
type fixture struct {
	env   *testenv.Env
	id    string
	path  string
	kv    *kv.Seed
	reg   *ghost.Registry
	store *ghost.BoltStore
	g     *ghost.Ghost
}

func newFixture(t *testing.T, env *testenv.Env, id string) *fixture {
	t.Helper()
	f := &fixture{env: env, id: id, path: filepath.Join(t.TempDir(), "executions.db"), kv: kv.New(), reg: ghost.NewRegistry()}
	for _, s := range []ghost.Seed{f.kv, flow.New()} {
		if err := f.reg.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// start runs the Ghost (again) on its store, on nc when given.
func (f *fixture) start(opts ...testenv.GhostOption) *ghost.Ghost {
	f.env.T.Helper()
	store, err := ghost.OpenBoltStore(f.path, ghost.BoltOptions{})
	if err != nil {
		f.env.T.Fatal(err)
	}
	f.store = store
	f.env.T.Cleanup(func() { _ = store.Close() })
	f.g = f.env.StartGhost(f.id, append([]testenv.GhostOption{testenv.Store(store), testenv.WithRegistry(f.reg)}, opts...)...)
	return f.g
}

// stop stops the Ghost and closes its store.
func (f *fixture) stop() {
	_ = f.g.Close()
	_ = f.store.Close()
}

func (f *fixture) counter(key string) string {
	v, _ := f.kv.Value(key)
	return v
}

func issueNoWait(t *testing.T, c *mirage.Client, is *bus.Issue) {
	t.Helper()
	if _, err := c.Issue(context.Background(), is); err != nil {
		t.Fatalf("issue: %v", err)
	}
}

func waitReport(t *testing.T, c *mirage.Client, intentID string, within time.Duration) *bus.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	r, err := c.WaitTerminal(ctx, intentID)
	if err != nil {
		t.Fatalf("no terminal report for %s within %s: %v", intentID, within, err)
	}
	return r
}

// eventsFor counts the events stored for a command.
func eventsFor(t *testing.T, env *testenv.Env, js jetstream.JetStream, commandID string) int {
	n := 0
	for _, ev := range env.Events(js) {
		if ev.CommandID == commandID {
			n++
		}
	}
	return n
}

// Commands issued while the Ghost is stopped run once when it comes back; a restart after
// that replays nothing.
func TestOfflineGhostRunsMissedCommandsOnce(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	f := newFixture(t, env, "edge-off")
	f.start()
	f.stop()
	client := env.Client()
	first := testenv.NewIssue("edge-off", "seed.kv", "incr", map[string]string{"key": "c"}, 20*time.Second)
	second := testenv.NewIssue("edge-off", "seed.kv", "incr", map[string]string{"key": "c"}, 20*time.Second)
	issueNoWait(t, client, first)
	issueNoWait(t, client, second)
	time.Sleep(300 * time.Millisecond)
	if r, err := client.LatestReport(context.Background(), first.IntentID); err != nil || bus.Terminal(r.Phase) {
		t.Fatalf("while the ghost is down the intent should be open: %+v %v", r, err)
	}
	f.start()
	for _, is := range []*bus.Issue{first, second} {
		if r := waitReport(t, client, is.IntentID, 15*time.Second); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("after the ghost came back: %s", r.Summary)
		}
	}
	if got := f.counter("c"); got != "2" {
		t.Fatalf("counter %q after two incr, want 2", got)
	}
	// Another restart: the replay position is kept, nothing runs again.
	f.stop()
	f.start()
	time.Sleep(500 * time.Millisecond)
	if got := f.counter("c"); got != "2" {
		t.Fatalf("counter %q after a restart, want 2 (a command ran twice)", got)
	}
}

// A command that reaches its Ghost after deliver_by_ms is not executed: it ends expired,
// distinct from error and timeout.
func TestCommandPastDeliveryDeadlineExpires(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	f := newFixture(t, env, "edge-late")
	f.start()
	f.stop()
	client := env.Client()
	is := testenv.NewIssue("edge-late", "seed.kv", "incr", map[string]string{"key": "late"}, 20*time.Second)
	is.DeliverByMS = time.Now().Add(300 * time.Millisecond).UnixMilli()
	issueNoWait(t, client, is)
	time.Sleep(700 * time.Millisecond)
	f.start()
	r := waitReport(t, client, is.IntentID, 15*time.Second)
	res := r.Results[0]
	if r.Phase != bus.PhaseFailed || r.Counts.Expired != 1 || res.Outcome != bus.OutcomeExpired || res.Error == nil || res.Error.Code != bus.CodeExpired {
		t.Fatalf("report %s %+v, result %+v", r.Summary, r.Counts, res)
	}
	if got := f.counter("late"); got != "" {
		t.Fatalf("an expired command ran: counter %q", got)
	}
}

// A Ghost that loses NATS mid-intent (a real TCP cut) finishes what it was running,
// stores its event once it is back, and runs the command issued while it was cut off.
func TestGhostDisconnectMidIntent(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{})
	proxy := testenv.NewProxy(t, env.Server.Addr().String())
	f := newFixture(t, env, "edge-net")
	f.start(testenv.Via(env.URLConn("ghost edge-net", proxy.URL(), bus.GhostRequests())))
	client := env.Client()

	sleep := testenv.NewIssue("edge-net", "seed.flow", "sleep", map[string]string{"ms": "700"}, 20*time.Second)
	issueNoWait(t, client, sleep)
	cmdID := mirage.CommandID(sleep.IntentID, 0)
	testenv.Eventually(t, 5*time.Second, "the sleep to start", func() bool {
		_, err := f.store.GetByCommandID(context.Background(), cmdID)
		return err == nil
	})
	proxy.Cut()
	incr := testenv.NewIssue("edge-net", "seed.kv", "incr", map[string]string{"key": "n"}, 20*time.Second)
	issueNoWait(t, client, incr)
	time.Sleep(1200 * time.Millisecond) // the sleep ends while cut off: its event waits
	proxy.Restore()
	for _, is := range []*bus.Issue{sleep, incr} {
		if r := waitReport(t, client, is.IntentID, 15*time.Second); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("after reconnect: %s", r.Summary)
		}
	}
	if got := f.counter("n"); got != "1" {
		t.Fatalf("counter %q, want 1", got)
	}
	js := env.JetStream()
	for _, id := range []string{cmdID, mirage.CommandID(incr.IntentID, 0)} {
		if n := eventsFor(t, env, js, id); n != 1 {
			t.Errorf("%d events stored for %s, want 1", n, id)
		}
	}
}

// The same command published three more times (same and different Nats-Msg-Id, and on core
// NATS) runs once; the same event published three times is counted once.
func TestDuplicateCommandsAndEventsCountOnce(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	f := newFixture(t, env, "edge-dup")
	f.start()
	client := env.Client()
	is := testenv.NewIssue("edge-dup", "seed.kv", "incr", map[string]string{"key": "d"}, 10*time.Second)
	if r := env.Run(client, is); r.Phase != bus.PhaseSatisfied {
		t.Fatal(r.Summary)
	}
	ctx := context.Background()
	js := env.JetStream()
	stream, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetLastMsgForSubject(ctx, subjects.Command("edge-dup"))
	if err != nil {
		t.Fatal(err)
	}
	cmdID := mirage.CommandID(is.IntentID, 0)
	if ack, err := js.PublishMsg(ctx, bus.NewMsg(raw.Subject, raw.Data, cmdID, is.TraceID)); err != nil || !ack.Duplicate {
		t.Fatalf("same Nats-Msg-Id: ack %+v err %v, want a duplicate", ack, err)
	}
	for _, msgID := range []string{"other-1", "other-2"} {
		if _, err := js.PublishMsg(ctx, bus.NewMsg(raw.Subject, raw.Data, msgID, is.TraceID)); err != nil {
			t.Fatal(err)
		}
	}
	nc := env.Conn("replayer")
	if err := nc.Publish(raw.Subject, raw.Data); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := f.counter("d"); got != "1" {
		t.Fatalf("counter %q after duplicates, want 1", got)
	}
	if n := eventsFor(t, env, js, cmdID); n != 1 {
		t.Fatalf("%d events stored, want 1: a re-sent event is the same event", n)
	}
	// The event itself, three more times under other message ids.
	evts := env.Events(js)
	evData, err := bus.Encode(&evts[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, msgID := range []string{"e1", "e2", "e3"} {
		if _, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Event("edge-dup"), evData, msgID, is.TraceID)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.Consumer(ctx, bus.StreamEvents, mirage.EventsConsumer)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "Mirage to read every event", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	r, err := client.LatestReport(ctx, is.IntentID)
	if err != nil || r.Counts != (bus.Counts{Targets: 1, Success: 1}) {
		t.Fatalf("report after duplicate events: %+v %v", r, err)
	}
}

// Mirage stops mid-intent and a new one takes over: the intent completes with every result
// counted once, and re-dispatching its commands runs nothing twice.
func TestMirageRestartMidIntent(t *testing.T) {
	env := testenv.New(t)
	m1 := env.StartMirage(mirage.Config{})
	a, b := newFixture(t, env, "edge-a"), newFixture(t, env, "edge-b")
	a.start()
	b.start()
	client := env.Client()
	sleep := testenv.NewIssue("edge-a,edge-b", "seed.flow", "sleep", map[string]string{"ms": "600"}, 20*time.Second)
	incr := testenv.NewIssue("edge-a,edge-b", "seed.kv", "incr", map[string]string{"key": "m"}, 20*time.Second)
	issueNoWait(t, client, sleep)
	issueNoWait(t, client, incr)
	time.Sleep(100 * time.Millisecond)
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(900 * time.Millisecond) // events land in EDGE_EVT with no Mirage reading
	env.StartMirage(mirage.Config{})
	for _, is := range []*bus.Issue{sleep, incr} {
		r := waitReport(t, client, is.IntentID, 15*time.Second)
		if r.Phase != bus.PhaseSatisfied || r.Counts != (bus.Counts{Targets: 2, Success: 2}) {
			t.Fatalf("after Mirage restart: %s %+v", r.Summary, r.Counts)
		}
	}
	for _, f := range []*fixture{a, b} {
		if got := f.counter("m"); got != "1" {
			t.Fatalf("%s counter %q, want 1", f.id, got)
		}
	}
}

// The NATS server restarts on the same store while work is in flight: Ghost and Mirage
// reconnect and the intent completes.
func TestNATSRestartMidIntent(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirageOn(env.URLConn("mirage", ""), mirage.Config{})
	f := newFixture(t, env, "edge-r")
	f.start(testenv.Via(env.URLConn("ghost edge-r", "", bus.GhostRequests())))
	client, err := mirage.NewClient(env.URLConn("client", ""))
	if err != nil {
		t.Fatal(err)
	}
	sleep := testenv.NewIssue("edge-r", "seed.flow", "sleep", map[string]string{"ms": "800"}, 30*time.Second)
	incr := testenv.NewIssue("edge-r", "seed.kv", "incr", map[string]string{"key": "r"}, 30*time.Second)
	issueNoWait(t, client, sleep)
	issueNoWait(t, client, incr)
	time.Sleep(200 * time.Millisecond)
	env.RestartServer(500 * time.Millisecond)
	for _, is := range []*bus.Issue{sleep, incr} {
		if r := waitReport(t, client, is.IntentID, 20*time.Second); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("after the server restart: %s", r.Summary)
		}
	}
	if got := f.counter("r"); got != "1" {
		t.Fatalf("counter %q, want 1", got)
	}
}
