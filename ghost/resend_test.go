package ghost_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// publishAttempts records every publish of an event on evt.<id>, stored or refused, seen
// by a core subscription.
type publishAttempts struct {
	mu  sync.Mutex
	ids []string // event_id of each attempt, in order
}

func watchPublishes(t *testing.T, env *testenv.Env, id string) *publishAttempts {
	t.Helper()
	a := &publishAttempts{}
	nc := env.Conn("observer")
	sub, err := nc.Subscribe(subjects.Event(id), func(m *nats.Msg) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.ids = append(a.ids, m.Header.Get(bus.HeaderMsgID))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return a
}

// since returns how many attempts were seen from the n-th on, and how many distinct events.
func (a *publishAttempts) since(n int) (attempts, events int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	for _, id := range a.ids[n:] {
		seen[id] = true
	}
	return len(a.ids) - n, len(seen)
}

func (a *publishAttempts) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ids)
}

// sendLive publishes a seed.flow status command for ghostID on core NATS, as a live
// command arrives (EDGE_CMD stores it too).
func sendLive(t *testing.T, nc *nats.Conn, ghostID string) string {
	t.Helper()
	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: ghostID, SeedSelector: "seed.flow", Operation: "status",
		DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 5000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishMsg(bus.NewMsg(subjects.Command(ghostID), data, cmd.CommandID, cmd.TraceID)); err != nil {
		t.Fatal(err)
	}
	return cmd.CommandID
}

// A Ghost without a Mirage never gets an event.ack. The events EDGE_EVT confirmed are not
// published again on every reconnect (past the 15-minute duplicate window each copy would
// be stored again): Mirage's durable consumer holds them. A Mirage that announces itself
// is a reason: what it has not acknowledged is sent once more.
func TestGhostWithoutMirageDoesNotRepublishStoredEventsOnReconnect(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	proxy := testenv.NewProxy(t, env.Server.Addr().String())
	const id = "edge-alone"
	const n = 40
	var cmds []string
	for range n {
		c, _ := storeCommand(t, env, id, "status", nil)
		cmds = append(cmds, c)
	}
	attempts := watchPublishes(t, env, id)
	gc := env.URLConn("ghost "+id, proxy.URL(), nats.ReconnectWait(20*time.Millisecond))
	g := env.StartGhost(id, testenv.Via(gc), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "every event stored and marked so", func() bool {
		for _, c := range cmds {
			if e, err := g.Store().GetByCommandID(ctx, c); err != nil || !e.Stored {
				return false
			}
		}
		return true
	})

	before := attempts.count()
	for range 3 {
		proxy.Cut()
		testenv.Eventually(t, 5*time.Second, "disconnect", func() bool { return !gc.IsConnected() })
		proxy.Restore()
		testenv.Eventually(t, 5*time.Second, "reconnect", func() bool { return gc.IsConnected() })
		time.Sleep(500 * time.Millisecond) // the reconnect's re-send, had there been one
	}
	if got, _ := attempts.since(before); got != 0 {
		t.Fatalf("%d events published again over 3 reconnects with no Mirage; want none", got)
	}

	before = attempts.count()
	ann := bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "stand-in"}
	data, err := bus.Encode(&ann)
	if err != nil {
		t.Fatal(err)
	}
	mc := env.Conn("mirage")
	if err := mc.Publish(subjects.Announce, data); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the unacknowledged events sent once to the Mirage that announced itself", func() bool {
		got, events := attempts.since(before)
		return got >= n && events == n
	})
	time.Sleep(300 * time.Millisecond)
	if got, _ := attempts.since(before); got != n {
		t.Fatalf("%d publishes after an announce, want each of the %d unacknowledged events once", got, n)
	}
}

// After a restart the Ghost re-sends the events EDGE_EVT never confirmed, a few at a time
// (not one goroutine and publish each, all at once), and not those it confirmed: a
// restart after that publishes nothing.
func TestRestartResendsUnconfirmedEventsOnlyAndAFewAtATime(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-back"
	const n = 12
	path := filepath.Join(t.TempDir(), "executions.db")
	open := func() *ghost.BoltStore {
		t.Helper()
		st, err := ghost.OpenBoltStore(path, ghost.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	start := func(st ghost.ExecutionStore) *ghost.Ghost {
		t.Helper()
		return env.StartGhost(id, testenv.Store(st), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
			testenv.Tune(func(c *ghost.Config) { c.ShutdownGrace, c.ShutdownFlush = 100*time.Millisecond, 100*time.Millisecond }))
	}
	attempts := watchPublishes(t, env, id)

	// Executions whose events EDGE_EVT refuses: recorded, never confirmed.
	st := open()
	g := start(st)
	refuseEvents(t, js)
	mc := env.Conn("mirage")
	var cmds []string
	for range n {
		cmds = append(cmds, sendLive(t, mc, id))
	}
	testenv.Eventually(t, 10*time.Second, "every execution recorded", func() bool {
		for _, c := range cmds {
			if e, err := st.GetByCommandID(ctx, c); err != nil || e.State != ghost.StateFinished {
				return false
			}
		}
		return true
	})
	_ = g.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// EDGE_CMD stored the commands too (cmd.* is its subject), and the replay position
	// is before them: a catch-up at the restart would replay them as duplicates and
	// re-send their events itself. Only the re-send of unacknowledged events is tested.
	cmdStream, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmdStream.Purge(ctx); err != nil {
		t.Fatal(err)
	}

	// Restarted with EDGE_EVT still refusing: the re-send keeps to a few events at once.
	st = open()
	before := attempts.count()
	g = start(st)
	time.Sleep(1500 * time.Millisecond)
	got, events := attempts.since(before)
	if events == 0 || events > 4 {
		t.Fatalf("%d events (%d publishes) re-sent at once after a restart, want 1 to 4 of the %d", events, got, n)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		eventFor(t, env, id, c)
	}
	testenv.Eventually(t, 5*time.Second, "every event marked stored", func() bool {
		for _, c := range cmds {
			if e, err := st.GetByCommandID(ctx, c); err != nil || !e.Stored {
				return false
			}
		}
		return true
	})
	_ = g.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Every event confirmed: a restart publishes none again.
	st = open()
	t.Cleanup(func() { _ = st.Close() })
	before = attempts.count()
	g = start(st)
	time.Sleep(time.Second)
	if got, _ := attempts.since(before); got != 0 {
		t.Fatalf("%d events published again at a restart, though EDGE_EVT had confirmed every one", got)
	}
	_ = g.Close()
}

// A command delivered again while a re-send pass publishes its event (a Mirage that
// restarted announces itself and re-dispatches what it has no event for) is answered
// even when that re-send gives the event up: the duplicate waits for it, then publishes
// the event itself until EDGE_EVT takes it. Left to the re-send, an event EDGE_EVT had
// confirmed before would be sent again only when a Mirage shows itself once more.
func TestDuplicateCommandIsAnsweredWhenTheResendGivesUp(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-dup"
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
		testenv.Tune(func(c *ghost.Config) { ghost.SetResendPatience(c, time.Second) }))
	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id, SeedSelector: "seed.flow", Operation: "status",
		DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 5000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	// EDGE_CMD refuses commands (each is larger than 64 bytes) while they still reach the
	// Ghost live: no catch-up replays one, every delivery is one this test made.
	cmdStream, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	refusing := cmdStream.CachedInfo().Config
	refusing.MaxMsgSize = 64
	if _, err := js.UpdateStream(ctx, refusing); err != nil {
		t.Fatalf("make %s refuse commands: %v", bus.StreamCommands, err)
	}
	mc := env.Conn("mirage")
	send := func() {
		t.Helper()
		if err := mc.PublishMsg(bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)); err != nil {
			t.Fatal(err)
		}
	}
	send()
	testenv.Eventually(t, 10*time.Second, "the event stored", func() bool {
		e, err := g.Store().GetByCommandID(ctx, cmd.CommandID)
		return err == nil && e.Stored
	})

	// EDGE_EVT refuses events; a Mirage announces itself, so a re-send pass takes the
	// stored, unacknowledged event and retries it for its patience.
	refuseEvents(t, js)
	attempts := watchPublishes(t, env, id)
	ann := bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "stand-in"}
	annData, err := bus.Encode(&ann)
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.Publish(subjects.Announce, annData); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the re-send to try the event", func() bool { return attempts.count() > 0 })
	send() // the duplicate, while the re-send holds the event
	testenv.Eventually(t, 5*time.Second, "the re-send to give the event up", func() bool {
		return logs.count("event still not stored; it is re-sent later") > 0
	})

	stored := logs.count("event stored")
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil { // EDGE_EVT takes events again
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the duplicate answered: its event stored again", func() bool {
		return logs.count("event stored") > stored
	})
}

// An announce with events_lost has the Ghost store its unacknowledged events EDGE_EVT
// confirmed again, each once, under a Nats-Msg-Id of its own (<event_id>.r<ms>): under the
// event_id the stream would drop it as a duplicate of a message it may no longer hold.
// Another such announce at once does not store them again before restoreEvery (a flood
// of announces must not flood EDGE_EVT); it runs when that time is up. A plain announce
// re-sends under the event_id, as before.
func TestEventsLostAnnounceStoresUnackedEventsAgainUnderOwnIDs(t *testing.T) {
	env := testenv.New(t)
	if err := bus.EnsureAssets(context.Background(), env.JetStream(), bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-lost"
	const n = 3
	attempts := watchPublishes(t, env, id)
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
	mc := env.Conn("mirage")
	ctx := context.Background()
	var cmds []string
	for range n {
		cmds = append(cmds, sendLive(t, mc, id))
	}
	testenv.Eventually(t, 10*time.Second, "every event stored and marked so", func() bool {
		for _, c := range cmds {
			if e, err := g.Store().GetByCommandID(ctx, c); err != nil || !e.Stored {
				return false
			}
		}
		return true
	})
	announce := func(lost bool) {
		t.Helper()
		data, err := bus.Encode(&bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "stand-in", EventsLost: lost})
		if err != nil {
			t.Fatal(err)
		}
		if err := mc.Publish(subjects.Announce, data); err != nil {
			t.Fatal(err)
		}
	}
	restoredSince := func(from int) (ids []string) {
		attempts.mu.Lock()
		defer attempts.mu.Unlock()
		for _, x := range attempts.ids[from:] {
			if strings.Contains(x, ".r") {
				ids = append(ids, x)
			}
		}
		return ids
	}

	before := attempts.count()
	announce(true)
	testenv.Eventually(t, 10*time.Second, "each unacknowledged event stored again", func() bool { return len(restoredSince(before)) >= n })
	for _, x := range restoredSince(before) {
		ev, _, _ := strings.Cut(x, ".r")
		if ev != bus.EventID(id, cmds[0]) && ev != bus.EventID(id, cmds[1]) && ev != bus.EventID(id, cmds[2]) {
			t.Fatalf("stored again under %q: not one of the events' ids", x)
		}
	}
	first := time.Now()

	before = attempts.count()
	announce(true)
	announce(false)
	time.Sleep(time.Second)
	if got := restoredSince(before); len(got) != 0 {
		t.Fatalf("stored again %d more times within a second of the last: %v", len(got), got)
	}
	if got, _ := attempts.since(before); got == 0 {
		t.Fatal("a plain announce re-sent nothing")
	}
	testenv.Eventually(t, 10*time.Second, "the second events_lost announce served once restoreEvery is up", func() bool { return len(restoredSince(before)) >= n })
	if d := time.Since(first); d < 4*time.Second {
		t.Fatalf("stored again %s after the first pass, before restoreEvery", d)
	}
}
