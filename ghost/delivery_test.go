package ghost_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// storeCommand stores a seed.flow command for ghostID in EDGE_CMD and returns its
// command_id and stream sequence.
func storeCommand(t *testing.T, env *testenv.Env, ghostID, op string, args map[string]string) (string, uint64) {
	t.Helper()
	return storeCommandTimeout(t, env, ghostID, op, args, 20*time.Second)
}

// storeCommandTimeout is storeCommand with the command's timeout_ms.
func storeCommandTimeout(t *testing.T, env *testenv.Env, ghostID, op string, args map[string]string, timeout time.Duration) (string, uint64) {
	t.Helper()
	return storeCommandDeadlines(t, env, ghostID, op, args, timeout, time.Minute)
}

// storeCommandDeadlines is storeCommand with the command's timeout_ms, and its
// deliver_by_ms deliverWithin from now.
func storeCommandDeadlines(t *testing.T, env *testenv.Env, ghostID, op string, args map[string]string, timeout, deliverWithin time.Duration) (string, uint64) {
	t.Helper()
	return storeSeedCommand(t, env, ghostID, "seed.flow", op, args, timeout, deliverWithin)
}

// storeSeedCommand stores a command of any seed for ghostID in EDGE_CMD and returns its
// command_id and stream sequence.
func storeSeedCommand(t *testing.T, env *testenv.Env, ghostID, seed, op string, args map[string]string, timeout, deliverWithin time.Duration) (string, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: ghostID, SeedSelector: seed, Operation: op, Args: args,
		DeliverByMS: now.Add(deliverWithin).UnixMilli(), TimeoutMS: timeout.Milliseconds()}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Command(ghostID), data, cmd.CommandID, cmd.TraceID))
	if err != nil {
		t.Fatal(err)
	}
	return cmd.CommandID, ack.Sequence
}

// storedCommand reads back the command stored at seq in EDGE_CMD.
func storedCommand(t *testing.T, env *testenv.Env, seq uint64) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmdStream, err := env.JetStream().Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := cmdStream.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	return stored
}

// eventFor waits for the event of a command in EDGE_EVT.
func eventFor(t *testing.T, env *testenv.Env, ghostID, commandID string) {
	t.Helper()
	want := bus.EventID(ghostID, commandID)
	testenv.Eventually(t, 10*time.Second, "the event of "+commandID, func() bool {
		for _, ev := range env.Events(env.JetStream()) {
			if ev.EventID == want {
				return true
			}
		}
		return false
	})
}

// The periodic catch-up must not move the replay position past a command still
// executing: an idempotent execution keeps no durable record while it runs, so a crash
// after the move would leave that command without a terminal event.
func TestCatchUpPositionWaitsForRunningExecutions(t *testing.T) {
	env := testenv.New(t)
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const id = "edge-p"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 200 * time.Millisecond
			c.ShutdownGrace = 100 * time.Millisecond
		}))
	running, seqRunning := storeCommand(t, env, id, "sleep", map[string]string{"ms": "2000"})
	finished, _ := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, finished)
	time.Sleep(600 * time.Millisecond) // a few catch-up ticks with the sleep still running
	ctx := context.Background()
	pos, err := store.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := store.GetByCommandID(ctx, running); err != nil || e.State != ghost.StateStarted {
		t.Fatalf("the sleep is %+v (%v), want still running", e, err)
	}
	if pos >= seqRunning {
		t.Fatalf("replay position %d passed the running command at %d", pos, seqRunning)
	}
	eventFor(t, env, id, running)
	testenv.Eventually(t, 5*time.Second, "the position to move once idle", func() bool {
		p, err := store.LastSeq(ctx)
		return err == nil && p > seqRunning
	})
}

// A Ghost whose replay position belongs to an earlier EDGE_CMD (the stream was recreated
// while it kept its state) reads the new stream from the start: commands stored while it
// was away run.
func TestRecreatedCommandStreamIsReplayedFromTheStart(t *testing.T) {
	const id = "edge-r"
	for _, tc := range []struct {
		name string
		// setup stores commands and returns the Ghost's stale position, the command_id
		// the position was saved with ("": an older store's, sequence only) and the
		// commands that must run.
		setup func(env *testenv.Env) (uint64, string, []string)
	}{
		{"stream shorter than the position", func(env *testenv.Env) (uint64, string, []string) {
			c, _ := storeCommand(t, env, id, "status", nil)
			return 100, "", []string{c}
		}},
		{"command at the position gone", func(env *testenv.Env) (uint64, string, []string) {
			storeCommand(t, env, "other", "status", nil)        // 1
			early, _ := storeCommand(t, env, id, "status", nil) // 2
			storeCommand(t, env, "other", "status", nil)        // 3: where the stale position points
			storeCommand(t, env, "other", "status", nil)        // 4
			late, _ := storeCommand(t, env, id, "status", nil)  // 5
			return 3, "", []string{early, late}
		}},
		{"another command of this Ghost at the position's sequence", func(env *testenv.Env) (uint64, string, []string) {
			// The new stream has grown past the old position, and holds a command of this
			// Ghost at its sequence: only its command_id tells it is not the one handled.
			var all []string
			for range 5 {
				c, _ := storeCommand(t, env, id, "status", nil)
				all = append(all, c)
			}
			return 3, subjects.NewID(subjects.PrefixCommand), all
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			stale, staleID, want := tc.setup(env)
			if err := store.SetPosition(context.Background(), stale, staleID); err != nil {
				t.Fatal(err)
			}
			env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
			for _, c := range want {
				eventFor(t, env, id, c)
			}
		})
	}
}

// An event.ack marks the execution whose event it names: one naming another event of the
// same command_id (a refusal for security has its own event_id) leaves the genuine event
// unacknowledged, so it is still re-sent.
func TestEventAckMarksOnlyTheEventItNames(t *testing.T) {
	env := testenv.New(t)
	store := ghost.NewMemoryStore()
	const id = "edge-k"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
	cmdID, _ := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, cmdID)
	ctx := context.Background()
	unacked := func() bool {
		execs, err := store.Unacked(ctx)
		return err == nil && len(execs) == 1 && execs[0].CommandID == cmdID
	}
	testenv.Eventually(t, 5*time.Second, "the finished execution, unacknowledged", unacked)
	nc := env.Conn("mirage")
	send := func(eventID string) {
		ack := bus.EventAck{Header: bus.NewHeader(bus.TypeEventAck, "", time.Now()), EventID: eventID, CommandID: cmdID, GhostID: id, AckStatus: bus.AckRejected, AckCode: bus.CodeSecurity}
		data, err := bus.Encode(&ack)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(subjects.Ack(id), data); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	send(subjects.PrefixEvent + "_sforgedorrefused")
	time.Sleep(200 * time.Millisecond)
	if !unacked() {
		t.Fatal("an event.ack naming another event marked the genuine event acknowledged")
	}
	send(bus.EventID(id, cmdID))
	testenv.Eventually(t, 5*time.Second, "the genuine event acknowledged", func() bool {
		execs, err := store.Unacked(ctx)
		return err == nil && len(execs) == 0
	})
}

// A reconnect while the delivery loop is busy (here a start-up replay waiting for a long
// command) must make the next catch-up a full one, whichever of the reconnect's status
// event and the timer the loop takes first: a command stored while the link was down,
// followed by one received live, must not be passed over by the timer's fast path (last
// command known and finished).
func TestReconnectDuringCatchUpMissesNoCommand(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			env := testenv.New(t, testenv.Listen())
			proxy := testenv.NewProxy(t, env.Server.Addr().String())
			store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			const id = "edge-rc"
			long, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "1500"})
			gc := env.URLConn("ghost "+id, proxy.URL(), nats.ReconnectWait(20*time.Millisecond))
			env.StartGhost(id, testenv.Via(gc), testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
				testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = 50 * time.Millisecond }))
			ctx := context.Background()
			testenv.Eventually(t, 5*time.Second, "the replayed sleep to start", func() bool {
				_, err := store.GetByCommandID(ctx, long)
				return err == nil
			})
			proxy.Cut()
			testenv.Eventually(t, 5*time.Second, "the Ghost to lose its link", func() bool { return !gc.IsConnected() })
			missed, _ := storeCommand(t, env, id, "status", nil)
			proxy.Restore()
			testenv.Eventually(t, 5*time.Second, "the Ghost to reconnect", func() bool { return gc.IsConnected() && gc.Stats().Reconnects > 0 })
			if err := gc.Flush(); err != nil { // its subscriptions are back
				t.Fatal(err)
			}
			live, _ := storeCommand(t, env, id, "status", nil)
			eventFor(t, env, id, live)
			if e, err := store.GetByCommandID(ctx, long); err != nil || e.State != ghost.StateStarted {
				t.Fatalf("the sleep ended before the live command did (%+v, %v): the loop was not busy", e, err)
			}
			eventFor(t, env, id, long)
			eventFor(t, env, id, missed)
		})
	}
}

// A command stored by hand without a Nats-Msg-Id (possible without authentication) at the
// replay position is still the one at it: the position's command_id and the replay's check
// both come from the command's body, so a restart's catch-up reads on from there instead of
// taking the stream for recreated and replaying all of cmd.<id> from its start.
func TestPositionOnACommandWithoutMsgIDHolds(t *testing.T) {
	env := testenv.New(t)
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const id = "edge-nomsgid"
	tune := testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = 100 * time.Millisecond })
	g := env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), tune)
	ctx := context.Background()
	if err := bus.EnsureAssets(ctx, env.JetStream(), bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id, SeedSelector: "seed.flow", Operation: "status", Args: map[string]string{},
		DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 20000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := env.JetStream().Publish(ctx, subjects.Command(id), data) // no Nats-Msg-Id
	if err != nil {
		t.Fatal(err)
	}
	eventFor(t, env, id, cmd.CommandID)
	testenv.Eventually(t, 5*time.Second, "the position on the command", func() bool {
		seq, cmdID, err := store.Position(ctx)
		return err == nil && seq == ack.Sequence && cmdID == cmd.CommandID
	})
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	missed, _ := storeCommand(t, env, id, "status", nil)
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), tune, testenv.GhostLog(slog.New(logs)))
	eventFor(t, env, id, missed)
	if n := logs.count("EDGE_CMD no longer holds the command at the replay position; replaying from the start"); n != 0 {
		t.Fatalf("the catch-up took the stream for recreated (%d times)", n)
	}
}

// storeDetoured stores a seed.flow command for ghostID in EDGE_CMD without publishing it on
// cmd.<id>, and returns its command_id and stream sequence: it goes through a stream that
// EDGE_CMD sources from, which stores it as cmd.<id> and delivers nothing to the Ghost's
// core subscription. So a Ghost that stays connected misses its live copy, as when a cluster
// route fails with the message in flight across it (no client reconnects then).
func storeDetoured(t *testing.T, env *testenv.Env, ghostID, op string, args map[string]string) (string, uint64) {
	t.Helper()
	cmd := flowCommand(ghostID, op, args)
	return cmd.CommandID, storeDetouredBytes(t, env, ghostID, encodeOn(t, "detour."+ghostID, &cmd))
}

// flowCommand is a seed.flow command for ghostID, deliverable for a minute, with a 20 s
// timeout.
func flowCommand(ghostID, op string, args map[string]string) bus.Command {
	now := time.Now()
	if args == nil {
		args = map[string]string{}
	}
	return bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: ghostID, SeedSelector: "seed.flow", Operation: op, Args: args,
		DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 20000}
}

// encodeOn is cmd encoded in a message on subject, its Nats-Msg-Id the command_id.
func encodeOn(t *testing.T, subject string, cmd *bus.Command) *nats.Msg {
	t.Helper()
	data, err := bus.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return bus.NewMsg(subject, data, cmd.CommandID, cmd.TraceID)
}

// storeDetouredBytes stores msg (on detour.<ghostID>) in EDGE_CMD as cmd.<ghostID> as
// storeDetoured does, and returns its stream sequence there.
func storeDetouredBytes(t *testing.T, env *testenv.Env, ghostID string, msg *nats.Msg) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.EnsureAssets(ctx, env.JetStream(), bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	return publishDetoured(t, env, ghostID, msg)
}

// publishDetoured is storeDetouredBytes without provisioning the streams first (which
// would undo a test's change to EDGE_EVT).
func publishDetoured(t *testing.T, env *testenv.Env, ghostID string, msg *nats.Msg) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js := env.JetStream()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "TEST_DETOUR", Subjects: []string{"detour.*"}}); err != nil {
		t.Fatal(err)
	}
	cmdStream, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := cmdStream.CachedInfo().Config; len(cfg.Sources) == 0 {
		cfg.Sources = []*jetstream.StreamSource{{Name: "TEST_DETOUR",
			SubjectTransforms: []jetstream.SubjectTransformConfig{{Source: "detour.*", Destination: "cmd.{{wildcard(1)}}"}}}}
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	testenv.Eventually(t, 5*time.Second, "EDGE_CMD to store the detoured command", func() bool {
		m, err := cmdStream.GetLastMsgForSubject(ctx, subjects.Command(ghostID))
		if err != nil || string(m.Data) != string(msg.Data) {
			return false
		}
		seq = m.Sequence
		return true
	})
	return seq
}

// A command that EDGE_CMD stored but whose live copy never reached the Ghost, while the
// Ghost stayed connected, is still run by a periodic catch-up, also when a later command
// did arrive live: the last command on cmd.<id> being known says nothing about the ones
// before it.
func TestCommandStoredButNeverDeliveredLiveIsCaughtUp(t *testing.T) {
	env := testenv.New(t)
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const id = "edge-gap"
	gc := env.Conn("ghost " + id)
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	env.StartGhost(id, testenv.Via(gc), testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
		testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = 100 * time.Millisecond }))
	first, firstSeq := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, first)
	ctx := context.Background()
	testenv.Eventually(t, 5*time.Second, "the position on the first command", func() bool {
		seq, _, err := store.Position(ctx)
		return err == nil && seq == firstSeq
	})
	lost, lostSeq := storeDetoured(t, env, id, "status", nil)
	live, liveSeq := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, live)
	if liveSeq <= lostSeq {
		t.Fatalf("the live command (%d) is not after the lost one (%d)", liveSeq, lostSeq)
	}
	eventFor(t, env, id, lost)
	if n := gc.Stats().Reconnects; n != 0 {
		t.Fatalf("the Ghost reconnected %d times: the test is about a Ghost that stayed connected", n)
	}
	// The periodic replays read the commands that ran live again, and leave them be: no
	// duplicate handling, no event re-sent (headless, nobody acknowledges them).
	time.Sleep(500 * time.Millisecond)
	if n := logs.count("duplicate command: re-sending its terminal event"); n != 0 {
		t.Fatalf("periodic replays re-sent %d events of commands that ran live", n)
	}
}

// A command EDGE_CMD stores just after the Ghost's catch-up at start, with no live copy
// for it (published before the subscription took hold, stored late with fsync on every
// write), is run within seconds, not at the next periodic catch-up a minute later.
func TestCommandStoredJustAfterTheStartCatchUpIsRunSoon(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-late"
	before, _ := storeDetoured(t, env, id, "status", nil)
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = time.Hour
			c.SettleCatchUp = 3 * time.Second // the late command is stored before the look
		}))
	eventFor(t, env, id, before) // the catch-up at start has run
	late, _ := storeDetoured(t, env, id, "status", nil)
	eventFor(t, env, id, late) // within 10 s; the periodic catch-up is an hour away
}

// A junk message on cmd.<id> whose own stored headers look like a direct get's status or
// sequence does not stop a catch-up that reads it: the commands after it still run.
func TestCatchUpReadsPastAStoredStatusHeader(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-status"
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = 100 * time.Millisecond }))
	junk := &nats.Msg{Subject: "detour." + id, Data: []byte(`{"type":"command"}`), Header: nats.Header{}}
	junk.Header.Set("Status", "503")
	junk.Header.Set("Description", "No Responders")
	junk.Header.Set("Nats-Sequence", "1")
	storeDetouredBytes(t, env, id, junk)
	lost, _ := storeDetoured(t, env, id, "status", nil)
	eventFor(t, env, id, lost)
}

// The same for a junk message with an empty body and a stored Status 503: nats.go's request
// takes such an answer for "no responders", which a catch-up read as "no command stream"
// and ended there, every time.
func TestCatchUpReadsPastAStoredEmpty503(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-empty503"
	js := env.JetStream()
	// Stored through the detour before the command after it (the source keeps the order).
	storeDetoured(t, env, id, "status", nil)
	junk := &nats.Msg{Subject: "detour." + id, Header: nats.Header{}}
	junk.Header.Set("Status", "503")
	if _, err := js.PublishMsg(context.Background(), junk); err != nil {
		t.Fatal(err)
	}
	lost, _ := storeDetoured(t, env, id, "status", nil)
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = time.Hour }))
	eventFor(t, env, id, lost)
}

// storeRawHeaders stores on cmd.<ghostID> a message with the raw header block hdr, sent
// over a plain protocol connection (nats.go writes only well-formed headers), and returns
// its stream sequence.
func storeRawHeaders(t *testing.T, env *testenv.Env, ghostID, hdr, body string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmdStream, err := env.JetStream().Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	before := cmdStream.CachedInfo().State.LastSeq
	c, err := net.DialTimeout("tcp", env.Server.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // INFO
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nHPUB %s %d %d\r\n%s%s\r\nPING\r\n",
		subjects.Command(ghostID), len(hdr), len(hdr)+len(body), hdr, body)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(l, "-ERR") {
			t.Fatal(l)
		}
		if strings.HasPrefix(l, "PONG") {
			break
		}
	}
	var seq uint64
	testenv.Eventually(t, 5*time.Second, "EDGE_CMD to store the message", func() bool {
		info, err := cmdStream.Info(ctx)
		seq = info.State.LastSeq
		return err == nil && seq > before
	})
	return seq
}

// A header block nats.go cannot parse (a line without a colon).
const malformedHeaders = "NATS/1.0\r\nno colon here\r\n\r\n"

// A junk message on cmd.<id> whose stored header block nats.go cannot parse comes from a
// direct get without any header, its sequence lost: the catch-up reads on past it (through
// the consumer) instead of stopping there on every try, the replay position stuck before it
// and the commands after it never run.
func TestCatchUpReadsPastAStoredMalformedHeader(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	const id = "edge-badhdr"
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	storeCommand(t, env, id, "status", map[string]string{})
	storeRawHeaders(t, env, id, malformedHeaders, `{"type":"command"}`)
	lost, lostSeq := storeCommand(t, env, id, "status", map[string]string{})
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = time.Hour }))
	eventFor(t, env, id, lost)
	testenv.Eventually(t, 5*time.Second, "the replay position to pass the junk", func() bool {
		seq, err := store.LastSeq(context.Background())
		return err == nil && seq == lostSeq
	})
}

// The same junk as the last message on cmd.<id>: where cmd.<id> ends is still found, and
// the command before it, which never arrived live, runs.
func TestCatchUpWithAStoredMalformedHeaderLast(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	const id = "edge-badhdr-last"
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	lost, _ := storeCommand(t, env, id, "status", map[string]string{})
	junkSeq := storeRawHeaders(t, env, id, malformedHeaders, `{"type":"command"}`)
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = time.Hour }))
	eventFor(t, env, id, lost)
	testenv.Eventually(t, 5*time.Second, "the replay position to reach the junk", func() bool {
		seq, err := store.LastSeq(context.Background())
		return err == nil && seq == junkSeq
	})
}

// Commands stored while the Ghost was down, the first a long one: those after it run at
// once though a catch-up reads its first ones by direct get and the rest through a
// consumer, not once the long one has ended.
func TestCatchUpDoesNotHoldLaterCommandsBehindALongFirstOne(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-behindlong"
	storeDetoured(t, env, id, "sleep", map[string]string{"ms": "15000"})
	var last string
	for range 20 {
		last, _ = storeDetoured(t, env, id, "status", nil)
	}
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = time.Hour
			c.MaxConcurrent = 32
			c.ShutdownGrace = 100 * time.Millisecond
		}))
	eventFor(t, env, id, last) // within 10 s; the sleep lasts 15
}

// The same while the Ghost is busy: a long execution holds a slot, so the periodic
// catch-up does not replay (a replay would wait for it), yet the command it never got live
// runs at the next tick, not once the long execution is over, and the replay position
// stays before the running command.
func TestBusyGhostRunsACommandNeverDeliveredLive(t *testing.T) {
	env := testenv.New(t)
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const id = "edge-busygap"
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 100 * time.Millisecond
			c.ShutdownGrace = 100 * time.Millisecond
		}))
	ctx := context.Background()
	long, longSeq := storeCommand(t, env, id, "sleep", map[string]string{"ms": "4000"})
	testenv.Eventually(t, 5*time.Second, "the sleep to start", func() bool {
		e, err := store.GetByCommandID(ctx, long)
		return err == nil && e.State == ghost.StateStarted
	})
	// Junk without a command_id leaves no record: scanned once, not on every tick.
	storeDetouredBytes(t, env, id, &nats.Msg{Subject: "detour." + id, Data: []byte(`{"type":"command"}`)})
	lost, _ := storeDetoured(t, env, id, "status", nil)
	live, _ := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, live)
	eventFor(t, env, id, lost)
	time.Sleep(600 * time.Millisecond) // several busy ticks
	// Once for each of the junk and the lost command at most (and the live one, should a
	// scan read it before its live copy was claimed); without scannedTo, on every tick.
	if n := logs.count("ran commands from EDGE_CMD that never arrived live"); n < 1 || n > 3 {
		t.Fatalf("busy ticks ran commands never seen %d times, want one to three", n)
	}
	if e, err := store.GetByCommandID(ctx, long); err != nil || e.State != ghost.StateStarted {
		t.Fatalf("the sleep is %+v (%v): the lost command ran only once the Ghost was idle", e, err)
	}
	if pos, err := store.LastSeq(ctx); err != nil || pos >= longSeq {
		t.Fatalf("replay position %d (%v) passed the running command at %d", pos, err, longSeq)
	}
}

// diskFull is an execution store whose writes (Begin, and saving the replay position) fail
// while full is set, as bbolt's do on a full disk; reads still work.
type diskFull struct {
	*ghost.MemoryStore
	full atomic.Bool
}

var errNoSpace = errors.New("write executions.db: no space left on device")

func (s *diskFull) Begin(ctx context.Context, e ghost.Execution) (ghost.Execution, bool, error) {
	if s.full.Load() {
		return ghost.Execution{}, false, errNoSpace
	}
	return s.MemoryStore.Begin(ctx, e)
}

func (s *diskFull) SetPosition(ctx context.Context, seq uint64, commandID string) error {
	if s.full.Load() {
		return errNoSpace
	}
	return s.MemoryStore.SetPosition(ctx, seq, commandID)
}

// A command the execution store cannot record is neither run nor answered (no event
// under its stable event_id), and the catch-ups keep the replay position before it; once
// the store takes writes again, a catch-up runs it and its event is the real outcome.
// Past the patience after which a replay gives up on a command the store never records,
// still nothing is given up: a store that cannot save the position fails every command,
// not that one.
func TestUnrecordedCommandIsLeftForALaterCatchUp(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	store := &diskFull{MemoryStore: ghost.NewMemoryStore()}
	const id = "edge-full"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 200 * time.Millisecond
			ghost.SetUnrecordedPatience(c, 100*time.Millisecond)
		}))
	before, seqBefore := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, before)
	testenv.Eventually(t, 5*time.Second, "the position at the first command", func() bool {
		p, err := store.LastSeq(ctx)
		return err == nil && p >= seqBefore
	})

	store.full.Store(true)
	cmdID, seq := storeCommand(t, env, id, "echo", map[string]string{"message": "ran"})
	time.Sleep(time.Second) // the live delivery, and a few catch-up ticks
	if ev, ok := storedEvent(t, env, bus.EventID(id, cmdID)); ok {
		t.Fatalf("event %+v sent for a command the store could not record", ev)
	}
	if p, err := store.LastSeq(ctx); err != nil || p >= seq {
		t.Fatalf("replay position %d (%v) passed the unrecorded command at %d", p, err, seq)
	}

	store.full.Store(false)
	eventFor(t, env, id, cmdID)
	if ev, _ := storedEvent(t, env, bus.EventID(id, cmdID)); ev.Outcome != bus.OutcomeSuccess || ev.Result.Stdout != "ran" {
		t.Fatalf("event %+v, want the echo's success", ev)
	}
	testenv.Eventually(t, 5*time.Second, "the position past the command", func() bool {
		p, err := store.LastSeq(ctx)
		return err == nil && p >= seq
	})
}

// damagedRecord is an execution store that never records one command while it records the
// others and the replay position: Begin fails for an echo of unrecordable (a record the
// store cannot write), and, with byID, for every record of that command_id from then on,
// its refusal too (the record under the command_id is damaged). Once healed, it records
// everything.
type damagedRecord struct {
	*ghost.MemoryStore
	byID   bool
	healed atomic.Bool
	mu     sync.Mutex
	bad    map[string]bool
	// full: the failure is the disk being full (ENOSPC), not the record.
	full bool
}

const unrecordable = "never recorded"

func newDamagedRecord(byID bool) *damagedRecord {
	return &damagedRecord{MemoryStore: ghost.NewMemoryStore(), byID: byID, bad: map[string]bool{}}
}

func (s *damagedRecord) Begin(ctx context.Context, e ghost.Execution) (ghost.Execution, bool, error) {
	if !s.healed.Load() {
		s.mu.Lock()
		if e.Args["message"] == unrecordable {
			s.bad[e.CommandID] = true
		}
		failed := e.Args["message"] == unrecordable || (s.byID && s.bad[e.CommandID])
		s.mu.Unlock()
		switch {
		case failed && s.full:
			return ghost.Execution{}, false, &os.PathError{Op: "write", Path: "executions.db", Err: syscall.ENOSPC}
		case failed:
			return ghost.Execution{}, false, errors.New("executions.db: record damaged")
		}
	}
	return s.MemoryStore.Begin(ctx, e)
}

// A command the execution store never records, while it records the others, does not hold
// the replay position for good: after the patience the replay gives up on it, answers it
// with a 1500 (not run), counts it, and moves past it, so the commands after it that never
// arrived live are replayed and run. Two copies of it in EDGE_CMD are given up on once.
func TestReplayGivesUpOnACommandTheStoreNeverRecords(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	store := newDamagedRecord(false)
	metrics := ghost.NewMetrics()
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	const id = "edge-damaged"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 100 * time.Millisecond
			c.Metrics = metrics
			ghost.SetUnrecordedPatience(c, 500*time.Millisecond)
		}))
	bad, badSeq := storeCommand(t, env, id, "echo", map[string]string{"message": unrecordable})
	// A second copy of it, stored past the duplicate window (another Nats-Msg-Id): given up
	// on with the first, it is answered once.
	stored := storedCommand(t, env, badSeq)
	if _, err := env.JetStream().PublishMsg(ctx, bus.NewMsg(subjects.Command(id), stored.Data, "copy-"+bad, bus.TraceIDFrom(stored.Header))); err != nil {
		t.Fatal(err)
	}
	// More than one replay batch after it, the last never delivered live: only a replay
	// that gets past the bad command runs it.
	junk := &nats.Msg{Subject: "detour." + id, Data: []byte(`{"type":"command"}`)}
	storeDetouredBytes(t, env, id, junk)
	for range bus.ReplayBatch {
		if _, err := env.JetStream().PublishMsg(ctx, junk); err != nil {
			t.Fatal(err)
		}
	}
	lost, lostSeq := storeDetoured(t, env, id, "status", nil)

	eventFor(t, env, id, lost)
	// The give-up is answered once the catch-up has saved a position past it, which may
	// be just after the last command's event.
	eventFor(t, env, id, bad)
	ev, ok := storedEvent(t, env, bus.EventID(id, bad))
	if !ok || ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != bus.CodeInternal || ev.Result.Status != "refused" {
		t.Fatalf("event of the command the store never recorded: %+v (found %v), want a 1500, not run", ev, ok)
	}
	testenv.Eventually(t, 5*time.Second, "the position past the last command", func() bool {
		p, err := store.LastSeq(ctx)
		return err == nil && p >= lostSeq && p > badSeq
	})
	if rec, err := store.GetByCommandID(ctx, bad); err != nil || rec.Refusal == nil || rec.Event == nil || rec.Event.EventID != ev.EventID {
		t.Fatalf("the command given up on is recorded as %+v (%v), want its refusal, finished with the 1500 sent", rec, err)
	}
	if n := logs.count("execution store never recorded the command: giving up on it; answered 1500, the replay position is past it"); n != 1 {
		t.Fatalf("gave up on the command %d times, want once", n)
	}
	var b strings.Builder
	if _, err := metrics.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if want := `edgectl_ghost_commands_total{outcome="error",class="internal"} 1`; !strings.Contains(b.String(), want) {
		t.Fatalf("metrics do not count the command given up on (%s):\n%s", want, b.String())
	}
}

// A command the store cannot record because the disk is full is never given up on: a
// small write (the replay position) can still find room where the command's record
// cannot, which proves nothing about the command. It runs once there is room again.
func TestReplayDoesNotGiveUpOnACommandAFullDiskCannotRecord(t *testing.T) {
	env := testenv.New(t)
	store := newDamagedRecord(false)
	store.full = true
	const id = "edge-full"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 100 * time.Millisecond
			ghost.SetUnrecordedPatience(c, 200*time.Millisecond)
		}))
	cmd, _ := storeCommand(t, env, id, "echo", map[string]string{"message": unrecordable})
	time.Sleep(1500 * time.Millisecond) // many catch-ups, well past the patience
	if ev, ok := storedEvent(t, env, bus.EventID(id, cmd)); ok {
		t.Fatalf("the command a full disk could not record was answered %+v, want it kept for later", ev)
	}
	store.healed.Store(true) // room again
	eventFor(t, env, id, cmd)
	if ev, _ := storedEvent(t, env, bus.EventID(id, cmd)); ev.Outcome != bus.OutcomeSuccess {
		t.Fatalf("once the disk had room the command ended %+v, want it run", ev)
	}
}

// A full catch-up that finds a command still running, then one the store cannot record,
// goes on past both: a command after them that never arrived live runs now, not when the
// long one ends; the unrecordable one is not given up on while the position stays before
// the running one (its 1500 would not be its one terminal event), and is once it has ended.
func TestCatchUpGoesOnBehindARunningAndAnUnrecordableCommand(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	store := newDamagedRecord(false)
	const id = "edge-held"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 100 * time.Millisecond
			ghost.SetUnrecordedPatience(c, 200*time.Millisecond)
		}))
	// Long enough that the steps below end well before it does on a loaded machine (with
	// 4 s, a CI run under load saw it end first).
	long, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "12000"})
	testenv.Eventually(t, 5*time.Second, "the sleep to start", func() bool {
		e, err := store.GetByCommandID(ctx, long)
		return err == nil && e.State == ghost.StateStarted
	})
	bad, _ := storeCommand(t, env, id, "echo", map[string]string{"message": unrecordable})
	announce, err := bus.Encode(&bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "stand-in"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Conn("mirage").Publish(subjects.Announce, announce); err != nil { // full catch-ups from now
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	// More than a replay batch after the unrecordable one, the last never delivered live:
	// only a replay that goes on past it runs that one.
	junk := &nats.Msg{Subject: "detour." + id, Data: []byte(`{"type":"command"}`)}
	storeDetouredBytes(t, env, id, junk)
	for range bus.ReplayBatch {
		if _, err := env.JetStream().PublishMsg(ctx, junk); err != nil {
			t.Fatal(err)
		}
	}
	lost, _ := storeDetoured(t, env, id, "status", nil)
	eventFor(t, env, id, lost)
	if e, err := store.GetByCommandID(ctx, long); err != nil || e.State != ghost.StateStarted {
		t.Fatalf("the command never delivered live ran only once the long one had ended (%+v, %v)", e, err)
	}
	if ev, ok := storedEvent(t, env, bus.EventID(id, bad)); ok {
		t.Fatalf("the command behind a running one was given up on while the position stayed before it: %+v", ev)
	}
	testenv.Eventually(t, 25*time.Second, "the event of "+bad+", once the sleep has ended", func() bool {
		_, ok := storedEvent(t, env, bus.EventID(id, bad))
		return ok
	})
	if ev, _ := storedEvent(t, env, bus.EventID(id, bad)); ev.Error == nil || ev.Error.Code != bus.CodeInternal {
		t.Fatalf("the command the store never recorded ended %+v, want the give-up's 1500", ev)
	}
}

// refusalStoreCases are the two ways a give-up's 1500 is kept: recorded by the store, or
// held in memory when the store fails the refusal too.
var refusalStoreCases = []struct {
	name string
	byID bool // the store fails the refusal too
}{
	{"the refusal recorded", false},
	{"the refusal held in memory", true},
}

// A command given up on (its 1500 "not run and will not be" stored in EDGE_EVT) is never
// run, whatever delivers it later: once the store records again, a copy that arrives live
// (a Mirage re-dispatch) is a duplicate of the 1500. The store records the refusal when it
// can (what it failed was that command's record, not its command_id); when it cannot, the
// Ghost holds the 1500 in memory.
func TestGivenUpCommandIsNotRunByALaterDelivery(t *testing.T) {
	for _, tc := range refusalStoreCases {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			ctx := context.Background()
			store := newDamagedRecord(tc.byID)
			logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
			const id = "edge-given-up"
			env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
				testenv.Tune(func(c *ghost.Config) {
					c.CatchUpInterval = 100 * time.Millisecond
					ghost.SetUnrecordedPatience(c, 300*time.Millisecond)
				}))
			now := time.Now()
			cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
				IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id, SeedSelector: "seed.flow", Operation: "echo",
				Args: map[string]string{"message": unrecordable}, DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 5000}
			data, err := bus.Encode(&cmd)
			if err != nil {
				t.Fatal(err)
			}
			js := env.JetStream()
			if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
				t.Fatal(err)
			}
			if _, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)); err != nil {
				t.Fatal(err)
			}
			eventFor(t, env, id, cmd.CommandID)
			ev, _ := storedEvent(t, env, bus.EventID(id, cmd.CommandID))
			if ev.Error == nil || ev.Error.Code != bus.CodeInternal {
				t.Fatalf("want the 1500 of the command given up on, got %+v", ev)
			}

			store.healed.Store(true)
			if err := env.Conn("mirage").PublishMsg(bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 10*time.Second, "the copy answered as a duplicate", func() bool {
				return logs.count("duplicate command: re-sending its terminal event") > 0
			})
			rec, err := store.GetByCommandID(ctx, cmd.CommandID)
			switch {
			case err == nil && (rec.Event == nil || rec.Event.EventID != ev.EventID || rec.Event.ExecutionID != ev.ExecutionID):
				t.Fatalf("the command answered 'not run and will not be' is recorded as %+v, event %+v", rec, rec.Event)
			case err != nil && !tc.byID:
				t.Fatalf("the refusal is not recorded (%v)", err)
			case err == nil && tc.byID:
				t.Fatalf("recorded %+v though the store failed the command_id", rec)
			}
			if n := logs.count("execution store never recorded the command: giving up on it; answered 1500, the replay position is past it"); n != 1 {
				t.Fatalf("gave up on the command %d times, want once", n)
			}
		})
	}
}

// A replay that gave up on a command and is then stopped by Close (it was waiting for the
// commands after it) still answers that command: the replay position is saved past it, so
// no later replay would.
func TestCommandGivenUpOnIsAnsweredWhenTheGhostStops(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	store := newDamagedRecord(false)
	const id = "edge-given-up-stop"
	// Stored before the Ghost starts, so that only its replays read them, in order: the bad
	// command, more than a replay batch of junk, then a long command. The replays stop at
	// the bad one until they give up on it; the one that does then waits for the sleep.
	bad, _ := storeCommand(t, env, id, "echo", map[string]string{"message": unrecordable})
	junk := &nats.Msg{Subject: "detour." + id, Data: []byte(`{"type":"command"}`)}
	storeDetouredBytes(t, env, id, junk)
	for range bus.ReplayBatch {
		if _, err := env.JetStream().PublishMsg(ctx, junk); err != nil {
			t.Fatal(err)
		}
	}
	slow, _ := storeDetoured(t, env, id, "sleep", map[string]string{"ms": "20000"})
	g := env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 100 * time.Millisecond
			c.ShutdownGrace = 100 * time.Millisecond
			ghost.SetUnrecordedPatience(c, 300*time.Millisecond)
		}))
	testenv.Eventually(t, 10*time.Second, "the replay past the bad command, running the sleep", func() bool {
		e, err := store.GetByCommandID(ctx, slow)
		return err == nil && e.State == ghost.StateStarted
	})
	if _, ok := storedEvent(t, env, bus.EventID(id, bad)); ok {
		t.Fatal("the command given up on is answered before the replay that gave up on it ended")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	ev, ok := storedEvent(t, env, bus.EventID(id, bad))
	if !ok || ev.Error == nil || ev.Error.Code != bus.CodeInternal {
		t.Fatalf("event of the command given up on: %+v (found %v), want its 1500 stored before Close returned", ev, ok)
	}
}

// A full catch-up (a Mirage's announce, a reconnect) that reads a command another
// delivery is still running does not wait for that execution, which may last hours: the
// catch-up goes on, and a command stored in EDGE_CMD but never delivered live runs now,
// not when the long one ends. The replay position stays before the running command, so
// that a crash cannot lose it.
func TestFullCatchUpDoesNotWaitForALongExecution(t *testing.T) {
	env := testenv.New(t)
	store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const id = "edge-long"
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) {
			c.CatchUpInterval = 100 * time.Millisecond
			c.ShutdownGrace = 100 * time.Millisecond
		}))
	ctx := context.Background()
	long, longSeq := storeCommand(t, env, id, "sleep", map[string]string{"ms": "8000"})
	testenv.Eventually(t, 5*time.Second, "the sleep to start", func() bool {
		e, err := store.GetByCommandID(ctx, long)
		return err == nil && e.State == ghost.StateStarted
	})
	announce, err := bus.Encode(&bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "stand-in"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Conn("mirage").Publish(subjects.Announce, announce); err != nil { // a full catch-up
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	lost, _ := storeDetoured(t, env, id, "status", nil)
	eventFor(t, env, id, lost)
	if e, err := store.GetByCommandID(ctx, long); err != nil || e.State != ghost.StateStarted {
		t.Fatalf("the command never delivered live ran only once the long execution had ended (%+v, %v)", e, err)
	}
	if seq, err := store.LastSeq(ctx); err != nil || seq >= longSeq {
		t.Fatalf("replay position %d (%v) while the command at %d still runs: a crash now would lose it", seq, err, longSeq)
	}
}
