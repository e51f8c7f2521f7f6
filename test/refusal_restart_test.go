package test

import (
	"context"
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

// A Ghost's refusal for security of the very bytes Mirage sent (here the Ghost's clock is
// behind, so the command looks stamped in the future) stays the target's result across a
// Mirage restart: the restarted Mirage knows, from the command EDGE_CMD holds signed by
// its key, that the refusal it replays is of its own bytes, counts it as the first Mirage
// did, and does not send the command again (the Ghost, its clock set right meanwhile,
// would run it).
func TestAuthGenuineRefusalSurvivesARestart(t *testing.T) {
	f := newAuthFleet(t, "ghost-w", "ghost-z") // ghost-z never runs: the intent stays open
	var behind atomic.Int64
	behind.Store(int64(10 * time.Minute))
	f.startGhostTrusting("ghost-w", f.mirage.PublicKey(), testenv.Tune(func(c *ghost.Config) {
		c.Now = func() time.Time { return time.Now().Add(-time.Duration(behind.Load())) }
	}))
	// Every command that reaches cmd.ghost-w, as the Ghost receives it.
	watch := f.env.ConnWith("ghost-w watcher", f.keys["ghost-w"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-w")))
	var commands atomic.Int32
	if _, err := watch.Subscribe(subjects.Command("ghost-w"), func(*nats.Msg) { commands.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	is := testenv.NewIssue("ghost-w,ghost-z", "seed.flow", "status", nil, 8*time.Second)
	issueNoWait(t, f.client, is)
	resultOf := func(r *bus.Report, g string) bus.TargetResult {
		for _, res := range r.Results {
			if res.GhostID == g {
				return res
			}
		}
		t.Fatalf("no result for %s in %+v", g, r.Results)
		return bus.TargetResult{}
	}
	testenv.Eventually(t, 5*time.Second, "ghost-w's refusal counted by the first Mirage", func() bool {
		r := latestReport(f.client, is.IntentID)
		return r != nil && resultOf(r, "ghost-w").Outcome == bus.OutcomeError
	})
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	if r := latestReport(f.client, is.IntentID); r == nil || bus.Terminal(r.Phase) {
		t.Fatalf("the intent ended before the restart: %+v", r)
	}
	behind.Store(0)
	before := commands.Load()
	mnc := f.env.ConnWith("mirage again", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
	f.m = f.env.StartMirageOn(mnc, f.cfg)

	r := waitReport(t, f.client, is.IntentID, 20*time.Second)
	if w := resultOf(r, "ghost-w"); w.Outcome != bus.OutcomeError || w.Error == nil || w.Error.Code != bus.CodeSecurity {
		t.Errorf("ghost-w after the restart: %s %+v, want the Ghost's 1800 refusal counted before it", r.Summary, w)
	}
	if z := resultOf(r, "ghost-z"); z.Outcome != bus.OutcomeTimeout {
		t.Errorf("ghost-z: %+v, want timeout", z)
	}
	if n := commands.Load() - before; n != 0 {
		t.Errorf("the restarted Mirage sent ghost-w's command %d more times, want none", n)
	}
}

// A forged copy stored in EDGE_CMD under a command's id (published before Mirage's own
// command, which the stream then drops as a duplicate) is not taken for bytes Mirage sent
// after a restart: it bears no signature by Mirage's key, so the Ghost's refusal of it
// does not stand in for the command's real result.
func TestAuthRefusalOfAStoredForgedCopyIsNotCountedAfterARestart(t *testing.T) {
	f := newAuthFleet(t, "ghost-f")
	f.startGhost("ghost-f")
	is := testenv.NewIssue("ghost-f", "seed.flow", "sleep", map[string]string{"ms": "3000"}, 15*time.Second)
	cmdID := mirage.CommandID(is.IntentID, 0)
	forged := &bus.Command{
		Header:    bus.NewHeader(bus.TypeCommand, is.TraceID, time.Now()),
		CommandID: cmdID, IntentID: is.IntentID, GhostID: "ghost-f", SeedSelector: "seed.flow", Operation: "status",
		Args: map[string]string{}, DeliverByMS: time.Now().Add(time.Hour).UnixMilli(), TimeoutMS: 5000,
	}
	data, err := bus.Encode(forged)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Command("ghost-f"), data, cmdID, is.TraceID)); err != nil {
		t.Fatal(err)
	}
	refusal := bus.RefusalEventID("ghost-f", cmdID, data)
	testenv.Eventually(t, 5*time.Second, "the Ghost's refusal of the forged copy stored", func() bool {
		for _, ev := range f.env.Events(js) {
			if ev.EventID == refusal {
				return true
			}
		}
		return false
	})
	issueNoWait(t, f.client, is)
	time.Sleep(300 * time.Millisecond) // the real command is running
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	mnc := f.env.ConnWith("mirage again", f.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox()))
	f.m = f.env.StartMirageOn(mnc, f.cfg)
	r := waitReport(t, f.client, is.IntentID, 20*time.Second)
	if r.Phase != bus.PhaseSatisfied || r.Results[0].EventID != bus.EventID("ghost-f", cmdID) {
		t.Fatalf("after a stored forged copy and a restart: %s %+v, want the real success", r.Summary, r.Results)
	}
}
