package ghost_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// storeStatusJunk publishes on subject, as anyone may without authentication, an empty
// message with headers h, and returns its sequence in stream.
func storeStatusJunk(t *testing.T, env *testenv.Env, stream, subject string, h nats.Header) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js := env.JetStream()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	before := st.CachedInfo().State.LastSeq
	rogue := env.Conn("rogue")
	if err := rogue.PublishMsg(&nats.Msg{Subject: subject, Header: h}); err != nil {
		t.Fatal(err)
	}
	if err := rogue.Flush(); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	testenv.Eventually(t, 5*time.Second, "the junk stored on "+subject, func() bool {
		info, err := st.Info(ctx)
		if err == nil {
			seq = info.State.LastSeq
		}
		return err == nil && seq > before
	})
	return seq
}

// A message that reads as a status stored on cmd.<id> among commands a Ghost missed, past
// the ones a catch-up reads by direct get (so that its consumer meets it), and another
// last: the catch-up reads every command, the one after the junk included, and its replay
// position passes both. Before, nats.go's fetch failed on it (400, 409, 503: every
// catch-up stopped there), ended short (404, 408) or dropped it (100), and the catch-up
// never reached the end of cmd.<id>.
func TestCatchUpReadsPastStoredMessagesThatReadAsAStatus(t *testing.T) {
	for _, h := range testenv.StatusHeaders {
		t.Run(h.Get("Status"), func(t *testing.T) {
			env := testenv.New(t)
			id := "edge-status-" + h.Get("Status")
			store, err := ghost.OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), ghost.BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			for range 20 { // more than the direct reads take
				storeCommand(t, env, id, "status", map[string]string{})
			}
			storeStatusJunk(t, env, bus.StreamCommands, subjects.Command(id), h)
			lost, _ := storeCommand(t, env, id, "status", map[string]string{})
			lastSeq := storeStatusJunk(t, env, bus.StreamCommands, subjects.Command(id), h)
			started := time.Now()
			env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
				testenv.Tune(func(c *ghost.Config) { c.CatchUpInterval = time.Hour }))
			eventFor(t, env, id, lost)
			testenv.Eventually(t, 15*time.Second, "the replay position to reach the last junk", func() bool {
				seq, err := store.LastSeq(context.Background())
				return err == nil && seq == lastSeq
			})
			// Not after a fetch waited out its expiry (5 s) for a message nats.go dropped.
			if d := time.Since(started); d > 4*time.Second {
				t.Errorf("the catch-up took %s", d)
			}
			t.Logf("caught up in %s", time.Since(started))
		})
	}
}
