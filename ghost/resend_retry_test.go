package ghost_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/test/testenv"
)

// An event EDGE_EVT refused through a whole re-send pass (no quorum, a full account) is sent
// again once the stream takes writes, while the Ghost stays connected: a pass that leaves
// events unconfirmed is followed by another, not only by a reconnect or a Mirage announce.
func TestResendRetriesEventsTheStreamRefusedWhileConnected(t *testing.T) {
	env := testenv.New(t)
	ctx := context.Background()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	const id = "edge-rv"
	path := filepath.Join(t.TempDir(), "executions.db")
	open := func() *ghost.BoltStore {
		st, err := ghost.OpenBoltStore(path, ghost.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	start := func(st ghost.ExecutionStore) *ghost.Ghost {
		return env.StartGhost(id, testenv.Store(st), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
			testenv.Tune(func(c *ghost.Config) { c.ShutdownGrace, c.ShutdownFlush = 100*time.Millisecond, 100*time.Millisecond }))
	}
	st := open()
	g := start(st)
	refuseEvents(t, js)
	mc := env.Conn("mirage")
	c := sendLive(t, mc, id)
	testenv.Eventually(t, 10*time.Second, "recorded", func() bool {
		e, err := st.GetByCommandID(ctx, c)
		return err == nil && e.State == ghost.StateFinished
	})
	_ = g.Close()
	_ = st.Close()
	cmdStream, _ := js.Stream(ctx, bus.StreamCommands)
	_ = cmdStream.Purge(ctx)

	st = open()
	t.Cleanup(func() { _ = st.Close() })
	g = start(st)
	t.Cleanup(func() { _ = g.Close() })
	time.Sleep(33 * time.Second) // past resendPatience, EDGE_EVT still refusing
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	if _, ok := storedEvent(t, env, bus.EventID(id, c)); !ok {
		e, _ := st.GetByCommandID(ctx, c)
		t.Fatalf("event never re-sent after EDGE_EVT recovered (ghost connected, stored=%v acked=%v)", e.Stored, e.Acked)
	}
}
