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

// A finished idempotent execution whose record the store refuses is dropped from memory,
// as a crash would drop it. Until its event is stored in EDGE_EVT, no replay position may
// pass its command, in the group commit of the failed record or in any later one: a Ghost
// that stops or crashes then would neither re-send the event (no record) nor replay the
// command (behind the position), and Mirage would report the target timeout.
//
// Here EDGE_EVT refuses the command's event (larger than the stream takes) and the index
// under its command_id is damaged, so that every record of it fails. A full catch-up reads
// it (it runs again, its record fails again) and then a command that never arrived live,
// which runs for a second: the catch-up ends well after the failed record's group, its
// position to save past both. It is not saved; and the Ghost, stopped and started again
// with EDGE_EVT taking the event, replays the command and its event is stored.
func TestPositionWaitsForTheEventOfARecordTheStoreRefused(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	js := env.JetStream()
	path := filepath.Join(t.TempDir(), "executions.db")
	store, err := ghost.OpenBoltStore(path, ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const id = "edge-refused-record"
	// A message stored through the detour first, which provisions the streams and the
	// detour: nothing later may provision them again, which would undo the change to
	// EDGE_EVT. It is no command (no command_id), handled at once.
	junk := &nats.Msg{Subject: "detour." + id, Data: []byte(`{"type":"command"}`)}
	junkSeq := storeDetouredBytes(t, env, id, junk)
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	tune := testenv.Tune(func(c *ghost.Config) {
		c.CatchUpInterval = time.Hour // only the catch-ups the test asks for
		c.ShutdownGrace, c.ShutdownFlush = 100*time.Millisecond, 100*time.Millisecond
	})
	g := env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.GhostLog(slog.New(logs)), tune)
	testenv.Eventually(t, 5*time.Second, "the start's catch-up to save the position", func() bool {
		seq, err := store.LastSeq(ctx)
		return err == nil && seq == junkSeq
	})

	lost := flowCommand(id, "echo", map[string]string{"message": strings.Repeat("x", 3000)})
	if err := ghost.DamageCommandIndex(store, lost.CommandID); err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxMsgSize = 2048 // the echo's event is larger; the sleep's is not
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	ack, err := js.PublishMsg(ctx, encodeOn(t, subjects.Command(id), &lost)) // stored, and delivered live
	if err != nil {
		t.Fatal(err)
	}
	lostSeq := ack.Sequence
	testenv.Eventually(t, 10*time.Second, "the echo's event to be refused", func() bool {
		return logs.count("event not stored yet; retrying") > 0
	})
	testenv.Eventually(t, 5*time.Second, "the echo's finished record to fail and leave memory", func() bool {
		_, err := store.GetByCommandID(ctx, lost.CommandID)
		return err != nil
	})

	after := flowCommand(id, "sleep", map[string]string{"ms": "1000"})
	afterSeq := publishDetoured(t, env, id, encodeOn(t, "detour."+id, &after))
	caughtUp := logs.count("caught up on commands from EDGE_CMD")
	announce, err := bus.Encode(&bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", time.Now()), MirageID: "stand-in"})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Conn("mirage").Publish(subjects.Announce, announce); err != nil { // a full catch-up
		t.Fatal(err)
	}
	eventFor(t, env, id, after.CommandID)
	testenv.Eventually(t, 10*time.Second, "the catch-up to end", func() bool {
		return logs.count("caught up on commands from EDGE_CMD") > caughtUp
	})
	if seq, err := store.LastSeq(ctx); err != nil || seq >= lostSeq {
		t.Fatalf("replay position %d (%v) with the echo at %d (the sleep at %d) neither recorded nor its event stored: a crash now loses it", seq, err, lostSeq, afterSeq)
	}
	if _, ok := storedEvent(t, env, bus.EventID(id, lost.CommandID)); ok {
		t.Fatal("EDGE_EVT stored the echo's event: the test needs it refused")
	}

	// The Ghost stops with the echo's event not stored, as a crash would leave it; its
	// store is opened again by the next start. EDGE_EVT takes the event again.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	store, err = ghost.OpenBoltStore(path, ghost.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() }) // after the Ghost's Close
	env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), tune)
	eventFor(t, env, id, lost.CommandID)
	if ev, _ := storedEvent(t, env, bus.EventID(id, lost.CommandID)); ev.Outcome != bus.OutcomeSuccess || ev.Result.Stdout != lost.Args["message"] {
		t.Fatalf("the echo's event %+v, want its success", ev)
	}
}
